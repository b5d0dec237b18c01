"""The SMTP listener: aiosmtpd's protocol with agentmx's limits, on a port or on sockets handed over.

Served by the server process itself, or by SMTP front-end processes (``smtp/frontend.py``) on
listening sockets the server bound; it needs settings and a handler, not the database.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP

from agentmx.config_errors import cannot_listen
from agentmx.fd_budget import connection_caps
from agentmx.smtp.front_settings import SmtpSettings
from agentmx.smtp.limits import ConnectionLimits, LimitedSMTP
from agentmx.smtp.replies import S421_SHUTTING_DOWN
from agentmx.smtp.stress import StressReaper
from agentmx.smtp.tls import SHUTDOWN_TIMEOUT, ReloadingContext

log = logging.getLogger("agentmx.smtp")

Stop = Callable[[], Awaitable[None]]
STOP_GRACE = 10.0  # seconds sessions storing a message get to finish when the listener stops


async def listen(
    handler: Any,
    settings: SmtpSettings,
    sockets: list[socket.socket] | None = None,
    share: int = 1,
    *,
    port: int | None = None,
    protocol: type[LimitedSMTP] = LimitedSMTP,
    implicit_tls: bool = False,
    **options: Any,
) -> Stop:
    """Serve SMTP until the returned coroutine function is awaited.

    ``share``: how many processes serve the same sockets; each takes that part of the
    connection cap, so together they hold what ``smtp_max_connections`` allows.
    ``port`` (default ``smtp_port``), ``protocol`` and ``options`` (aiosmtpd's SMTP arguments)
    serve another kind of session there, such as submission (smtp/submission.py);
    ``implicit_tls``: TLS from the first byte (port 465), instead of STARTTLS offered.
    """
    port = settings.smtp_port if port is None else port
    max_connections, _ = connection_caps(settings.smtp_max_connections, settings.http_max_connections)
    max_connections = max(1, -(-max_connections // share))
    limits = ConnectionLimits(max_connections, settings.smtp_max_connections_per_ip)
    tls = ReloadingContext(settings.smtp_tls_cert, settings.smtp_tls_key) if settings.smtp_tls else None
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        context = tls.current() if tls else None  # the certificate, renewed if its files changed
        # data_size_limit makes aiosmtpd answer 552 and stop buffering the oversize body.
        return protocol(
            handler,
            limits=limits,
            error_limit=settings.smtp_error_limit,
            junk_limit=settings.smtp_junk_command_limit,
            data_size_limit=settings.smtp_max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="agentmx ESMTP",
            timeout=settings.smtp_timeout,
            # STARTTLS offered (required only before AUTH); with implicit TLS the socket has it.
            tls_context=None if implicit_tls else context,
            loop=loop,  # else aiosmtpd looks it up per connection, inside a warnings.catch_warnings()
            **options,
        )

    if sockets is None:
        ssl_options: dict[str, Any] = {}
        if implicit_tls and tls:
            # Sessions (and the connection caps) begin after the handshake: keep it short.
            ssl_options = {
                "ssl": tls.current(),
                "ssl_handshake_timeout": settings.smtp_stress_timeout,
                "ssl_shutdown_timeout": SHUTDOWN_TIMEOUT,
            }
        host = settings.effective_smtp_host
        try:
            servers = [await loop.create_server(factory, host=host, port=port, **ssl_options)]
        except OSError as exc:
            raise cannot_listen("SMTP", host, port, exc) from None
        log.info("smtp listening on %s:%s", settings.effective_smtp_host, port)
    else:
        servers = [await loop.create_server(factory, sock=sock) for sock in sockets]
    stop_reaper = StressReaper(limits.live, max_connections, settings.smtp_stress_timeout).start()

    async def stop() -> None:
        """No new sessions; 421 for the open ones, once any message they are storing has its reply.

        A session told 421 while its message commits would be stored and sent again.
        """
        await stop_reaper()
        for server in servers:
            server.close()
        deadline = loop.time() + STOP_GRACE
        while True:
            for conn in list(limits.live):
                if not conn.storing or loop.time() >= deadline:
                    conn.close_with(S421_SHUTTING_DOWN)
            if not any(conn.storing for conn in limits.live) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(limits.live):
            conn.close_with(S421_SHUTTING_DOWN)
        for server in servers:
            await server.wait_closed()

    return stop
