"""A minimal keep-alive HTTP/1.1 client for webhook POSTs, on asyncio streams.

Why not httpx: its client, transport and pool layers cost over 2 ms of CPU per request (nearly half
of a delivery's), and a webhook POST needs none of what they offer. This sends one request, reads the
status, drains a small body so the connection can be reused (a body that is slow or large closes
it instead: the status line is the answer), and never follows redirects.
The caller picks the address: the URL's host is what is connected to (the SSRF-checked IP), while
the Host header and the TLS server name may name the original host (see ``ssrf.pinned``).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from urllib.parse import quote, urlsplit

MAX_HEAD = 64 * 1024  # status line plus headers
MAX_DRAIN = 64 * 1024  # larger response bodies are not read: the connection is closed instead
MAX_IDLE = 16  # idle connections kept per destination
_NOT_ASCII = re.compile(r"[^\x00-\x7f]")
_BREAKS = re.compile("[\r\n\0]")  # would end a header line or the head early
# Seconds a closed TLS connection waits for the receiver's close_notify. One that vanished sends none:
# asyncio's default of 30 s held the socket (not the caller: close is not awaited).
TLS_SHUTDOWN_TIMEOUT = 1.0
IDLE_EXPIRY = 5.0  # seconds; as httpx: a peer or middlebox may drop idle connections without a FIN

Key = tuple[str, str, int, str]  # scheme, connect host, port, TLS server name
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Idle = tuple[asyncio.StreamReader, asyncio.StreamWriter, float]  # plus when it went idle


class ProtocolError(OSError):
    """The receiver's answer is not valid HTTP/1.1 (an OSError: handled like a network failure)."""


_tls: ssl.SSLContext | None = None
_idle: dict[Key, list[Idle]] = {}  # oldest first
# The sweep due for each destination with idle connections, and the loop it runs on.
_sweeps: dict[Key, tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}


def _tls_context() -> ssl.SSLContext:
    global _tls
    if _tls is None:
        _tls = ssl.create_default_context()
    return _tls


