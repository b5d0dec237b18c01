"""The blob store's durability steps: file fsync, rename, then a sync of every folder that changed."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from agentmx.blobs import BlobStore


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync call, as (kind, path) with kind 'dir' or 'file'."""
    calls: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_put_syncs_the_file_then_the_new_folders(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    store = BlobStore(tmp_path / "blobs")
    key = store.put_sync(b"hello")
    folder = tmp_path / "blobs" / key[:2] / key[2:4]
    assert [kind for kind, _ in synced] == ["file", "dir", "dir", "dir"]
    assert [path for _, path in synced[1:]] == [str(folder), str(folder.parent), str(tmp_path / "blobs")]
    assert store.get_sync(key) == b"hello"


def test_put_many_syncs_every_folder_it_wrote_to(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    store = BlobStore(tmp_path / "blobs")
    items = [f"message {i}".encode() for i in range(40)]

    async def put_concurrently() -> list[list[str]]:
        return await asyncio.gather(*(store.put_many(items[i : i + 4]) for i in range(0, 40, 4)))

    keys = [k for batch in asyncio.run(put_concurrently()) for k in batch]
    assert [store.get_sync(k) for k in keys] == items
    dir_syncs = {path for kind, path in synced if kind == "dir"}
    assert {str(tmp_path / "blobs" / k[:2] / k[2:4]) for k in keys} <= dir_syncs


def test_a_stored_duplicate_still_syncs_its_folder(tmp_path: Path, synced: list[tuple[str, str]]) -> None:
    store = BlobStore(tmp_path / "blobs")
    key = store.put_sync(b"same bytes")
    synced.clear()
    assert store.put_sync(b"same bytes") == key
    assert synced == [("dir", str(tmp_path / "blobs" / key[:2] / key[2:4]))]
