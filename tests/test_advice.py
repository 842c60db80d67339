"""Right-sizing advice (issue #16): the Kaplan-Meier estimator on recorded sacct data, killed
runs as lower bounds, the recommendation's rounding, floor and caps, the node-hours a request
wastes, and the patch of a production file that git applies and the loader validates."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.advice_patch import patched_text, unified_diff
from reconciler.cli import main
from reconciler.cli.advice_text import render_markdown, render_text
from reconciler.core.advice import Estimate, Run, advise, quantile
from reconciler.core.sizing import Growth, Request, Short, Usage, shortfall
from reconciler.core.states import SchedState
from reconciler.spec.load import WorkTree, load

from .conftest import git

GB = 1024.0

# ---------------------------------------------------------------- recorded sacct data

SACCT = """\
JobID|State|ExitCode|Elapsed|MaxRSS|ReqMem|Timelimit
4242_0.batch|COMPLETED|0:0|00:41:10|10485760K|16G|01:00:00
4242_1.batch|COMPLETED|0:0|00:43:02|10.6G|16G|01:00:00
4242_2.batch|COMPLETED|0:0|00:44:51|11.1G|16G|01:00:00
4242_3.batch|COMPLETED|0:0|00:39:30|11.5G|16G|01:00:00
4242_4.batch|COMPLETED|0:0|00:46:12|12.0G|16G|01:00:00
4242_5.batch|COMPLETED|0:0|00:47:40|12.4G|16G|01:00:00
4242_6.batch|COMPLETED|0:0|00:45:05|12.9G|16G|01:00:00
4242_7.batch|COMPLETED|0:0|00:50:33|13.3G|16G|01:00:00
4242_8.batch|COMPLETED|0:0|00:49:10|13.8G|16G|01:00:00
4242_9.batch|COMPLETED|0:0|00:52:27|14.2G|16G|01:00:00
4242_10.batch|COMPLETED|0:0|00:51:00|14.7G|16G|01:00:00
4242_11.batch|COMPLETED|0:0|00:53:48|15.1G|16G|01:00:00
4242_12.batch|COMPLETED|0:0|00:55:12|15.6G|16G|01:00:00
4242_13.batch|COMPLETED|0:0|00:54:01|15.9G|16G|01:00:00
4242_14.batch|OUT_OF_MEMORY|0:125|00:31:07|15.8G|16G|01:00:00
4242_15.batch|OUT_OF_MEMORY|0:125|00:28:44|16.0G|16G|01:00:00
4242_16.batch|FAILED|0:9|00:33:19|16.3G|16G|01:00:00
4242_17.batch|NODE_FAIL|0:0|00:12:00|6.1G|16G|01:00:00
4242_18.batch|CANCELLED|0:15|00:05:00|2048M|16G|01:00:00
4250_0.batch|COMPLETED|0:0|00:57:30|17.2G|24G|01:00:00
4250_1.batch|COMPLETED|0:0|00:58:02|18.9G|24G|01:00:00
4250_2.batch|COMPLETED|0:0|00:59:10|20.0G|24G|01:00:00
4251_0.batch|COMPLETED|0:0|00:48:00|13.0G|16G|01:00:00
"""
"""One stage's attempts as `sacct -P` prints them: 16 GB asked, 3 killed for memory (two by
cgroups, one by OverMemoryKill: FAILED with signal 9 and a peak over the request), retried at
24 GB; a node failure retried with the same request; one cancelled by an administrator."""


def _mb(text: str) -> float:
    """sacct's memory (MaxRSS, ReqMem): ``3456K``, ``1.2G``, ``2048M``, plain bytes."""
    scale = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text) / 1024**2


def _seconds(text: str) -> float:
    """sacct's durations: ``[D-]HH:MM:SS`` or ``MM:SS``."""
    days, _, clock = text.rpartition("-")
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total + (int(days) * 86400 if days else 0)


def _runs(text: str) -> list[Run]:
    """Runs as the reconciler reads them: why a failure happened by core.sizing.shortfall."""
    out = []
    lines = text.strip().splitlines()
    keys = lines[0].split("|")
    for line in lines[1:]:
        row = dict(zip(keys, line.split("|"), strict=True))
        state = SchedState(row["State"])
        code, _, signal = row["ExitCode"].partition(":")
        exit_code = 128 + int(signal) if int(signal) else int(code)
        usage = Usage(elapsed_s=_seconds(row["Elapsed"]), max_rss_mb=_mb(row["MaxRSS"]))
        request = Request(_mb(row["ReqMem"]), _seconds(row["Timelimit"]))
        ok = state is SchedState.COMPLETED
        short = None if ok else shortfall(state, exit_code, None, usage, request)
        out.append(Run(usage.elapsed_s, usage.max_rss_mb, ok, short, request))
    return out


