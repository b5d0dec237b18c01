"""Mapped objects that are built to be read, never added to a session.

Rows written with Core INSERTs (inbound batches, events) still travel as model objects (events,
callers read them). The mapped constructor fires an attribute event per column and per
collection item; building the instance state directly and filling its dict costs a fraction.
Such an object must never be added to a session (its attributes have no change history).
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def transient(cls: type[T], **values: Any) -> T:
    obj: T = cls._sa_class_manager.new_instance()  # type: ignore[attr-defined]
    obj.__dict__.update(values)
    return obj
