"""Shaping rows into AgentMail's wire format."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.responses import Response

from agentmx.db.models import Inbox, Pod


def iso(value: datetime | None) -> str | None:
    """AgentMail's form of a time: ISO 8601 in UTC with a ``Z``, microseconds only when not zero."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:  # rows come back in UTC already (db/types.UTCDateTime)
        value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def iso_repeating() -> Callable[[datetime | None], str | None]:
    """``iso`` for one document's times, which are mostly the same datetime (a new message's
    timestamp, created_at and updated_at, its new thread's too): that one is formatted once."""
    last: datetime | None = None
    text: str | None = None

    def time(value: datetime | None) -> str | None:
        nonlocal last, text
        if value is None:  # between equal times (a new thread's sent_timestamp)
            return None
        if value is not last:
            last, text = value, iso(value)
        return text

    return time


def as_is(value: datetime | None) -> datetime | None:
    """For documents that json_response writes: orjson formats a UTC datetime as ``iso`` does, in C."""
    return value


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def json_response(data: dict[str, Any]) -> Response:
    """The bytes FastAPI's JSONResponse would send, without its jsonable_encoder walk of the document.

    For the hot reads: the walk costs as much as building the document (every value is already JSON).
    orjson writes the same bytes for these documents (str, int, bool, None, lists, str-keyed dicts;
    no floats) in a seventh of json.dumps' time; what it refuses (a lone surrogate, an int past 64
    bits, a non-str key) goes through json.dumps, to fail or succeed exactly as before. Datetimes
    in UTC (naive ones are) come out as ``iso`` writes them (documents built with ``as_is``).
    """
    try:
        body = orjson.dumps(data, option=_UTC_TIMES)
    except TypeError:
        text = json.dumps(
            data,
            ensure_ascii=False,
            allow_nan=False,
            indent=None,
            separators=(",", ":"),
            default=_iso_or_fail,
        )
        body = text.encode("utf-8")
    return Response(body, media_type="application/json")


_UTC_TIMES = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def _iso_or_fail(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def page(key: str, items: list[dict[str, Any]], limit: int, next_page_token: str | None) -> dict[str, Any]:
    return drop_none({"count": len(items), "limit": limit, "next_page_token": next_page_token, key: items})


def inbox(row: Inbox) -> dict[str, Any]:
    return drop_none(
        {
            "pod_id": row.pod_id,
            "inbox_id": row.id,
            "email": row.id,
            "display_name": row.display_name,
            "client_id": row.client_id,
            "status": "paused" if row.status == "paused" else None,
            "metadata": row.metadata_ or {},
            "updated_at": iso(row.updated_at),
            "created_at": iso(row.created_at),
        }
    )


def pod(row: Pod) -> dict[str, Any]:
    return drop_none(
        {
            "pod_id": row.id,
            "name": row.name,
            "client_id": row.client_id,
            "updated_at": iso(row.updated_at),
            "created_at": iso(row.created_at),
        }
    )
