"""The local backend: a small batch scheduler for one machine, with Slurm's semantics.

It exists so that the reconciler behaves the same on a laptop as on a cluster: ``submit``
returns a job id at once and the tasks run *detached*, outliving the reconciler that
submitted them; a later pass observes them by job id, exactly as it would query Slurm.

Four parts, each in its own process at run time:

- :mod:`.client`: :class:`LocalScheduler`, the Scheduler protocol the engine calls
  (submit, observe, cancel), which only reads and writes the spool;
- :mod:`.spool`: the spool directory, one file per fact, each written atomically, and how
  a task file reads as a task state;
- :mod:`.dispatcher`: the one detached daemon per spool that starts pending tasks within
  the slot and throttle limits (``python -m reconciler.scheduler.local dispatch SPOOL
  SLOTS``, see :mod:`.__main__`);
- :mod:`.supervisor`: one forked process per running task, which runs the script and
  records how it ended.

Because the supervisor, not the dispatcher, writes the final state, killing the dispatcher
loses nothing; a task whose processes vanished without a recorded exit code is reported
NODE_FAIL, never "running forever".
"""

from reconciler.scheduler.local.client import LocalScheduler
from reconciler.scheduler.local.spool import (
    expand_log_pattern,
    parse_time_limit,
    proc_start_time,
    to_sched,
)

__all__ = ["LocalScheduler", "expand_log_pattern", "parse_time_limit", "proc_start_time", "to_sched"]
