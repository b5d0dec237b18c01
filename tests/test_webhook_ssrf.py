"""The SSRF rules for webhook destinations (the live refusal is in test_webhooks.py)."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import socket
import threading
from typing import Any

import pytest

from agentmx.events.ssrf import BlockedAddress, check_destination, is_public, pinned
from agentmx.services import send_attachments


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
