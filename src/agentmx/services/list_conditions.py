"""A list's filters as SQL conditions with bound values, so that its statement is built once per shape.

Building a page's SELECT and computing its cache key took a tenth of a list request's CPU. Label,
time and scope filters take their values as bind parameters: statements that differ only in those
values are one statement, kept by ``StatementCache`` under its shape. A text filter's SQL depends on
the text searched for (its escapes, its case folding), so a list with one is built per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import BindParameter, String, literal

T = TypeVar("T")


@dataclass
class Conditions:
    where: Callable[[], list[Any]]  # built only when the statement is (a cache miss)
    params: dict[str, Any]
    # What the SQL of ``where`` depends on besides ``params``; None when values are inside it.
    shape: tuple[Any, ...] | None


def label_param(index: int) -> str:
    return f"filter_label_{index}"


def one_bind_each(values: list[str] | list[BindParameter[str]]) -> list[BindParameter[str]]:
    """An IN list as one bound value an item, not SQLAlchemy's expanding list, which is rendered
    per execution and so cannot run on the driver's own connection (db/driver_reads)."""
    return [v if isinstance(v, BindParameter) else literal(v, String) for v in values]


def filter_params(labels: list[str], before: datetime | None, after: datetime | None) -> dict[str, Any]:
    """The values of a list's label and time filters, under the names its conditions bind."""
    params: dict[str, Any] = {label_param(i): label for i, label in enumerate(labels)}
    if before is not None:
        params["filter_before"] = before
    if after is not None:
        params["filter_after"] = after
    return params


class StatementCache(Generic[T]):
    """Statements by shape; at most ``size`` of them (shapes grow with the count of label filters)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.statements: dict[tuple[Any, ...], T] = {}

    def get(self, shape: tuple[Any, ...] | None, build: Callable[[], T]) -> T:
        if shape is None:
            return build()
        found = self.statements.get(shape)
        if found is None:
            if len(self.statements) >= self.size:
                self.statements.clear()
            found = self.statements[shape] = build()
        return found
