"""URL attachments served with a Content-Encoding: decoded, and the 30 MB cap counts decoded bytes
as they are decoded, so a small gzip body inflating to hundreds of MB (a "gzip bomb") is refused
without the server holding it in memory."""

from __future__ import annotations

import gzip
import io
import secrets
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentmx.testing.server import ServerProcess
from file_server import FileServer
from send_support import ext

MB = 1024 * 1024
BOMB_MB = 400


def _gzip_of_zeros(megabytes: int) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as z:
        for _ in range(megabytes):
            z.write(bytes(MB))
    return out.getvalue()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


PAYLOAD = secrets.token_bytes(200_000)
# Several gzip members one after another: one file to gzip(1) and browsers.
MEMBERS = b"".join(gzip.compress(PAYLOAD[start : start + 50_000]) for start in range(0, len(PAYLOAD), 50_000))
BODIES: dict[str, tuple[str, bytes | list[bytes]]] = {  # path -> (Content-Encoding, body or its pieces)
    "/bomb": ("gzip", _gzip_of_zeros(BOMB_MB)),
    "/members-over-cap": ("gzip", _gzip_of_zeros(20) * 2),  # each member under 30 MB, together over
    "/gzip": ("gzip", gzip.compress(PAYLOAD)),
    "/gzip-members": ("gzip", MEMBERS),
    "/gzip-members-split": ("gzip", [MEMBERS[:1], MEMBERS[1:70_000], MEMBERS[70_000:]]),
    "/gzip-nul-padded": (
        "gzip",
        [gzip.compress(PAYLOAD) + bytes(10), bytes(512)],
    ),  # as tape/block writers pad
    "/zlib": ("deflate", zlib.compress(PAYLOAD)),
    "/raw-deflate": ("deflate", _raw_deflate(PAYLOAD)),
    "/raw-deflate-first-byte": ("deflate", [_raw_deflate(PAYLOAD)[:1], _raw_deflate(PAYLOAD)[1:]]),
    "/zlib-first-byte": ("deflate", [zlib.compress(PAYLOAD)[:1], zlib.compress(PAYLOAD)[1:]]),
    "/brotli": ("br", b"not really brotli"),
    "/broken": ("gzip", b"\x1f\x8b this is not gzip"),
    "/truncated": ("gzip", gzip.compress(PAYLOAD)[:50_000]),
    "/truncated-member": ("gzip", MEMBERS[:-10]),
    "/member-then-garbage": ("gzip", gzip.compress(PAYLOAD) + b"not a gzip member"),
}


class EncodedFiles(FileServer):
    def __init__(self) -> None:
        super().__init__(
            {
                path: ({"Content-Type": "application/octet-stream", "Content-Encoding": coding}, body)
                for path, (coding, body) in BODIES.items()
            }
        )

    @property
    def accept_encodings(self) -> list[str | None]:
        return [headers.get("Accept-Encoding") for _, headers in self.requests]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, EncodedFiles, httpx.Client]]:
    files = EncodedFiles()
    env = {"AGENTMX_ATTACHMENT_URL_ALLOW_PRIVATE": "true"}  # the file server is on loopback
    server = ServerProcess(Path(tmp_path_factory.mktemp("encoded")), env=env).start()
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    try:
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
            yield server, files, http
    finally:
        server.stop()
        files.stop()


def _draft(http: httpx.Client, url: str) -> httpx.Response:
    inbox = http.post("/v0/inboxes", json={"username": "e" + secrets.token_hex(5)}).json()["inbox_id"]
    return http.post(f"/v0/inboxes/{inbox}/drafts", json={"to": ext(), "attachments": [{"url": url}]})


def _peak_rss(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize(
    "path",
    [
        "/gzip",
        "/gzip-members",
        "/gzip-members-split",
        "/gzip-nul-padded",
        "/zlib",
        "/raw-deflate",
        "/raw-deflate-first-byte",
        "/zlib-first-byte",
    ],
)
def test_encoded_attachment_is_decoded(
    served: tuple[ServerProcess, EncodedFiles, httpx.Client], path: str
) -> None:
    _, files, http = served
    created = _draft(http, files.base + path)
    assert created.status_code == 200, created.text
    assert created.json()["attachments"][0]["size"] == len(PAYLOAD)
    assert files.accept_encodings[-1] == "gzip, deflate"  # only what the server can decode


def test_gzip_bomb_is_refused_early(served: tuple[ServerProcess, EncodedFiles, httpx.Client]) -> None:
    server, files, http = served
    before = _peak_rss(server)
    refused = _draft(http, files.base + "/bomb")
    assert refused.status_code == 403, refused.text
    assert refused.json()["message"] == "URL attachments exceed 30 MB per message"
    # The 30 MB allowance and some slack; decoding whole chunks reached well over 100 MB more.
    assert _peak_rss(server) - before < 80 * MB


def test_cap_counts_every_gzip_member(served: tuple[ServerProcess, EncodedFiles, httpx.Client]) -> None:
    _, files, http = served
    refused = _draft(http, files.base + "/members-over-cap")
    assert refused.status_code == 403, refused.text
    assert refused.json()["message"] == "URL attachments exceed 30 MB per message"


@pytest.mark.parametrize(
    "path", ["/brotli", "/broken", "/truncated", "/truncated-member", "/member-then-garbage"]
)
def test_undecodable_body_is_refused(
    served: tuple[ServerProcess, EncodedFiles, httpx.Client], path: str
) -> None:
    _, files, http = served
    refused = _draft(http, files.base + path)
    assert refused.status_code == 403, refused.text
    assert refused.json()["name"] == "MessageRejectedError"
    assert "could not be fetched" in refused.json()["message"]
