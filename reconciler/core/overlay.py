"""A read-only mapping of a few overrides over a large base: the planner's view of the world
as its decisions leave it (core.settle.Settled.views), without copying 10^5 entries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Overlay(Mapping[K, V]):
    """``top`` over ``base``, read-only: a few overrides over 10^5 entries, without a copy."""

    def __init__(self, top: Mapping[K, V], base: Mapping[K, V]) -> None:
        self.top, self.base = top, base

    def __getitem__(self, key: K) -> V:
        got = self.top.get(key)
        return got if got is not None else self.base[key]

    def __iter__(self) -> Iterator[K]:
        yield from self.top
        yield from (k for k in self.base if k not in self.top)

    def __len__(self) -> int:
        return len(self.base) + sum(1 for k in self.top if k not in self.base)
