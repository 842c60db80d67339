"""Time what right-sizing reads, at campaign scale.

Builds a ledger with N ended attempts (in submissions of --batch tasks; 5% out of memory, 2%
timed out, every one with a request and a measured peak), then times, each a median of
--repeat runs:

- advise: ``run_history.ended`` (every ended attempt, one query) + ``core.advice.advise`` of
  the stage: what `reconcile advise` costs beyond loading the production;
- efficiency: ``run_history.efficiency`` (one row per submission): what every status (and
  every pass that publishes it) adds.

    python benchmarks/bench_advise.py                 # 40,000 attempts
    python benchmarks/bench_advise.py --tasks 200000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler import run_history  # noqa: E402
from reconciler.core.advice import advise  # noqa: E402
from reconciler.core.sizing import Request, Short  # noqa: E402
from reconciler.core.states import SchedState, SubmissionKind, SubmissionState  # noqa: E402
from reconciler.ledger import Failure, Ledger, Seen, Submission  # noqa: E402

REQUEST = Request(16 * 1024.0, 3600.0)


def build(path: Path, tasks: int, batch: int) -> None:
    rng = random.Random(16)
    with Ledger(path) as ledger:
        for b in range(0, tasks, batch):
            token = f"{1795560000 + b}-{b:012x}"
            idx = range(min(batch, tasks - b))
            sub = Submission(token, b // batch, SubmissionKind.SUBMIT, SubmissionState.SUBMITTED, "7", "slurm", "s", "m", 0.0, 0.0, REQUEST)
            ledger.record_submission(sub, [(i, f"r{b + i:06d}") for i in idx])
            seen, failed = [], []
            for i in idx:
                roll = rng.random()
                state = SchedState.OUT_OF_MEMORY if roll < 0.05 else SchedState.TIMEOUT if roll < 0.07 else SchedState.COMPLETED
                elapsed = 3600.0 if state is SchedState.TIMEOUT else rng.lognormvariate(7.0, 0.4)
                peak = 16500.0 if state is SchedState.OUT_OF_MEMORY else rng.lognormvariate(9.0, 0.3)
                seen.append(Seen(token, i, state, 0, state.value, 0.0, elapsed, peak, elapsed * 0.9))
                if state is not SchedState.COMPLETED:  # counted, with what it ran out of, as a pass records it
                    short = Short.MEMORY if state is SchedState.OUT_OF_MEMORY else Short.TIME
                    failed.append(Failure(token, i, f"r{b + i:06d}", state.value, elapsed, None, short, REQUEST, peak))
            ledger.journal(seen)
            ledger.record_failures(failed, 0.0)


def median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "production.db"
        build(path, args.tasks, args.batch)
        with Ledger(path, read_only=True) as ledger:
            stage_of = {f"r{i:06d}": "" for i in range(args.tasks)}

            def do_advise() -> None:
                runs = run_history.by_stage(run_history.ended(ledger), stage_of)
                advise("", [r.run for r in runs[""]], REQUEST)

            def do_efficiency() -> None:
                run_history.efficiency(ledger, stage_of.get)

            a = median_ms(do_advise, args.repeat)
            e = median_ms(do_efficiency, args.repeat)
            (advice,) = [advise("", [r.run for r in run_history.by_stage(run_history.ended(ledger), stage_of)[""]], REQUEST)]
    print(f"{args.tasks} ended attempts in submissions of {args.batch}, median of {args.repeat}:")
    print(f"  advise (read every ended attempt + estimate): {a:8.1f} ms")
    print(f"  efficiency (status, per submission):          {e:8.1f} ms")
    print(f"  advice: {advice.completed} completed, {advice.out_of_memory} out of memory, {advice.timed_out} timed out; "
          f"recommend {advice.timeout_hours} h, {advice.memory_gb} GB")


if __name__ == "__main__":
    main()
