"""Symbolic placeholders that the rendered argv carries until the task wrapper runs.

Kept in a module of their own, with no imports, because the wrapper starts once per task on
a compute node: importing them from ``expand`` would pull in pydantic (~0.25 s of start-up,
paid by every one of 40,000 tasks).
"""

SYMBOLIC_DIR = "${PRODUCTION_DIR}"
SYMBOLIC_PYTHON = "${PYTHON}"
