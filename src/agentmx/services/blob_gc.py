"""Deleting the bytes of deleted mail: blobs that no message, attachment or draft attachment names.

Blobs are content-addressed and shared (the local copies of one delivery name one raw message,
the same attachment in two messages is stored once), so a deleted row cannot delete its blob on
the spot. Database triggers (migration 0008) put the key of every deleted naming row in
``blob_candidates``, cascades included; this collector takes them in batches and deletes the
bytes that no row names any more.

Files that no deleted row names (written for a transaction that then failed, or named by mail deleted
before migration 0008) are found by a look through the file store, a few times a day.

A transaction about to name a blob stores it (again) first, which marks it used
(``inline_blobs.touched_at``, or the file's modification time) before its rows commit. The check
here cannot see those rows yet, so bytes are deleted only when unused for ``blob_gc_delay``:
longer than any transaction. A candidate used within that time is looked at again next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import CompoundSelect, Insert, delete, select, union
from sqlalchemy.dialects import postgresql, sqlite

from agentmx.db.models import Attachment, BlobCandidate, DraftAttachment, InlineBlob, Message
from agentmx.services.runtime import Runtime

log = logging.getLogger("agentmx.blobs")

BATCH = 500  # candidates per transaction: SQLite's writers wait for each one
MAX_INTERVAL = 600.0  # seconds between passes (shorter when blob_gc_delay is)
SWEEP_EVERY = 86400.0  # seconds between looks through the whole file store (4 x a shorter delay)
FIRST_SWEEP_MAX = 3600.0  # seconds after start


async def collect(rt: Runtime) -> int:
    """One pass over the candidates; returns how many of them have no bytes stored any more."""
    unused_since = time.time() - rt.settings.blob_gc_delay
    collected = 0
    after = ""  # keys in order: those kept for a later pass are not read again in this one
    while True:
        async with rt.db.transaction() as s:
            keys = list(
                (
                    await s.scalars(
                        select(BlobCandidate.key)
                        .where(BlobCandidate.key > after)
                        .order_by(BlobCandidate.key)
                        .limit(BATCH)
                    )
                ).all()
            )
            if not keys:
                return collected
            after = keys[-1]
            named = set((await s.scalars(_named(keys))).all())
            unnamed = [key for key in keys if key not in named]
            if unnamed:
                await s.execute(
                    delete(InlineBlob).where(
                        InlineBlob.key.in_(unnamed), InlineBlob.touched_at < unused_since
                    )
                )
                used = set((await s.scalars(select(InlineBlob.key).where(InlineBlob.key.in_(unnamed)))).all())
                unnamed = [key for key in unnamed if key not in used]
            await s.execute(delete(BlobCandidate).where(BlobCandidate.key.in_(named)))
        # Files outside the transaction: SQLite's writers must not wait for file-system work.
        gone = await asyncio.to_thread(rt.blobs.collect_sync, unnamed, unused_since) if unnamed else []
        if gone:
            async with rt.db.transaction() as s:
                await s.execute(delete(BlobCandidate).where(BlobCandidate.key.in_(gone)))
        collected += len(gone)
        if len(keys) < BATCH:
            return collected


def _named(keys: list[str]) -> CompoundSelect:
    return union(
        select(Message.blob_key).where(Message.blob_key.in_(keys)),
        select(Attachment.blob_key).where(Attachment.blob_key.in_(keys)),
        select(DraftAttachment.blob_key).where(DraftAttachment.blob_key.in_(keys)),
    )


async def queue_unnamed_files(rt: Runtime) -> int:
    """Make candidates of the files no row names, unused for ``blob_gc_delay``; returns how many.

    No deleted row queues those: the bytes of a transaction that failed after writing them, and of
    mail deleted before migration 0008. ``collect`` then deletes them as any other candidate.
    """
    unused_since = time.time() - rt.settings.blob_gc_delay
    queued = 0
    for folder in await asyncio.to_thread(rt.blobs.fan_out_folders):
        keys = await asyncio.to_thread(rt.blobs.keys_unused_since, folder, unused_since)
        for start in range(0, len(keys), BATCH):
            batch = keys[start : start + BATCH]
            async with rt.db.transaction() as s:
                named = set((await s.scalars(_named(batch))).all())
                unnamed = [{"key": key} for key in batch if key not in named]
                if unnamed:
                    await s.execute(_queue(s.get_bind().dialect.name), unnamed)
            queued += len(unnamed)
    return queued


@functools.cache
def _queue(dialect: str) -> Insert:
    build = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return build(BlobCandidate).on_conflict_do_nothing()


async def start(rt: Runtime) -> Callable[[], Awaitable[None]]:
    """Background service: a pass every ``MAX_INTERVAL`` seconds (half the delay when that is shorter),
    and a look through the file store for files nothing queued every ``SWEEP_EVERY`` seconds (the
    first once ``blob_gc_delay`` has passed, at most an hour after start)."""
    delay = rt.settings.blob_gc_delay
    interval = min(MAX_INTERVAL, delay / 2)
    sweep_every = min(SWEEP_EVERY, 4 * delay)
    next_sweep = time.monotonic() + min(delay, FIRST_SWEEP_MAX)

    async def loop() -> None:
        nonlocal next_sweep
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + sweep_every
                    queued = await queue_unnamed_files(rt)
                    if queued:
                        log.info("found %d stored files no mail names", queued)
                collected = await collect(rt)
                if collected:
                    log.info("deleted the bytes of %d blobs no mail names any more", collected)
            except Exception:
                log.exception("deleting unused blobs failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop(), name="blob-gc")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
