"""The argv a container runtime puts before a task's command (``environment.container``).

Standard library only: the task wrapper imports it on the compute node, once per task.
Each runtime gets the production directory visible inside the container at the same path, so
that the rendered argv (``{output}``, ``{production_dir}``) means the same file in and out:

- ``podman-hpc run --rm -v DIR:DIR -w DIR -e NAME... IMAGE argv``: podman passes no variable
  of the host unless named, so the task's ``env`` and the wrapper's ``RECONCILER_*`` are named
  (``-e NAME`` takes the value from the wrapper's environment: no value is on the command line);
  the host's PATH and LD_LIBRARY_PATH are the image's business, not the host's.
- ``shifter --image=IMAGE argv``: Shifter passes the environment and mounts the site's shared
  filesystems itself (at NERSC: CFS, $SCRATCH, home), where production directories live, and
  refuses volumes onto many paths, so no ``--volume`` is added. The image is named here rather
  than by ``#SBATCH --image``: one script header for every runtime, and the local backend and
  sites without Shifter's Slurm plugin read the same script.
- ``apptainer exec --bind DIR IMAGE argv``: Apptainer passes the environment; DIR is bound.

podman and apptainer read a bind as ``src:dst[:options]`` and apptainer splits several at
commas, so a production directory with ``:`` or ``,`` cannot be bound: ValueError, which the
wrapper reports as a command that cannot run (retrying would not change the path).
"""

from __future__ import annotations

from collections.abc import Iterable

RUNTIMES = ("podman-hpc", "shifter", "apptainer")


def unbindable(runtime: str, production_dir: str) -> str | None:
    """Why ``runtime`` cannot make ``production_dir`` visible in the container, or None; asked
    when desired state loads (spec.load), so it is a validate error, not a failure of every task."""
    if runtime in ("podman-hpc", "apptainer") and any(c in production_dir for c in ":,"):
        return f"{runtime} cannot bind the production directory {production_dir!r}: it contains ':' or ','"
    return None


def container_argv(runtime: str, image: str, production_dir: str, env_names: Iterable[str]) -> list[str]:
    """The runtime's argv up to and including the image; the task's argv follows it."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown container runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if runtime == "shifter":
        return ["shifter", f"--image={image}"]
    why = unbindable(runtime, production_dir)
    if why:
        raise ValueError(why)
    if runtime == "apptainer":
        return ["apptainer", "exec", "--bind", production_dir, image]
    argv = ["podman-hpc", "run", "--rm", "-v", f"{production_dir}:{production_dir}", "-w", production_dir]
    for name in sorted(set(env_names)):
        argv += ["-e", name]
    return [*argv, image]