def test_the_sacct_helpers_read_what_sacct_prints() -> None:
    assert _mb("10485760K") == 10 * GB
    assert _mb("1.5G") == 1.5 * GB
    assert _mb("2048M") == 2048.0
    assert _mb("1048576") == 1.0
    assert _seconds("00:41:10") == 2470.0
    assert _seconds("1-02:00:05") == 93605.0
    assert _seconds("12:30") == 750.0


def test_killed_runs_are_lower_bounds_and_the_quantiles_are_kaplan_meier() -> None:
    runs = _runs(SACCT)
    assert [r.short for r in runs].count(Short.MEMORY) == 3  # OverMemoryKill's FAILED 0:9 included
    a = advise("measure", runs, Request(16 * GB, 3600.0), quantile=0.8)
    assert (a.runs, a.completed, a.out_of_memory, a.timed_out, a.ignored) == (23, 18, 3, 0, 2)
    assert (a.memory.samples, a.memory.bounds, a.time.samples, a.time.bounds) == (18, 3, 18, 3)
    assert a.memory.largest_bound == 16.3 * GB
    # By hand: 15 samples below the bounds (S = 6/21), the bounds leave 3 at risk; then
    # 17.2 G: S = 6/21 * 2/3 = 4/21 (F = 0.810); 18.9 G: S = 2/21 (F = 0.905); 20.0 G: S = 0.
    assert a.memory.chosen == Estimate(17.2 * GB)  # p80; the censored runs dropped: 15.9 G; as samples: 16 G
    assert a.memory.p50 == Estimate(14.2 * GB)  # F = k/21 until the bounds: the 11th sample (10.0 ... 13.0 ... 14.2)
    assert a.memory.p95 == a.memory.p99 == Estimate(20.0 * GB)
    assert a.memory.p99.value is not None and a.memory.p99.value >= a.memory.largest_bound
    # the same data, dropping the killed runs or counting them as samples, says less:
    samples = [r.max_rss_mb for r in runs if r.succeeded and r.max_rss_mb is not None]
    killed = [max(r.max_rss_mb or 0.0, 16 * GB) for r in runs if r.short is Short.MEMORY]
    assert quantile(samples, [], 0.8) == Estimate(15.9 * GB)
    assert quantile(samples + killed, [], 0.8) == Estimate(16 * GB)


def test_advice_on_the_recorded_runs_recommends_the_p99_plus_margin_rounded_up() -> None:
    runs = _runs(SACCT)
    a = advise("measure", runs, Request(16 * GB, 3600.0))
    assert a.memory_gb == 24.0  # 20 G x 1.2 = 24 G exactly, not 24.1 from float noise
    assert not a.memory_at_least and not a.memory_capped
    assert a.time.chosen == Estimate(3550.0)  # 00:59:10
    assert a.timeout_hours == 1.1834  # 4260 s = 1.18333 h, rounded up
    lost = (31 * 60 + 7) + (28 * 60 + 44) + (33 * 60 + 19)  # the three killed runs
    assert a.lost_node_hours == pytest.approx(lost / 3600.0)
    completed = [r.elapsed_s for r in runs if r.succeeded and r.elapsed_s is not None]
    assert a.unused_node_hours == pytest.approx(sum(3600.0 - e for e in completed) / 3600.0)
    assert a.unused_node_hours_advised == pytest.approx(sum(4260.24 - e for e in completed) / 3600.0)
    doc = json.loads(json.dumps(a.to_json()))
    assert doc["recommended"]["memory_gb"] == 24.0 and doc["recommended"]["timeout_hours"] == 1.1834
    assert doc["counts"]["memory_lower_bounds"] == 3 and doc["counts"]["ignored"] == 2
    assert doc["current"] == {"timeout_hours": 1.0, "memory_gb": 16.0}
    assert doc["memory_mb"]["p99"] == {"value": 20.0 * GB, "at_least": False}


# ---------------------------------------------------------------- the estimator


