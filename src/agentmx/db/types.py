"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite has no time zones, PostgreSQL gets timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @property
    def python_type(self) -> type:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """On SQLite, process_bind_param and SQLite DATETIME's text in one call: an inbound message
        writes about ten times, each through two Python processors and a dict for the % format."""
        composed = super().bind_processor(dialect)
        if dialect.name != "sqlite" or getattr(self.impl_instance, "_storage_format", None) != _SQLITE_TEXT:
            return composed
        return _sqlite_text


# SQLAlchemy's SQLite DATETIME storage format (its default): what isoformat(" ", "microseconds") writes.
_SQLITE_TEXT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:  # naive is UTC already
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


# For reads whose times go straight to the wire (http/wire.json_response, wire.as_is): the driver's
# datetimes, UTC on both databases (naive on SQLite), without UTCDateTime's conversion per value.
DRIVER_TIME = DateTime(timezone=True)


def driver_time(type_: Any) -> Any:
    """``type_``, or DRIVER_TIME if it is UTCDateTime."""
    return DRIVER_TIME if isinstance(type_, UTCDateTime) else type_


def json_dumps(value: Any) -> str:
    """JSON columns' text: orjson, in a seventh of json.dumps' time (a few % of an inbound message).

    What orjson refuses (a lone surrogate, an int past 64 bits, a non-str key) goes through
    json.dumps, to be stored or fail as before. Unlike json.dumps, orjson writes NaN and infinities
    as null: values from clients are checked to be finite before they get here (services/metadata).
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


# orjson reads an integer past 64 bits as a float (losing digits) instead of refusing it; such a
# number has at least 19 digits. A text holding a run that long and read with a float in it is read
# again by json, which keeps every integer exact. Runs of digits inside strings (a Message-ID in the
# headers: time_ns, random 64-bit numbers) read without a float are orjson's: a regex search for the
# run took 10 of a 600-character header text's 16 us, and every such text then went through json.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_digit_run(text: str | bytes) -> bool:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return _LONG_DIGIT_RUN in raw.translate(_DIGITS_AS_ZEROS)


def _has_float(value: Any) -> bool:
    pending = [value]  # a loop, not recursion: orjson reads documents 1,024 levels deep
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
    return False


def json_loads(text: str | bytes) -> Any:
    """What json_dumps (or an older json.dumps: NaN, ints past 64 bits) wrote."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if _has_long_digit_run(text) and _has_float(value):
        return json.loads(text)
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)
