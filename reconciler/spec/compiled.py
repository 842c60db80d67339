"""The fast path of spec.expand.Renderer: templates compiled once into a function of a task's values."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any, Protocol

from reconciler.spec.models import BUILTIN_AXES, Production
from reconciler.spec.shell import shell_quote
from reconciler.spec.symbols import SYMBOLIC_DIR
from reconciler.spec.templates import root as _root


class Templates(Protocol):
    """What is compiled of a spec.expand.Renderer."""

    prod: Production
    axes: tuple[str, ...]
    needs: tuple[str, ...]
    shell: bool
    _static: dict[str, Any]
    argv_templates: tuple[str, ...]
    output_templates: tuple[str, ...]


def compile_renderer(r: Templates) -> Callable[..., tuple[tuple[str, ...], tuple[str, ...]]] | None:
    """A fast renderer of (outputs, symbolic argv) from (realization, redshift[, what {needs.S} names]), or None.

    Each template is split once into literal text and fields. A field of one axis is
    rendered once per value of that axis (format(value, spec), as str.format does it),
    a field of constants once, ``{output}`` once per task; a task's strings are then
    concatenations; ``{needs.S}`` is looked up in the third argument. Only for the common shape (no extra axes; no ``{index}``/``{key}``;
    plain field names; no nested specs; a bare ``{output}``); anything else, and any rendering error (which
    the slow path reports with the task it concerns), returns None.
    """
    if r.axes != BUILTIN_AXES:
        return None
    sci = r.prod.science
    axis_values: dict[str, list[Any]] = {"realization": list(sci.realizations.values()), "redshift": sorted(sci.redshifts)}
    static = {**r._static, "production_dir": SYMBOLIC_DIR}
    q = shell_quote if r.shell else str  # a substituted value, as the slow path renders it
    consts: list[str] = []
    tables: list[dict[Any, str]] = []

    def const(text: str) -> str:
        consts.append(text)
        return f"C[{len(consts) - 1}]"

    def compile_template(tpl: str, allow_output: bool) -> str | None:
        parts: list[str] = []
        for literal, field, spec, conv in string.Formatter().parse(tpl):
            if literal:
                parts.append(const(literal))
            if field is None:
                continue
            spec = spec or ""
            if "{" in spec or "}" in spec:
                return None
            if field in axis_values:
                table: dict[Any, str] = {}
                for v in axis_values[field]:
                    x = repr(v) if conv == "r" else str(v) if conv == "s" else ascii(v) if conv == "a" else v
                    table[v] = q(format(x, spec))
                tables.append(table)
                parts.append(f"T[{len(tables) - 1}][{'r' if field == 'realization' else 'z'}]")
            elif field == "output" and allow_output and not spec and not conv:
                parts.append("Q(o)" if r.shell else "o")
            elif allow_output and _root(field)[0] == "needs" and _root(field)[1] in r.needs and not spec and not conv:
                parts.append(f"Q(n[{const(str(_root(field)[1]))}])" if r.shell else f"n[{const(str(_root(field)[1]))}]")
            elif _root(field)[0] in static:
                whole = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                parts.append(const(q(whole.format_map(static))))
            else:
                return None  # index, key, or anything unusual
        return " + ".join(parts) if parts else "''"

    try:
        outs_c = [compile_template(t, False) for t in r.output_templates]
        argv_c = [compile_template(t, True) for t in r.argv_templates]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        return None
    outs = [x for x in outs_c if x is not None]
    argv = [x for x in argv_c if x is not None]
    if len(outs) != len(outs_c) or len(argv) != len(argv_c):
        return None

    # The generated code names only C (constants), T (tables) and its arguments; no
    # text from the production is ever part of it.
    code = (
        "def render(r, z, n=None):\n"
        f"    outs = ({', '.join(outs)},)\n"
        f"    o = {SYMBOLIC_DIR!r} + '/' + outs[0]\n"
        f"    return outs, ({', '.join(argv)},)\n"
    )
    ns: dict[str, Any] = {"C": tuple(consts), "T": tuple(tables), "Q": shell_quote}
    exec(compile(code, "<reconciler.spec.expand: compiled templates>", "exec"), ns)  # noqa: S102
    return ns["render"]


