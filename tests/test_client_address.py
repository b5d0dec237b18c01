"""Per-address connection limits count an IPv6 /64 as one client (client_address.py)."""

from __future__ import annotations

from agentmx.client_address import address_group


def test_ipv4_addresses_count_alone() -> None:
    assert address_group("203.0.113.7") == "203.0.113.7"


def test_an_ipv6_64_counts_as_one_client() -> None:
    a = address_group("2001:db8:1:2:aaaa::1")
    assert a == address_group("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert a != address_group("2001:db8:1:3::1")


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert address_group("::ffff:203.0.113.7") == "203.0.113.7"


def test_anything_else_is_kept_as_given() -> None:
    assert address_group("unix-socket") == "unix-socket"
