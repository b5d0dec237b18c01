"""The webhook HTTP/1.1 client: keep-alive reuse, stale connections, chunked bodies, no redirects, timeouts."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agentmx.events import http1
from send_support import self_signed_cert

Answer = Callable[[bytes], bytes | None]  # request head -> raw response (None: hang)


async def _serve(
    answer: Answer, close_after: bool = False, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, list[bytes], list[int]]:
    heads: list[bytes] = []
    connections = [0, 0]  # opened, ended by the client

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.startswith(b"content-length")
                )
                await reader.readexactly(length)
                heads.append(head)
                response = answer(head)
                if response is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(response)
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            connections[1] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    return server, heads, connections


def _run(test: Callable[[], Awaitable[None]]) -> None:
    http1._idle.clear()
    asyncio.run(test())


def _url(server: asyncio.Server, path: str = "/hook?a=1") -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{path}"


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


def test_keep_alive_reuses_one_connection() -> None:
    async def test() -> None:
        server, heads, connections = await _serve(lambda head: OK)
        for _ in range(3):
            assert await http1.post(_url(server), b"{}", {"x-a": "1"}, 5) == 200
        assert connections[0] == 1
        assert heads[0].startswith(b"POST /hook?a=1 HTTP/1.1\r\n")
        assert b"x-a: 1\r\n" in heads[0] and b"content-length: 2" in heads[0]
        server.close()

    _run(test)


def test_idle_connections_are_closed_once_expired_without_another_post(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A destination posted to once, then never again, must not hold its idle connections (and their
    descriptors) for ever: across many webhook URLs they added up."""
    monkeypatch.setattr(http1, "IDLE_EXPIRY", 0.2)

    async def test() -> None:
        servers = [(await _serve(lambda head: OK)) for _ in range(3)]
        for server, _, _ in servers:
            assert await http1.post(_url(server), b"{}", {}, 5) == 200
        await asyncio.sleep(0.6)
        assert [connections for _, _, connections in servers] == [[1, 1]] * 3
        assert not http1._idle
        for server, _, _ in servers:
            server.close()

    _run(test)


def test_host_header_kept_when_pinned() -> None:
    async def test() -> None:
        server, heads, _ = await _serve(lambda head: OK)
        assert await http1.post(_url(server), b"{}", {"host": "hooks.example.com"}, 5) == 200
        assert heads[0].count(b"host:") == 1 and b"host: hooks.example.com\r\n" in heads[0]
        server.close()

    _run(test)


def test_receiver_closing_idle_connections_is_retried() -> None:
    async def test() -> None:
        server, heads, connections = await _serve(lambda head: OK, close_after=True)
        for _ in range(3):
            assert await http1.post(_url(server), b"{}", {}, 5) == 200
            await asyncio.sleep(0.05)
        assert connections[0] == 3 and len(heads) == 3
        server.close()

    _run(test)


def test_chunked_redirect_and_errors() -> None:
    chunked = b"HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    redirect = b"HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n"
    answers = iter([chunked, redirect, b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"garbage\r\n\r\n"])

    async def test() -> None:
        server, heads, connections = await _serve(lambda head: next(answers))
        assert await http1.post(_url(server), b"{}", {}, 5) == 500
        assert await http1.post(_url(server), b"{}", {}, 5) == 302  # not followed
        assert await http1.post(_url(server), b"{}", {}, 5) == 200
        assert connections[0] == 1
        with pytest.raises(http1.ProtocolError):
            await http1.post(_url(server), b"{}", {}, 5)
        server.close()

    _run(test)


def test_headers_that_would_break_the_head_are_refused_before_sending() -> None:
    """CR, LF or NUL in a header's name or value (a header smuggled into the request) is a
    ProtocolError naming that header, and nothing reaches the receiver."""

    async def test() -> None:
        server, heads, _ = await _serve(lambda head: OK)
        for headers in (
            {"x-ok": "1", "x-bad": "a\r\nx-injected: 1"},
            {"x-ok": "1", "x-bad": "a\nb"},
            {"x-bad\r\nx-injected": "1"},
            {"x-ok": "1", "x-bad": "a\0b"},
        ):
            with pytest.raises(http1.ProtocolError, match="x-bad"):
                await http1.post(_url(server), b"{}", headers, 5)
        assert heads == []
        assert await http1.post(_url(server), b"{}", {"x-ok": "a: b; c"}, 5) == 200
        assert b"\r\nx-ok: a: b; c\r\n" in heads[0]
        server.close()

    _run(test)


def test_timeout_and_refused() -> None:
    async def test() -> None:
        server, _, _ = await _serve(lambda head: None)
        with pytest.raises(TimeoutError):
            await http1.post(_url(server), b"{}", {}, 0.3)
        url = _url(server)
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await http1.post(url, b"{}", {}, 2)

    _run(test)


def test_https_checks_the_certificate_and_names_the_original_host(tmp_path: Path) -> None:
    """Pinned delivery: TCP to the checked IP, TLS server name and verification for the URL's host."""
    cert, key = self_signed_cert(tmp_path, "localhost")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []

    def record_name(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = record_name  # type: ignore[assignment]

    async def test() -> None:
        tls_server, heads, _ = await _serve(lambda _head: OK, tls=server_tls)
        url = f"https://127.0.0.1:{tls_server.sockets[0].getsockname()[1]}/hook"
        with pytest.raises(ssl.SSLCertVerificationError):  # not trusted by the default store
            await http1.post(url, b"{}", {}, 5.0, server_name="localhost")
        http1._tls = ssl.create_default_context(cafile=str(cert))
        try:
            assert await http1.post(url, b"{}", {"host": "localhost"}, 5.0, server_name="localhost") == 200
            with pytest.raises(ssl.SSLCertVerificationError):  # the name must match the certificate
                await http1.post(url, b"{}", {}, 5.0, server_name="elsewhere.example")
        finally:
            http1._tls = None
            http1._idle.clear()
            tls_server.close()
        assert names[-2:] == ["localhost", "elsewhere.example"]
        assert any(b"host: localhost" in head for head in heads)

    _run(test)
