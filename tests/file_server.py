"""A local HTTP server for URL attachments: answers GETs from a table of paths and records each request."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PIECE_PAUSE = 0.1  # seconds between the pieces of a body given in pieces


class FileServer:
    """``files`` maps a path to (headers, body); every GET's path and headers are kept in ``requests``.
    A body given as a list of pieces is written a piece at a time with a pause between, so the client
    reads each as its own chunk."""

    def __init__(self, files: Mapping[str, tuple[dict[str, str], bytes | list[bytes]]]) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                recorded.append((self.path, dict(self.headers)))
                headers, body = files[self.path]
                pieces = body if isinstance(body, list) else [body]
                self.send_response(200)
                length = sum(map(len, pieces))
                for name, value in {**headers, "Content-Length": str(length)}.items():
                    self.send_header(name, value)
                self.end_headers()
                for index, piece in enumerate(pieces):
                    if index:
                        time.sleep(PIECE_PAUSE)
                    self.wfile.write(piece)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
