"""The SSRF rules for webhook destinations (the live refusal is in test_webhooks.py)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from agentmx.events.ssrf import BlockedAddress, check_destination, is_public, pinned


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
    assert asyncio.run(check_destination("http://localhost:8080/x", allow_private=True)) is None
    ip = asyncio.run(check_destination("https://93.184.215.14/hook", allow_private=False))
    assert ip == ipaddress.ip_address("93.184.215.14")
    url, headers, extensions = pinned(
        "https://hooks.example.com:8443/a?b=1", ipaddress.ip_address("2606:4700::1")
    )
    assert url == "https://[2606:4700::1]:8443/a?b=1"
    assert headers == {"host": "hooks.example.com:8443"} and extensions == {
        "sni_hostname": "hooks.example.com"
    }
