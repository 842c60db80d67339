"""Template errors and the pieces of ``str.format`` templates the renderer (spec.expand) reads."""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping
from typing import Any


class TemplateError(ValueError):
    """A template problem; ``field`` says which template."""

    def __init__(self, field: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.hint = hint

    @property
    def errors(self) -> list[TemplateError]:
        """Every problem this error stands for (one, unless it is a TemplateErrors)."""
        return [self]


class TemplateErrors(TemplateError):
    """Several template problems found in one look (every unknown placeholder of every
    template), so that a user fixes them in one round rather than one per run."""

    def __init__(self, errors: list[TemplateError]) -> None:
        super().__init__(errors[0].field, "; ".join(str(e) for e in errors), errors[0].hint)
        self._errors = list(errors)

    @property
    def errors(self) -> list[TemplateError]:
        return self._errors


class Params:
    """``{catalog_params.x}`` and ``{catalog_params[x]}`` both work in templates."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]) -> None:
        self._d = dict(d)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._d[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._d[name]


def fields(template: str) -> Iterator[tuple[str, str | None]]:
    for _lit, field, spec, _conv in string.Formatter().parse(template):
        if field is not None:
            yield field, spec


def root(field: str) -> tuple[str, str | None]:
    for i, ch in enumerate(field):
        if ch in ".[":
            rest = field[i + 1 :].rstrip("]")
            return field[:i], rest
    return field, None
