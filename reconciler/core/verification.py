"""Which completed tasks a pass verifies deeply: a bounded sample that rotates over all of them.

A completed task is certified by its marker, read from a directory listing; whether its
bytes are still what the wrapper validated (hdf5 opens and has its datasets, sha256
matches) takes opening every file, a metadata round trip each on a parallel filesystem.
So a pass verifies at most ``execution.verify_per_pass`` completed tasks, continuing after
the last one the previous pass verified (a cursor the ledger keeps), so every completed task
is verified once every ceil(complete / per_pass) passes, whatever else changes. Pure: the
engine reads the cursor and opens the files; this only chooses.
"""

from __future__ import annotations

from collections.abc import Sequence


def sample(complete: Sequence[tuple[int, str]], after: int | None, n: int) -> tuple[tuple[str, ...], int | None]:
    """(keys to verify, the new cursor) from ``complete``: (task index, key) pairs in ascending index.

    The sample is the first ``n`` tasks whose index is above ``after`` (the cursor: the
    index of the last task verified), wrapping round to the lowest; the new cursor is the
    index of the last one chosen. Indices, not positions, so tasks that complete, vanish or
    leave the production between passes neither repeat nor skip the rest of the rotation.
    ``n <= 0`` or nothing complete: nothing, and the cursor unchanged.
    """
    if n <= 0 or not complete:
        return (), after
    start = 0
    if after is not None:
        start = next((i for i, (index, _key) in enumerate(complete) if index > after), len(complete))
    take = min(n, len(complete))
    chosen = [complete[(start + i) % len(complete)] for i in range(take)]
    return tuple(key for _index, key in chosen), chosen[-1][0]


def cursor_of(raw: str | None) -> int | None:
    """The cursor as the ledger keeps it (text), or None when absent or unreadable (start over)."""
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
