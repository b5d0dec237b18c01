"""Mapped objects that are built to be read, never added to a session.

Rows written with Core INSERTs (inbound batches, events) still travel as model objects (events,
callers read them). The mapped constructor fires an attribute event per column and per
collection item; building the instance state directly and filling its dict costs a fraction.
Such an object must never be added to a session (its attributes have no change history).
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import Table
from sqlalchemy import inspect as sa_inspect

T = TypeVar("T")
_COLUMNS: dict[type, list[tuple[str, str]]] = {}


def transient(cls: type[T], **values: Any) -> T:
    obj: T = cls._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    obj.__dict__.update(values)
    return obj


def table_of(cls: type) -> Table:
    """The mapped class's table, for Core statements (no ORM DML machinery)."""
    return cast(Table, cls.__table__)  # type: ignore[attr-defined]


def column_values(obj: object) -> dict[str, Any]:
    """Column name -> value of a transient mapped object (None where never set, as a flush would)."""
    cls = type(obj)
    columns = _COLUMNS.get(cls)
    if columns is None:
        mapper = sa_inspect(cls)
        columns = _COLUMNS[cls] = [(p.columns[0].key, p.key) for p in mapper.column_attrs]
    values = obj.__dict__
    return {column: values.get(attr) for column, attr in columns}
