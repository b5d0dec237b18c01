"""Connection caps for the SMTP listener (Postfix: smtpd_client_connection_count_limit = 50)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP

from agentmx.smtp.replies import S421_TOO_MANY_CONNECTIONS


@dataclass
class ConnectionLimits:
    max_total: int
    max_per_ip: int
    total: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)


# <dot-atom@dot-atom>, then nothing or whitespace and a parameter: the form nearly every client
# sends. aiosmtpd's full RFC 5322 parse of it costs more than the rest of MAIL or RCPT.
_SIMPLE_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(?=[^\s(])|\Z)"
)


class LimitedSMTP(SMTP):
    """aiosmtpd's protocol, answering 421 and closing when the listener or the client IP is at its cap."""

    # aiosmtpd's __init__ builds its command and AUTH tables from dir(self) and inspect.getmembers
    # (which reads every attribute) on each connection; only the smtp_/auth_ names matter there.
    _dir_names: list[str] | None = None

    def __dir__(self) -> list[str]:
        cls = type(self)
        if cls._dir_names is None:
            cls._dir_names = [n for n in object.__dir__(self) if n.startswith(("smtp_", "auth_"))]
        return cls._dir_names

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        found = _SIMPLE_PATH.match(arg)
        if found is None or (self.local_part_limit and found.group(1).index("@") > self.local_part_limit):
            return super()._getaddr(arg)  # the general parser (and its error handling)
        return found.group(1), arg[found.end() :]

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._limits = limits
        self._ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._ip is None:  # not again after STARTTLS
            peer = transport.get_extra_info("peername")
            self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            self._limits.total += 1
            self._limits.per_ip[self._ip] += 1
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._ip is not None:
            self._limits.total -= 1
            self._limits.per_ip[self._ip] -= 1
            if self._limits.per_ip[self._ip] <= 0:
                del self._limits.per_ip[self._ip]
            self._ip = None
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        assert self._ip is not None
        if (
            self._limits.total > self._limits.max_total
            or self._limits.per_ip[self._ip] > self._limits.max_per_ip
        ):
            await self.push(S421_TOO_MANY_CONNECTIONS)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()
