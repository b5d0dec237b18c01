"""URL attachments served with a Content-Encoding: decoded, and the 30 MB cap counts decoded bytes
as they are decoded, so a small gzip body inflating to hundreds of MB (a "gzip bomb") is refused
without the server holding it in memory."""

from __future__ import annotations

import gzip
import io
import secrets
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmx.testing.server import ServerProcess
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
BODIES: dict[str, tuple[str, bytes]] = {  # path -> (Content-Encoding, body)
    "/bomb": ("gzip", _gzip_of_zeros(BOMB_MB)),
    "/gzip": ("gzip", gzip.compress(PAYLOAD)),
    "/zlib": ("deflate", zlib.compress(PAYLOAD)),
    "/raw-deflate": ("deflate", _raw_deflate(PAYLOAD)),
    "/brotli": ("br", b"not really brotli"),
    "/broken": ("gzip", b"\x1f\x8b this is not gzip"),
}


class EncodedFiles:
    def __init__(self) -> None:
        self.accept_encodings: list[str | None] = []
        files = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                files.accept_encodings.append(self.headers.get("Accept-Encoding"))
                encoding, body = BODIES[self.path]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


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
        files.httpd.shutdown()
        files.httpd.server_close()


def _draft(http: httpx.Client, url: str) -> httpx.Response:
    inbox = http.post("/v0/inboxes", json={"username": "e" + secrets.token_hex(5)}).json()["inbox_id"]
    return http.post(f"/v0/inboxes/{inbox}/drafts", json={"to": ext(), "attachments": [{"url": url}]})


def _peak_rss(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("path", ["/gzip", "/zlib", "/raw-deflate"])
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


@pytest.mark.parametrize("path", ["/brotli", "/broken"])
def test_undecodable_body_is_refused(
    served: tuple[ServerProcess, EncodedFiles, httpx.Client], path: str
) -> None:
    _, files, http = served
    refused = _draft(http, files.base + path)
    assert refused.status_code == 403, refused.text
    assert refused.json()["name"] == "MessageRejectedError"
    assert "could not be fetched" in refused.json()["message"]