def test_kaplan_meier_against_a_hand_computed_example() -> None:
    # 1, 2, 2+, 3, 4+, 5: S(1) = 5/6, S(2) = 5/6 * 4/5 = 2/3 (the bound at 2 still at risk there),
    # S(3) = 2/3 * 2/3 = 4/9, the bound at 4 leaves one at risk, S(5) = 0.
    samples, bounds = [5.0, 1.0, 3.0, 2.0], [4.0, 2.0]
    assert quantile(samples, bounds, 1 / 6) == Estimate(1.0)
    assert quantile(samples, bounds, 0.17) == Estimate(2.0)
    assert quantile(samples, bounds, 1 / 3) == Estimate(2.0)
    assert quantile(samples, bounds, 0.35) == Estimate(3.0)  # bounds first would say F(2) = 3/8: 2
    assert quantile(samples, bounds, 0.5) == Estimate(3.0)
    assert quantile(samples, bounds, 0.56) == Estimate(5.0)
    assert quantile(samples, bounds, 1.0) == Estimate(5.0)


def test_a_quantile_beyond_the_samples_is_the_largest_bound_flagged() -> None:
    # 1, 2, 3+, 3+: F(2) = 1/2 and nothing is known above
    assert quantile([1.0, 2.0], [3.0, 3.0], 0.5) == Estimate(2.0)
    assert quantile([1.0, 2.0], [3.0, 3.0], 0.75) == Estimate(3.0, at_least=True)
    assert quantile([], [5.0, 7.0], 0.5) == Estimate(7.0, at_least=True)
    assert quantile([], [], 0.5) == Estimate(None)
    with pytest.raises(ValueError):
        quantile([1.0], [], 0.0)
    with pytest.raises(ValueError):
        quantile([1.0], [], 1.5)


def test_without_censoring_it_is_numpys_inverted_cdf() -> None:
    data = [3.0, 9.0, 1.0, 4.0, 4.0, 7.0, 12.0, 2.0, 5.0, 8.0, 6.0]
    for q in (0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert quantile(data, [], q) == Estimate(float(np.quantile(data, q, method="inverted_cdf")))


values = st.lists(st.integers(0, 30).map(float), max_size=40)
quantiles = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda t: t[0] <= t[1]).map(lambda t: t[0] / t[1]),
)


@settings(max_examples=300, deadline=None)
@given(values.filter(bool), quantiles)
def test_without_censoring_it_is_the_empirical_quantile(samples: list[float], q: float) -> None:
    ranked = sorted(samples)
    k = math.ceil(Fraction(repr(q)) * len(ranked))  # the smallest k with k/n >= q (as written), exactly
    assert quantile(samples, [], q) == Estimate(ranked[k - 1])


@settings(max_examples=300, deadline=None)
@given(values, values, st.integers(0, 30).map(float), quantiles)
def test_a_killed_run_never_lowers_a_quantile(samples: list[float], bounds: list[float], extra: float, q: float) -> None:
    before, after = quantile(samples, bounds, q), quantile(samples, [*bounds, extra], q)
    assert after.value is not None
    assert before.value is None or after.value >= before.value
    assert after.value in samples or (after.at_least and after.value == max([*bounds, extra]))


# ---------------------------------------------------------------- the recommendation


def _done(elapsed: float, peak: float | None = None) -> Run:
    return Run(elapsed, peak, True, None, Request(4 * GB, 3600.0))


def test_rounding_up_memory_to_a_tenth_of_a_gb_and_time_to_seconds_then_4_decimals() -> None:
    a = advise("s", [_done(1000.2, 10000.0)], Request(4 * GB, 3600.0))
    assert a.memory_gb == 11.8  # 12000 MB = 11.72 GB
    assert a.timeout_hours == 0.3337  # 1200.24 s -> 1201 s = 0.33361 h
    b = advise("s", [_done(1000.0, 10 * GB)], Request(4 * GB, 3600.0), margin=0.0)
    assert (b.memory_gb, b.timeout_hours) == (10.0, 0.2778)
    tiny = advise("s", [_done(0.0, 0.0)], Request(4 * GB, 3600.0))
    assert (tiny.memory_gb, tiny.timeout_hours) == (0.1, 0.0003)  # a production file refuses 0


