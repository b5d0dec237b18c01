"""A local HTTP server for URL attachments: answers GETs from a table of paths and records each request."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FileServer:
    """``files`` maps a path to (headers, body); every GET's path and headers are kept in ``requests``."""

    def __init__(self, files: Mapping[str, tuple[dict[str, str], bytes]]) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                recorded.append((self.path, dict(self.headers)))
                headers, body = files[self.path]
                self.send_response(200)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
