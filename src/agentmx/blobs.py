"""Content-addressed blob store on the file system (raw .eml and attachment bytes).

Writes are durable before they return: the file is fsynced and renamed into place, so a key
stored in a committed database row always names a complete file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def put_sync(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
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

    def get_sync(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, key)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()