def test_the_site_ceilings_cap_and_say_so() -> None:
    growth = Growth(node_memory_mb=20000.0, max_time_s=1000.0)
    a = advise("s", [_done(1000.0, 20 * GB)], Request(4 * GB, 3600.0), growth=growth)
    assert (a.memory_gb, a.memory_capped) == (19.5, True)  # 19.53 GB, rounded down to stay under
    assert (a.timeout_hours, a.timeout_capped) == (0.2777, True)
    b = advise("s", [_done(100.0, 1 * GB)], Request(4 * GB, 3600.0), growth=growth)
    assert not b.memory_capped and not b.timeout_capped
    assert "19.5 GB (capped)" in render_text([a])


def test_never_below_a_request_that_already_failed() -> None:
    # 100 runs of 10 min and one killed at its 1 h limit: the p99 is 10 min (F = 100/101),
    # but asking 12 min would kill that task again, and so would the hour it had: the advice is
    # at least that hour plus the margin.
    runs = [_done(600.0) for _ in range(100)]
    runs.append(Run(3600.0, None, False, Short.TIME, Request(4 * GB, 3600.0)))
    a = advise("s", runs, Request(4 * GB, 3600.0))
    assert a.time.chosen == Estimate(600.0)
    assert (a.timeout_hours, a.timeout_at_least) == (1.2, True)


def test_all_killed_gives_a_lower_bound_plus_the_margin_flagged() -> None:
    runs = [Run(900.0, 15.0 * GB, False, Short.MEMORY, Request(16 * GB, 3600.0)) for _ in range(3)]
    a = advise("s", runs, Request(16 * GB, 3600.0))
    assert a.memory.chosen == Estimate(16 * GB, at_least=True)
    assert (a.memory_gb, a.memory_at_least) == (19.2, True)
    # killed at 900 s for memory: they need more than 1080 s, which says nothing against the hour they have
    assert a.time.chosen == Estimate(900.0, at_least=True)
    assert (a.timeout_hours, a.timeout_at_least) == (1.0, True)
    less = advise("s", runs, Request(16 * GB, 600.0))  # ... but a bound above the request raises it
    assert (less.timeout_hours, less.timeout_at_least) == (0.3, True)
    assert a.unused_node_hours == 0.0 and a.unused_node_hours_advised == 0.0  # nothing completed
    text = render_text([a])
    assert "≥ 16 GB" in text and "≥ 19.2 GB" in text


def test_a_run_of_unknown_request_or_usage_gives_what_it_can() -> None:
    runs = [
        Run(100.0, None, True, None, None),  # time only
        Run(None, 2 * GB, True, None, None),  # memory only
        Run(50.0, None, False, Short.MEMORY, None),  # no peak, no request: a time bound only
    ]
    a = advise("s", runs, Request(None, 3600.0))
    assert (a.time.samples, a.time.bounds, a.memory.samples, a.memory.bounds) == (1, 1, 1, 0)
    assert a.memory_gb == 2.4
    assert "site default" in render_text([a])


def test_no_runs_no_advice() -> None:
    a = advise("s", [], Request(4 * GB, 3600.0))
    assert (a.timeout_hours, a.memory_gb, a.unused_node_hours_advised) == (None, None, None)
    assert a.time.p99 == Estimate(None)
    assert a.lost_node_hours == 0.0 and a.unused_node_hours == 0.0


def test_a_pool_stage_gets_no_memory_advice() -> None:
    a = advise("s", [_done(1000.0, 10 * GB)], Request(None, 3600.0), pool=True)
    assert a.memory_gb is None and a.memory.p99 == Estimate(10 * GB)  # shown, not advised
    assert a.timeout_hours == 0.3334
    assert a.unused_node_hours is None  # its workers hold the walltime (core.pool.usage)
    assert "pool" in render_text([a])


def test_waste_by_hand() -> None:
    req = Request(8 * GB, 3600.0)
    runs = [
        Run(1800.0, 4 * GB, True, None, req),
        Run(2700.0, 5 * GB, True, None, req),
        Run(3600.0, 6 * GB, True, None, req),
        Run(600.0, 8.2 * GB, False, Short.MEMORY, req),
        Run(3600.0, 3 * GB, False, Short.TIME, req),
        Run(200.0, 1 * GB, False, None, req),  # exit 1: neither a sample nor a bound
    ]
    a = advise("s", runs, req, nodes=2)
    assert a.lost_node_hours == pytest.approx((600 + 3600) * 2 / 3600)
    assert a.unused_node_hours == pytest.approx((1800 + 900 + 0) * 2 / 3600)
    # time: 600+ 1800 2700 3600 3600+: S = 3/4, 1/2, 1/4 and then nothing: at least 3600 s
    assert a.time.chosen == Estimate(3600.0, at_least=True)
    assert (a.timeout_hours, a.timeout_at_least) == (1.2, True)
    assert a.unused_node_hours_advised == pytest.approx((2520 + 1620 + 720) * 2 / 3600)
    # memory: 3+ 4 5 6 8.2+: the p99 is past the samples, at least the request that failed
    assert a.memory.chosen == Estimate(8.2 * GB, at_least=True)
    assert a.memory_gb == 9.9  # 8.2 x 1.2 = 9.84
    assert a.ignored == 1


