"""A list's filters as SQL conditions with bound values, so that its statement is built once per shape.

Building a page's SELECT and computing its cache key took a tenth of a list request's CPU. Label,
time and scope filters take their values as bind parameters: statements that differ only in those
values are one statement, kept by ``StatementCache`` under its shape (the hidden labels, fixed, are
written in: see written_in). A text filter's SQL depends on
the text searched for (its escapes, its case folding), so a list with one is built per request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, String, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

T = TypeVar("T")


@dataclass
class Conditions:
    where: Callable[[], list[Any]]  # built only when the statement is (a cache miss)
    params: dict[str, Any]
    # What the SQL of ``where`` depends on besides ``params``; None when values are inside it.
    shape: tuple[Any, ...] | None


def label_param(index: int) -> str:
    return f"filter_label_{index}"


def written_in(labels: list[str]) -> list[ColumnElement[str]]:
    """Fixed labels (the hidden classification ones) as SQL literals, not bound values.

    PostgreSQL plans a prepared statement generically after five runs. With the hidden labels bound,
    its generic plan guessed that most threads hold one, sorted the whole inbox to skip them and was
    chosen as the cheaper one: 15-30 ms for an inbox's threads, not 1-2 ms. Written in, their
    statistics say how rare they are. The labels are the statement's shape anyway (the cache key).
    Nor is this SQLAlchemy's expanding IN list, rendered per execution, which cannot run on the
    driver's own connection (db/driver_reads).
    """
    for label in labels:
        if not label.replace("_", "").isalpha() or not label.isascii():
            raise ValueError(f"not a fixed label: {label!r}")  # only server constants go in the SQL
    return [literal_column(f"'{label}'", String) for label in labels]


def in_fixed_labels(label: Any, labels: list[str]) -> ColumnElement[bool]:
    """``label`` (a message_labels.label) is one of the fixed ``labels`` (written_in).

    The test runs once a message (the hidden labels of a list's every row), its message_pk known. On
    SQLite it is written ``+label IN (...)``: the unary + keeps SQLite off ix_message_labels_label
    (label, message_pk), a probe for each label, for the (message_pk, label) key, one probe for the
    message's few labels. A 51-row page of an inbox's messages took 0.27 ms of SQL, now 0.20; its
    threads 0.78, now 0.46. PostgreSQL has no unary + for text, and its SQL is unchanged.
    """
    return _NotIndexedOnSQLite(label).in_(written_in(labels))


class _NotIndexedOnSQLite(FunctionElement[str]):
    """Its one argument, written ``+argument`` on SQLite (no index on it is used), as it is elsewhere."""

    type = String()
    inherit_cache = True


@compiles(_NotIndexedOnSQLite)
def _as_it_is(element: _NotIndexedOnSQLite, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(_NotIndexedOnSQLite, "sqlite")
def _unary_plus(element: _NotIndexedOnSQLite, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + compiler.process(element.clauses, **kw)


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
