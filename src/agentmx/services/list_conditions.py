"""A list's filters as SQL conditions with bound values, so that its statement is built once per shape.

Building a page's SELECT and computing its cache key took a tenth of a list request's CPU. Label,
time and scope filters take their values as bind parameters: statements that differ only in those
values are one statement, kept by ``StatementCache`` under its shape. A text filter's SQL depends on
the text searched for (its escapes, its case folding), so a list with one is built per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select


@dataclass
class Conditions:
    where: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # What the SQL of ``where`` depends on besides ``params``; None when values are inside it.
    shape: tuple[Any, ...] | None = ()

    def bound(self, name: str, value: Any) -> str:
        """``value`` as the parameter ``name`` (returned, for bindparam)."""
        self.params[name] = value
        return name

    def literal(self) -> None:
        """Values went into the SQL itself: the statement is not to be shared."""
        self.shape = None


class StatementCache:
    """Statements by shape; at most ``size`` of them (shapes grow with the count of label filters)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.statements: dict[tuple[Any, ...], Select[Any]] = {}

    def get(self, shape: tuple[Any, ...] | None, build: Callable[[], Select[Any]]) -> Select[Any]:
        if shape is None:
            return build()
        found = self.statements.get(shape)
        if found is None:
            if len(self.statements) >= self.size:
                self.statements.clear()
            found = self.statements[shape] = build()
        return found