async def post(
    url: str, body: bytes, headers: dict[str, str], timeout: float, server_name: str | None = None
) -> int:
    """POST ``body`` to ``url``; returns the status code. Raises OSError (TimeoutError included)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme, (parts.hostname or "")
    port = parts.port or (443 if scheme == "https" else 80)
    key: Key = (scheme, host, port, server_name or host)
    head = _request_head(parts.path or "/", parts.query, parts.netloc, headers, len(body))
    deadline = asyncio.get_running_loop().time() + timeout
    while (conn := _take_idle(key)) is not None:
        try:
            return await _exchange(key, conn, head, body, deadline)
        except _Stale:
            continue  # the receiver closed an idle connection: try the next or a new one
    async with asyncio.timeout_at(deadline):
        conn = await _connect(key)
    try:
        return await _exchange(key, conn, head, body, deadline)
    except _Stale as exc:
        raise ProtocolError("connection closed before a response") from exc


class _Stale(Exception):
    """A connection failed before any response byte arrived (safe to retry on another)."""


def _request_head(path: str, query: str, netloc: str, headers: dict[str, str], length: int) -> bytes:
    # Non-ASCII in the URL's path or query is sent percent-encoded (UTF-8), as browsers and httpx do.
    target = _NOT_ASCII.sub(lambda m: quote(m.group()), f"{path}?{query}" if query else path)
    lines = [f"POST {target} HTTP/1.1"]
    if not any(name.lower() == "host" for name in headers):
        lines.append(f"host: {netloc.rpartition('@')[2]}")
    fields = [f"{name}: {value}" for name, value in headers.items()]
    # One scan of all fields ("": ": " holds none of CR, LF, NUL), not a check per character and header.
    if _BREAKS.search("".join(fields)):
        bad = next(name for name, value in headers.items() if _BREAKS.search(name + value))
        raise ProtocolError(f"header {bad!r} cannot be sent")
    lines.extend(fields)
    lines.append(f"content-length: {length}")
    text = "\r\n".join(lines)
    try:
        return (text + "\r\n\r\n").encode("ascii")
    except UnicodeEncodeError as exc:
        raise ProtocolError("request headers must be ASCII") from exc


def _take_idle(key: Key) -> Conn | None:
    pool = _idle.get(key)
    while pool:
        reader, writer, since = pool.pop()
        # An idle connection with pending data or EOF was closed (or spoke out of turn): drop it.
        expired = time.monotonic() - since > IDLE_EXPIRY
        if expired or reader.at_eof() or writer.is_closing() or len(getattr(reader, "_buffer", b"")):
            writer.close()
            continue
        return reader, writer
    return None


async def _connect(key: Key) -> Conn:
    scheme, host, port, server_name = key
    if scheme == "https":
        return await asyncio.open_connection(
            host,
            port,
            ssl=_tls_context(),
            server_hostname=server_name,
            ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
        )
    return await asyncio.open_connection(host, port)


async def _exchange(key: Key, conn: Conn, head: bytes, body: bytes, deadline: float) -> int:
    reader, writer = conn
    keep = False
    try:
        async with asyncio.timeout_at(deadline):
            try:
                # One write, one send(): two cost a second syscall and a second segment to the receiver.
                writer.write(head + body)
                await writer.drain()
                status_line = await reader.readline()
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                raise _Stale() from exc
            except ValueError as exc:  # a status line over the reader's limit
                raise ProtocolError("status line too long") from exc
            if not status_line:
                raise _Stale()
            try:
                status, fields, persistent = await _read_head(reader, status_line)
            except (asyncio.IncompleteReadError, ValueError) as exc:  # cut short, or a line over the limit
                raise ProtocolError(f"bad response: {exc}") from exc
        # The status line is the answer. The body is read only to reuse the connection: one that
        # never ends (or ends badly) closes it, and does not turn a 2xx into a failed attempt.
        try:
            async with asyncio.timeout_at(deadline):
                keep = persistent and await _drain_body(reader, status, fields)
        except (OSError, asyncio.IncompleteReadError, ValueError):  # OSError: timeouts, resets, bad chunks
            keep = False
        return status
    finally:
        if keep and len(_idle.get(key, ())) < MAX_IDLE:
            _park(key, reader, writer)
        else:
            writer.close()


def _park(key: Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _idle.setdefault(key, []).append((reader, writer, time.monotonic()))
    loop = asyncio.get_running_loop()
    due = _sweeps.get(key)
    if due is None or due[0] is not loop:
        _sweeps[key] = (loop, loop.call_later(IDLE_EXPIRY, _sweep, key))


def _sweep(key: Key) -> None:
    """Closes a destination's expired idle connections. Without it they, and their descriptors, were
    held until its next delivery, which may never come: every webhook URL ever posted to kept some."""
    del _sweeps[key]
    now = time.monotonic()
    pool = _idle.get(key, [])
    while pool and now - pool[0][2] >= IDLE_EXPIRY:
        pool.pop(0)[1].close()
    if pool:
        loop = asyncio.get_running_loop()
        _sweeps[key] = (loop, loop.call_later(pool[0][2] + IDLE_EXPIRY - now, _sweep, key))
    else:
        _idle.pop(key, None)


async def _read_head(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, dict[str, str], bool]:
    """Reads one response's head (skipping 1xx): (status, fields, whether the connection may persist)."""
    while True:
        version, status = _parse_status(status_line)
        fields = await _read_fields(reader)
        if not 100 <= status < 200:
            break
        status_line = await reader.readline()
    connection = fields.get("connection", "").lower()
    persistent = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return status, fields, persistent


async def _drain_body(reader: asyncio.StreamReader, status: int, fields: dict[str, str]) -> bool:
    """Reads a small body; returns whether the connection may be reused (False: not read)."""
    if status in (204, 304):
        return True
    if "chunked" in fields.get("transfer-encoding", "").lower():
        return await _drain_chunked(reader)
    length = fields.get("content-length")
    if length is None:
        return False  # body runs to EOF: not worth reading
    try:
        size = int(length)
    except ValueError:
        return False
    if size > MAX_DRAIN:
        return False
    await reader.readexactly(size)
    return True


def _parse_status(line: bytes) -> tuple[str, int]:
    parts = line.split(None, 2)
    # RFC 9112: three digits (a longer number is no HTTP status, and no database column holds it).
    three_digits = len(parts) >= 2 and parts[1].isdigit() and len(parts[1]) == 3
    if not three_digits or not parts[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"bad status line {line[:100]!r}")
    return parts[0].decode(), int(parts[1])


async def _read_fields(reader: asyncio.StreamReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    total = 0
    while True:
        line = await reader.readline()
        total += len(line)
        if total > MAX_HEAD or not line.endswith(b"\n"):
            raise ProtocolError("response head too large or cut short")
        if line in (b"\r\n", b"\n"):
            return fields
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            key = name.strip().lower()
            fields[key] = f"{fields[key]}, {value.strip()}" if key in fields else value.strip()


async def _drain_chunked(reader: asyncio.StreamReader) -> bool:
    """Reads a chunked body of at most MAX_DRAIN bytes; False when it was larger (not read)."""
    total = 0
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError("bad chunk size") from exc
        total += size
        if total > MAX_DRAIN:
            return False
        if size == 0:
            await _read_fields(reader)  # trailers
            return True
        await reader.readexactly(size + 2)
