"""Verbs of the GitOps surface (diff, report), registered on the CLI parser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def register(add: Callable[..., Any], common: Callable[..., None]) -> None:
    """GitOps verbs are added here as they land."""
