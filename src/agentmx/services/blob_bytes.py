"""Where a blob's bytes live: small ones in the database, the rest in the file store.

A blob is named by the SHA-256 of its bytes in both places, so a row's ``blob_key`` never says
which. Small blobs (``blob_inline_max_bytes``) go into ``inline_blobs`` in the same transaction
as the rows that name them: a file costs an fsync of its own and one of its folder (and, on a
young store, new fan-out folders), which was a third or more of an inbound message's CPU, while
the row rides on the commit the message pays anyway.
Bigger blobs are written and fsynced as files before that transaction opens.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.bulk import insert_many
from agentmx.db.models import InlineBlob
from agentmx.db.transient import table_of
from agentmx.errors import TemporaryFailure
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.blobs")

Inline = dict[str, bytes]  # key -> bytes, still to be inserted with the rows that name them


async def put_many(rt: Runtime, items: list[bytes]) -> tuple[list[str], Inline]:
    """Keys for ``items``, in order: big ones stored as files now, small ones returned to insert."""
    limit = rt.settings.blob_inline_max_bytes
    keys: list[str | None] = [None] * len(items)
    inline: Inline = {}
    big: list[int] = []
    for i, data in enumerate(items):
        if limit and len(data) <= limit:
            key = keys[i] = hashlib.sha256(data).hexdigest()
            inline[key] = data
        else:
            big.append(i)
    if big:
        for i, key in zip(big, await rt.blobs.put_many([items[i] for i in big]), strict=True):
            keys[i] = key
    return [k for k in keys if k is not None], inline


async def insert(session: AsyncSession, inline: Inline) -> None:
    """Store small blobs in the caller's transaction; bytes stored before (same key) are kept,
    and marked as just used, so the blob collector leaves them to this transaction (services/blob_gc)."""
    if inline:
        await insert_many(session, *insert_part(session, inline))


def insert_part(session: AsyncSession, inline: Inline) -> tuple[Insert, list[dict[str, object]]]:
    """``insert``'s statement and rows, for ``bulk.insert_all`` beside other rows."""
    now = int(time.time())
    # In key order: two transactions sharing blobs must not take their row locks in opposite orders.
    rows = [{"key": key, "data": inline[key], "touched_at": now} for key in sorted(inline)]
    return _insert_new(session.get_bind().dialect.name), rows


@functools.cache
def _insert_new(dialect: str) -> Insert:
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = build(table_of(InlineBlob))
    return stmt.on_conflict_do_update(index_elements=["key"], set_={"touched_at": stmt.excluded.touched_at})


async def read(rt: Runtime, key: str, session: AsyncSession | None = None) -> bytes | None:
    """The blob's bytes, from the database or the file store; None when neither has it.

    A caller that holds a session passes it: a second connection per caller could drain the pool.
    """
    t = table_of(InlineBlob).c
    query = select(t.data).where(t.key == key)
    if session is not None:
        data = (await session.execute(query)).scalar_one_or_none()
    else:
        async with rt.db.read_connection() as conn:
            data = (await conn.execute(query)).scalar_one_or_none()
    if data is not None:
        return bytes(data)
    try:
        return await rt.blobs.get(key)
    except FileNotFoundError:
        return None


@dataclass
class OpenBlob:
    """A blob kept as a file, already open: read it in chunks, then close it."""

    file: BinaryIO
    size: int


async def open_for_reading(rt: Runtime, key: str) -> bytes | OpenBlob | None:
    """A download's content: the bytes of a blob kept in the database, or the file of one in the file
    store, opened now (read whole, 50 readers that stopped reading a 9 MB file held 400 MB). None when
    neither has it.

    Opened before the caller decides its response: the blob collector may unlink the file at any
    moment, and a file found but opened later could be gone after the headers were sent.
    """
    t = table_of(InlineBlob).c
    async with rt.db.read_connection() as conn:
        data = (await conn.execute(select(t.data).where(t.key == key))).scalar_one_or_none()
    if data is not None:
        return bytes(data)
    try:
        file, size = await rt.blobs.open(key)
    except FileNotFoundError:
        return None
    except OSError as exc:  # out of descriptors (each download holds its file open), a failing disk
        log.warning("blob %s cannot be opened: %s", key, exc)
        raise TemporaryFailure("The download cannot be read right now; retry shortly") from exc
    return OpenBlob(file, size)


async def get(rt: Runtime, key: str, session: AsyncSession | None = None) -> bytes:
    """``read`` for a key a stored row names: its bytes must exist (FileNotFoundError if not)."""
    data = await read(rt, key, session)
    if data is None:
        raise FileNotFoundError(f"blob {key} is in neither the database nor {rt.blobs.root}")
    return data
