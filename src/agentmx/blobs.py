"""Content-addressed blob store on the file system (raw .eml and attachment bytes).

Writes are durable before they return: the file is fsynced, renamed into place, and then its
folder is fsynced so the new name itself survives a power cut (a SIGKILL alone never loses it).
A key stored in a committed database row therefore always names a complete file. Batched writes
sync each touched folder once per batch; on ext4 the first folder sync commits the journal
entries of every rename before it, so the others cost little.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from agentmx.errors import StorageFull

log = logging.getLogger("agentmx.blobs")

# A write failing with these says the disk is full or the quota used up, not that anything is broken.
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._dirs: set[str] = set()  # fan-out directories known to exist
        # put_many callers waiting for the next worker-thread trip, with the loop they wait on.
        self._pending: list[tuple[list[bytes], asyncio.Future[list[str]]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._lock_path = os.path.join(self.root, ".gc-lock")

    def check_writable(self) -> None:
        """Raise OSError unless a file can be made in the folder."""
        with tempfile.TemporaryFile(dir=self.root):
            pass

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def put_sync(self, data: bytes, unsynced_dirs: set[str] | None = None) -> str:
        """Store ``data`` and return its key. With ``unsynced_dirs`` the caller syncs the folders."""
        own_dirs: set[str] = set()
        key = self._write(data, own_dirs if unsynced_dirs is None else unsynced_dirs)
        _fsync_dirs(own_dirs)
        return key

    def _write(self, data: bytes, unsynced_dirs: set[str]) -> str:
        try:
            return self._write_file(data, unsynced_dirs)
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                log.error("blob folder %s: %s", self.root, exc)  # the operator must free space
                raise StorageFull("The server's storage is full; nothing was stored") from exc
            raise

    def _write_file(self, data: bytes, unsynced_dirs: set[str]) -> str:
        key = hashlib.sha256(data).hexdigest()
        folder = os.path.join(self.root, key[:2], key[2:4])
        path = os.path.join(folder, key)
        if os.path.exists(path) and self._touch(path):  # the lock only for files that exist
            unsynced_dirs.add(folder)  # a write that failed before its folder sync may have left it
            return key
        if folder not in self._dirs:
            self._make_folder(folder, unsynced_dirs)
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:  # the folder was removed behind our back: make it again
            self._dirs.discard(folder)
            self._make_folder(folder, unsynced_dirs)
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
        unsynced_dirs.add(folder)
        return key

    def _make_folder(self, folder: str, unsynced_dirs: set[str]) -> None:
        os.makedirs(folder, exist_ok=True)
        self._dirs.add(folder)
        # The folder may be new: its name lives in its parent, and the parent's in the root.
        parent = os.path.dirname(folder)
        unsynced_dirs.update((parent, os.path.dirname(parent)))

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
        unsynced_dirs: set[str] = set()
        for items in batch:
            try:
                out.append([self._write(data, unsynced_dirs) for data in items])
            except Exception as exc:  # noqa: BLE001 (handed to that caller; the others go on)
                out.append(exc)
        try:
            _fsync_dirs(unsynced_dirs)
        except OSError as exc:  # no caller may count on a name that might not survive
            return [exc for _ in batch]
        return out

    def _touch(self, path: str) -> bool:
        """Mark an existing file as just used (the collector then leaves it); False if there is none."""
        with self._gc_lock(fcntl.LOCK_SH):
            try:
                os.utime(path)
            except FileNotFoundError:
                return False
            return True

    def collect_sync(self, keys: list[str], unused_since: float) -> list[str]:
        """Delete the files of ``keys`` (no row names them) last used before ``unused_since`` (Unix
        time); returns the keys that have no file now. A file used since is kept.

        Under the store's lock: a writer that finds a file and marks it used (``_touch``) either
        does so before the check here, or finds no file and writes it anew.
        """
        gone: list[str] = []
        folders: set[str] = set()
        with self._gc_lock(fcntl.LOCK_EX):
            for key in keys:
                path = self._path(key)
                try:
                    if path.stat().st_mtime >= unused_since:
                        continue
                    path.unlink()
                    folders.add(str(path.parent))
                except FileNotFoundError:
                    pass
                gone.append(key)
        _fsync_dirs(folders)
        return gone

    def fan_out_folders(self) -> list[str]:
        """The store's first-level folders (``ab`` of ``ab/cd/<key>``)."""
        with os.scandir(self.root) as entries:
            return sorted(e.path for e in entries if e.is_dir() and len(e.name) == 2)

    def keys_unused_since(self, folder: str, unused_since: float) -> list[str]:
        """Keys of the files in one first-level folder last used before ``unused_since`` (Unix time)."""
        found: list[str] = []
        with os.scandir(folder) as subs:
            for sub in subs:
                if not sub.is_dir():
                    continue
                with os.scandir(sub.path) as files:
                    for entry in files:
                        if entry.name.startswith(".") or not entry.is_file():
                            continue  # a write in progress (.tmp-…)
                        if entry.stat().st_mtime < unused_since:
                            found.append(entry.name)
        return found

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        # A descriptor of its own each time: flock locks belong to the open file, so threads of one
        # process sharing a descriptor would not exclude each other. Processes sharing the store
        # (several agentmx on one PostgreSQL database) do, through the same file.
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    def get_sync(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    def open_sync(self, key: str) -> tuple[BinaryIO, int]:
        """The blob's file, open for reading, and its size. The collector may unlink it from now on:
        the open file still reads whole (FileNotFoundError if it is gone already)."""
        file = open(self._path(key), "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
        try:
            return file, os.fstat(file.fileno()).st_size
        except BaseException:
            file.close()
            raise

    async def open(self, key: str) -> tuple[BinaryIO, int]:
        return await asyncio.to_thread(self.open_sync, key)


def _fsync_dirs(folders: set[str]) -> None:
    # Deepest first: a new folder's own entries before the entry that names it.
    for folder in sorted(folders, key=len, reverse=True):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
