"""`reconcile advise`: resource advice per stage from the production's own runs, and the change
to its production file as a patch (for a pull request); it never changes a production itself."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.cli.advice_text import render_markdown, render_text
from reconciler.cli.options import add_scheduler, add_source, options
from reconciler.errors import EXIT_INVALID, EXIT_OK
from reconciler.session.advise import read_advice

EXAMPLE = "reconcile advise mocks --stage measure --quantile 0.99 --margin 0.2 --patch > advice.patch && git apply advice.patch"


def cmd_advise(args: argparse.Namespace) -> int:
    report = read_advice(options(args), args.name, stage=args.stage, quantile=args.quantile, margin=args.margin)
    if args.json:
        doc = {"production": report.name, "file": report.file, "stages": [a.to_json() for a in report.advice], "patch": report.patch, "patch_problem": report.patch_problem}
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif args.patch:
        if report.patch_problem:
            print(report.patch_problem, file=sys.stderr)
            return EXIT_INVALID
        print(report.patch, end="")
    elif args.markdown:
        print(render_markdown(report.advice))
        if report.patch:
            print(f"Change to `{report.file}`:\n\n```diff\n{report.patch}```")
        elif report.patch_problem:
            print(report.patch_problem)
    else:
        print(render_text(report.advice), end="")
        if report.patch_problem:
            print(report.patch_problem)
        elif report.patch:
            print(f"A patch of {report.file} sets these: `reconcile advise {args.name} --patch | git apply` (--markdown for a pull request)")
        else:
            print(f"{report.file} already asks what these runs advise: nothing to change")
    return EXIT_OK


def register(add: Any) -> None:
    p = add("advise", cmd_advise, "resource advice per stage from this production's runs (time, memory), and a patch of its file", EXAMPLE)
    p.add_argument("name")
    add_source(p)
    add_scheduler(p)
    p.add_argument("--stage", default=None, help="this stage only (default: every stage)")
    p.add_argument("--quantile", type=float, default=0.99, help="the share of tasks the request must fit (default 0.99)")
    p.add_argument("--margin", type=float, default=0.2, help="added above that quantile (default 0.2: 20%%)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--patch", action="store_true", help="print only the patch of the production file (for git apply)")
    how.add_argument("--markdown", action="store_true", help="the advice and the patch as markdown, for a pull request's description")
