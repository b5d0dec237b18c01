"""The unit that per-address connection limits count by.

An IPv4 address, or an IPv6 /64: one subscriber usually holds a whole /64, so counting single IPv6
addresses would let one client take as many slots as it has addresses (all of them, in practice).
"""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=65536)  # asked on every HTTP request; parsing costs more than the lookup
def address_group(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return ip
