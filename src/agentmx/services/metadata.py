"""Inbox metadata: a flat map of string keys to string, number or boolean values."""

from __future__ import annotations

import math
from typing import Any

from agentmx.errors import ValidationFailed

MAX_KEYS = 256
MAX_KEY_LENGTH = 256
MAX_STRING_LENGTH = 256


def _error(path: list[str], message: str) -> ValidationFailed:
    return ValidationFailed(message, [{"path": ["metadata", *path], "message": message}])


def _check_value(key: str, value: Any, *, allow_null: bool) -> None:
    if value is None and allow_null:
        return
    # bool is an int subclass; both are fine. Anything else (null, list, object) is not.
    if isinstance(value, bool | int | float):
        if isinstance(value, float) and not math.isfinite(value):  # NaN and infinities are not JSON
            raise _error([key], "metadata values must be finite numbers")
        return
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise _error([key], f"metadata string values are at most {MAX_STRING_LENGTH} characters")
        return
    raise _error([key], "metadata values must be a string, number or boolean")


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH:
        raise _error([key[:40]], f"metadata keys must be 1-{MAX_KEY_LENGTH} characters")


def validate_new(metadata: Any) -> dict[str, Any]:
    """Metadata given on create: nulls are not allowed."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise _error([], "metadata must be an object")
    if len(metadata) > MAX_KEYS:
        raise _error([], f"metadata has at most {MAX_KEYS} keys")
    for key, value in metadata.items():
        _check_key(key)
        _check_value(key, value, allow_null=False)
    return dict(metadata)


def merge(current: dict[str, Any], patch: Any) -> dict[str, Any]:
    """PATCH semantics: keys set or overwritten, omitted keys kept, ``key: null`` removes the key."""
    if not isinstance(patch, dict):
        raise _error([], "metadata must be an object or null")
    if not patch:
        raise _error([], "metadata must not be empty; send null to clear all metadata")
    merged = dict(current)
    for key, value in patch.items():
        _check_key(key)
        _check_value(key, value, allow_null=True)
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > MAX_KEYS:
        raise _error([], f"metadata has at most {MAX_KEYS} keys")
    return merged