def test_bad_parameters_are_refused() -> None:
    for kwargs in ({"quantile": 0.0}, {"quantile": 1.01}, {"margin": -0.1}, {"nodes": 0}):
        with pytest.raises(ValueError):
            advise("s", [], Request(None, 3600.0), **kwargs)  # type: ignore[arg-type]


def test_markdown_says_the_method_and_has_a_table_per_stage() -> None:
    runs = _runs(SACCT)
    md = render_markdown([advise("generate", runs[:5], Request(16 * GB, 3600.0)), advise("measure", runs, Request(16 * GB, 3600.0))])
    assert "Kaplan-Meier" in md and "p99" in md and "20% margin" in md and "lower bounds" in md
    assert md.count("| | p50 | p95 | p99 | current | recommended |") == 2
    assert "#### Stage `measure`" in md and "| peak memory | 14.2 GB | 20 GB | 20 GB | 16 GB | 24 GB |" in md
    assert "#### Stage `(task)`" in render_markdown([advise("", runs, Request(16 * GB, 3600.0))])


# ---------------------------------------------------------------- the patch


def _apply(repo: Path, relpath: str, new: str) -> None:
    old = (repo / relpath).read_text()
    diff = unified_diff(old, new, relpath)
    assert diff.startswith(f"--- a/{relpath}\n+++ b/{relpath}\n")
    (repo / "advice.patch").write_text(diff)
    git(repo, "apply", "--check", "advice.patch")
    git(repo, "apply", "advice.patch")
    assert (repo / relpath).read_text() == new


def _comments(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if "#" in line]


def test_the_patch_of_a_campaign_applies_validates_and_changes_only_its_stage(repo: Path) -> None:
    relpath = "productions/mocks.yaml"
    old = (repo / relpath).read_text()
    before = load(WorkTree(repo), "mocks", "local", repo_root=repo)
    runs = [_done(180.0 + i, 300.0 + 10 * i) for i in range(20)]
    a = advise("measure", runs, Request(None, 0.05 * 3600))
    assert (a.timeout_hours, a.memory_gb) == (0.0664, 0.6)  # 199 s x 1.2; 490 MB x 1.2
    new = patched_text(old, "measure", campaign=True, timeout_hours=a.timeout_hours, memory_gb=a.memory_gb)
    _apply(repo, relpath, new)
    assert _comments(new) == _comments(old)
    assert [line for line in unified_diff(old, new, relpath).splitlines()[2:] if line.startswith("-")] == []
    loaded = load(WorkTree(repo), "mocks", "local", repo_root=repo)
    assert loaded.stage_spec("measure").execution.timeout_hours == 0.0664
    assert loaded.stage_spec("measure").resources.memory_gb == 0.6
    assert before.stage_spec("measure").execution.timeout_hours == 0.05
    assert before.stage_spec("measure").resources.memory_gb == 2.0  # defaults/local.yaml's
    for other in ("generate", "covariance"):  # as they were
        assert loaded.stage_spec(other) == before.stage_spec(other)
    assert main(["validate", "--repo", str(repo), relpath]) == 0
    # the stage's own section now exists: a second advice replaces its values in place
    again = patched_text(new, "measure", campaign=True, timeout_hours=0.1, memory_gb=None)
    assert unified_diff(new, again, relpath).count("\n-") == 1 and "+      timeout_hours: 0.1\n" in unified_diff(new, again, relpath)


