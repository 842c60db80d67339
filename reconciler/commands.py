"""Verbs of the reconcile loop (once, watch, plan, status, ...), registered on the CLI parser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register(add: Callable[..., Any], common: Callable[..., None]) -> None:
    """Loop verbs are added here as they land."""
