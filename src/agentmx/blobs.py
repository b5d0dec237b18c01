"""Content-addressed blob store on the file system (raw .eml and attachment bytes).

Writes are durable before they return: the file is fsynced and renamed into place, so a key
stored in a committed database row always names a complete file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()  # fan-out directories known to exist
        # put_many callers waiting for the next worker-thread trip, with the loop they wait on.
        self._pending: list[tuple[list[bytes], asyncio.Future[list[str]]]] = []
        self._drainer: asyncio.Task[None] | None = None

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def put_sync(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        folder = os.path.join(self.root, key[:2], key[2:4])
        path = os.path.join(folder, key)
        if os.path.exists(path):
            return key
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the folder was removed behind our back: make it again
            self._dirs.discard(folder)
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    async def put(self, data: bytes) -> str:
        return await asyncio.to_thread(self.put_sync, data)

    async def put_many(self, items: list[bytes]) -> list[str]:
        """Store each item durably; concurrent callers share one worker-thread trip.

        A trip per call cost more CPU (thread hand-off, wake-ups) than the writes themselves.
        """
        loop = asyncio.get_running_loop()
        if self._drainer is not None and self._drainer.get_loop() is not loop:  # a new loop (tests, CLI)
            self._drainer = None
            self._pending = [p for p in self._pending if p[1].get_loop() is loop]
        done: asyncio.Future[list[str]] = loop.create_future()
        self._pending.append((items, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        # shield: a caller going away must not cancel writes others wait on.
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            outcomes = await asyncio.to_thread(self._put_batch, [items for items, _ in batch])
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

    def _put_batch(self, batch: list[list[bytes]]) -> list[list[str] | BaseException]:
        out: list[list[str] | BaseException] = []
        for items in batch:
            try:
                out.append([self.put_sync(data) for data in items])
            except Exception as exc:  # noqa: BLE001 (handed to that caller; the others go on)
                out.append(exc)
        return out

    def get_sync(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
