"""Pool mode: a production's tasks run inside a few long worker jobs instead of job arrays.

The pass sends a submission to the pool exactly as it would to Slurm (the same planner
decision, script, manifest and ledger rows); ``scheduler.pool.PoolScheduler`` writes it to
the pool's queue instead of calling sbatch. Worker jobs (``pool.worker``), which the planner
starts and stops (``core.pool``), claim its tasks one by one and run each through the same
script and wrapper an array element would. ``pool.files`` is the protocol on disk that both
sides share: queue entries, claims (leases, renewed by a heartbeat), and ends.
"""
