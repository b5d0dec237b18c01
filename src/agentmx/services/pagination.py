"""Keyset pagination with opaque page tokens bound to the list they came from."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Integer, Select, bindparam, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from agentmx.errors import ValidationFailed

T = TypeVar("T")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass
class Page(Generic[T]):
    items: list[T]
    limit: int
    next_page_token: str | None


def check_limit(limit: int | None, maximum: int = MAX_LIMIT, default: int = DEFAULT_LIMIT) -> int:
    if limit is None:
        return min(default, maximum)
    if limit < 1 or limit > maximum:
        raise ValidationFailed(
            f"limit must be between 1 and {maximum}", [{"path": ["limit"], "message": f"1..{maximum}"}]
        )
    return limit


def encode_token(kind: str, values: Sequence[Any]) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    data = json.dumps({"k": kind, "v": raw}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_token(kind: str, token: str, types: Sequence[type], param: str = "page_token") -> list[Any]:
    """The values ``encode_token`` put in ``token``; 400 naming ``param`` if it is not one of ``kind``."""
    bad = ValidationFailed(
        f"Invalid {param}. Restart the listing without a {param}.",
        [{"path": [param], "message": f"invalid {param.replace('_', ' ')}"}],
    )
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data.get("k") != kind or len(data["v"]) != len(types):
            raise bad
        out: list[Any] = []
        for value, typ in zip(data["v"], types, strict=True):
            if isinstance(value, str):
                value.encode("utf-8")  # a lone surrogate raises (a ValueError): no column holds one
                if "\x00" in value:
                    raise bad
            out.append(_utc(datetime.fromisoformat(value)) if typ is datetime else typ(value))
        return out
    except (
        ValueError,
        RecursionError,
        KeyError,
        TypeError,
        OverflowError,
        binascii.Error,
        json.JSONDecodeError,
        AttributeError,
    ) as exc:
        raise bad from exc


def _utc(value: datetime) -> datetime:
    """A token's time in UTC, where the columns keep theirs: one that has none (year 9999 at -05:00,
    in a forged token) raises OverflowError here, a 400, rather than where the statement binds it."""
    return value if value.tzinfo is None else value.astimezone(UTC)


def keyset_select(
    stmt: Select[Any], *, columns: Sequence[Any], ascending: bool, from_token: bool
) -> Select[Any]:
    """``stmt`` ordered by ``columns`` (the last must be unique), ``:page_rows`` rows, the ones after
    ``:page_after_0, :page_after_1, ...`` when ``from_token``: values that ``keyset_params`` gives.

    ``columns``: mapped attributes or table columns; the extra row tells whether another page
    follows. The values are bind parameters, so that one statement serves every page of its shape
    (list_conditions).
    """
    if from_token:
        # Typed as the columns, so SQLite compares datetimes in the stored form.
        bound = [bindparam(f"page_after_{i}", type_=col.type) for i, col in enumerate(columns)]
        key, after = tuple_(*columns), tuple_(*bound)
        stmt = stmt.where(key > after if ascending else key < after)
    order = [col.asc() if ascending else col.desc() for col in columns]
    return stmt.order_by(*order).limit(bindparam("page_rows", type_=Integer))


def keyset_params(kind: str, page_token: str | None, columns: Sequence[Any], limit: int) -> dict[str, Any]:
    """The parameters of a ``keyset_select`` for ``page_token`` (400 if it is not one of ``kind``)."""
    params: dict[str, Any] = {"page_rows": limit + 1}
    if page_token:
        after = decode_token(kind, page_token, [col.type.python_type for col in columns])
        params |= {f"page_after_{i}": value for i, value in enumerate(after)}
    return params


def keyset_page(rows: list[T], *, kind: str, keys: Sequence[str], limit: int) -> Page[T]:
    """The page of a keyset_select's ``rows``; the token holds the last row's ``keys`` attributes."""
    token = None
    if len(rows) > limit:
        rows = rows[:limit]
        token = encode_token(kind, [getattr(rows[-1], key) for key in keys])
    return Page(rows, limit, token)


async def paginate(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    kind: str,
    columns: Sequence[InstrumentedAttribute[Any]],
    limit: int,
    page_token: str | None,
    ascending: bool = False,
) -> Page[Any]:
    """Order by ``columns`` (the last must be unique) and return one page of ORM objects after ``page_token``."""
    stmt = keyset_select(stmt, columns=columns, ascending=ascending, from_token=bool(page_token))
    params = keyset_params(kind, page_token, columns, limit)
    rows = list((await session.scalars(stmt, params)).all())
    return keyset_page(rows, kind=kind, keys=[col.key for col in columns], limit=limit)