@pytest.mark.parametrize("name", ["test_basic", "demo"])
def test_the_patch_of_a_one_stage_production_applies_and_validates(repo: Path, name: str) -> None:
    relpath = f"productions/{name}.yaml"
    old = (repo / relpath).read_text()
    new = patched_text(old, "", campaign=False, timeout_hours=0.25, memory_gb=3.5)
    _apply(repo, relpath, new)
    assert _comments(new) == _comments(old)
    removed = [line for line in unified_diff(old, new, relpath).splitlines()[2:] if line.startswith("-")]
    assert len(removed) == 1 and "timeout_hours:" in removed[0]  # replaced where it stood
    loaded = load(WorkTree(repo), name, "local", repo_root=repo)
    assert loaded.stage_spec("").execution.timeout_hours == 0.25
    assert loaded.stage_spec("").resources.memory_gb == 3.5
    assert main(["validate", "--repo", str(repo), relpath]) == 0


def test_nothing_asked_nothing_changed() -> None:
    text = (Path(__file__).resolve().parent.parent / "productions" / "mocks.yaml").read_text()
    assert patched_text(text, "measure", campaign=True, timeout_hours=None, memory_gb=None) == text
    assert unified_diff(text, text, "productions/mocks.yaml") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("execution: {batch_size: 4, timeout_hours: 2.0}\n", "execution: {batch_size: 4, timeout_hours: 0.5}\nresources:\n  memory_gb: 3.0\n"),
        ("execution: {}\nresources:\n", "execution: {timeout_hours: 0.5}\nresources: {memory_gb: 3.0}\n"),
        ("execution:\n    batch_size: 4  # why\nresources: ~\n", "execution:\n    batch_size: 4  # why\n    timeout_hours: 0.5\nresources: {memory_gb: 3.0}\n"),
        ("execution: {timeout_hours: '2.0'}\nresources: {memory_gb: 1}", "execution: {timeout_hours: '0.5'}\nresources: {memory_gb: 3.0}"),
        ("execution:\n  command: >-\n    a\n    b\n\n# c\nx: 1\n", "execution:\n  command: >-\n    a\n    b\n  timeout_hours: 0.5\n\n# c\nx: 1\nresources:\n  memory_gb: 3.0\n"),
        ("execution:\n  command: |+\n    a\n\n# c\n", "execution:\n  command: |+\n    a\n\n  timeout_hours: 0.5\nresources:\n  memory_gb: 3.0\n# c\n"),
        ("a:\n  command: |+\n    x\n\n", "a:\n  command: |+\n    x\n\nexecution:\n  timeout_hours: 0.5\nresources:\n  memory_gb: 3.0\n"),
    ],
)
def test_the_patch_keeps_the_files_own_style(text: str, expected: str) -> None:
    assert patched_text(text, "", campaign=False, timeout_hours=0.5, memory_gb=3.0) == expected


def test_a_patch_without_a_final_newline_still_applies(repo: Path) -> None:
    relpath = "productions/test_basic.yaml"
    old = (repo / relpath).read_text().rstrip("\n")
    (repo / relpath).write_text(old)
    new = patched_text(old, "", campaign=False, timeout_hours=None, memory_gb=2.0)
    assert "\\ No newline at end of file" in unified_diff(old, new, relpath)
    _apply(repo, relpath, new)


def test_a_stage_the_file_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="no stage 'nope'"):
        patched_text("stages:\n  a: {command: x}\n", "nope", campaign=True, timeout_hours=1.0, memory_gb=None)
    with pytest.raises(ValueError):
        patched_text("task: {command: x}\n", "a", campaign=False, timeout_hours=1.0, memory_gb=None)


def test_a_bound_below_every_sample_changes_no_quantile() -> None:
    """The exact path (no bound yet) and the float path (after one) agree: 0.9 of 1..10 is 9."""
    values = [float(v) for v in range(1, 11)]
    for q in (0.8, 0.9, 0.5):
        assert quantile(values, [], q) == quantile(values, [0.0], q) == Estimate(q * 10)


def test_a_section_shared_through_a_yaml_anchor_is_not_patched_but_said() -> None:
    text = (
        "production: {name: a, version: v1}\n"
        "shared: &r {memory_gb: 1}\n"
        "stages:\n"
        "  gen: {resources: *r, task: {command: echo, outputs: [o]}}\n"
        "  meas: {resources: *r, task: {command: echo, outputs: [o]}}\n"
    )
    with pytest.raises(ValueError, match=r"stages\.gen\.resources is shared through a YAML anchor \(&r\)"):
        patched_text(text, "gen", campaign=True, timeout_hours=None, memory_gb=2.0)
    assert "timeout_hours: 0.5" in patched_text(text, "gen", campaign=True, timeout_hours=0.5, memory_gb=None)  # its own section is fine
