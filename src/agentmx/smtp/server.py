"""The inbound SMTP listener, served on the main event loop (it shares the database engine)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiosmtpd.smtp import SMTP

from agentmx.fd_budget import connection_caps
from agentmx.services.runtime import Runtime
from agentmx.smtp.handler import InboundHandler
from agentmx.smtp.limits import ConnectionLimits, LimitedSMTP
from agentmx.smtp.stress import StressReaper

log = logging.getLogger("agentmx.smtp")


async def start(rt: Runtime) -> Callable[[], Awaitable[None]]:
    settings = rt.settings

    async def _noop() -> None:
        return None

    if settings.smtp_port == 0:
        return _noop
    handler = InboundHandler(rt)
    hostname = settings.public_host or settings.domain

    max_connections, _ = connection_caps(settings.smtp_max_connections, settings.http_max_connections)
    limits = ConnectionLimits(max_connections, settings.smtp_max_connections_per_ip)

    def factory() -> SMTP:
        # data_size_limit makes aiosmtpd answer 552 and stop buffering the oversize body.
        return LimitedSMTP(
            handler,
            limits=limits,
            error_limit=settings.smtp_error_limit,
            junk_limit=settings.smtp_junk_command_limit,
            data_size_limit=settings.smtp_max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=hostname,
            ident="agentmx ESMTP",
            timeout=settings.smtp_timeout,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=settings.host, port=settings.smtp_port)
    log.info("smtp listening on %s:%s", settings.host, settings.smtp_port)
    stop_reaper = StressReaper(limits.live, max_connections, settings.smtp_stress_timeout).start()

    async def stop() -> None:
        await stop_reaper()
        server.close()
        await server.wait_closed()

    return stop
