"""The SSRF rules for webhook destinations (the live refusal is in test_webhooks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from agentmx.events import http1
from agentmx.events.ssrf import BlockedAddress, check_destination, is_public, pinned
from agentmx.services import send_attachments
from agentmx.testing.certs import write_self_signed


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo around 192.0.2.45
        "::",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_delivery_refuses_loopback_and_pins_the_checked_address() -> None:
    with pytest.raises(BlockedAddress):
        asyncio.run(check_destination("http://localhost:8080/x", allow_private=False))
    assert str(asyncio.run(check_destination("http://localhost:8080/x", allow_private=True))) in (
        "127.0.0.1",
        "::1",
    )
    ip = asyncio.run(check_destination("https://93.184.215.14/hook", allow_private=False))
    assert ip == ipaddress.ip_address("93.184.215.14")
    url, headers, extensions = pinned(
        "https://hooks.example.com:8443/a?b=1", ipaddress.ip_address("2606:4700::1")
    )
    assert url == "https://[2606:4700::1]:8443/a?b=1"
    assert headers == {"host": "hooks.example.com:8443"} and extensions == {
        "sni_hostname": "hooks.example.com"
    }


def test_a_url_is_fetched_from_the_address_that_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: a second answer for the name must not choose where the request goes."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append(self.headers["Host"])
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"the checked host")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)  # 127.0.0.1 only: 127.0.0.2 is refused
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    lookups: list[str] = []
    real = socket.getaddrinfo

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":  # what an attacker's DNS does: another address the second time
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    spec = send_attachments.AttachmentSpec(url=f"http://rebind.test:{port}/file")
    try:
        (fetched,) = asyncio.run(send_attachments.resolve([spec], allow_private=True))
    finally:
        server.shutdown()
    assert fetched.data == b"the checked host"
    assert lookups == ["rebind.test"] and seen == [f"rebind.test:{port}"]


def test_an_idn_host_is_looked_up_and_named_by_its_a_label(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A webhook at https://straße.test/ (IDNA 2008: xn--strae-oqa): the Host header was the Unicode
    name, which cannot go into an HTTP/1.1 head (every delivery failed), and the lookup and TLS server
    name used Python's IDNA 2003 ("strasse.test", another domain)."""
    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    plain = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    server_names: list[str | None] = []
    write_self_signed(tmp_path, "xn--strae-oqa.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)  # type: ignore[assignment,misc,return-value]
    tls = context.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)

    def accept_one() -> None:
        with contextlib.suppress(OSError):  # the client refuses the self-signed certificate
            tls.accept()[0].close()

    threading.Thread(target=accept_one, daemon=True).start()
    lookups: list[str] = []
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real("127.0.0.1" if host == "xn--strae-oqa.test" else "256.0.0.0", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)

    async def deliver(url: str) -> int:
        ip = await check_destination(url, allow_private=True)
        pinned_url, host, extensions = pinned(url, ip)
        return await http1.post(pinned_url, b"{}", host, 10, extensions["sni_hostname"])

    try:
        assert asyncio.run(deliver(f"http://straße.test:{plain.server_address[1]}/hook")) == 204
        with pytest.raises(OSError):
            asyncio.run(deliver(f"https://Straße.test:{tls.getsockname()[1]}/hook"))
    finally:
        plain.shutdown()
        tls.close()
    assert hosts == [f"xn--strae-oqa.test:{plain.server_address[1]}"]
    assert server_names == ["xn--strae-oqa.test"]
    assert set(lookups) == {"xn--strae-oqa.test"}
