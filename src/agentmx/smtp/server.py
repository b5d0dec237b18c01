"""The inbound SMTP listener: served on the main event loop, or by front-end processes (smtp/workers.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agentmx.services.runtime import Runtime
from agentmx.smtp import workers
from agentmx.smtp.handler import InboundHandler
from agentmx.smtp.listener import listen
from agentmx.smtp.tls import load_context


async def start(rt: Runtime) -> Callable[[], Awaitable[None]]:
    settings = rt.settings

    async def _noop() -> None:
        return None

    if settings.smtp_port == 0:
        return _noop
    count = settings.effective_smtp_workers  # auto reads the CPU affinity and cgroup quota: once
    if count > 0:
        if settings.smtp_tls:  # files that do not load stop the server here, not in each front end
            load_context(settings.smtp_tls_cert, settings.smtp_tls_key)
        return await workers.start(rt, count)
    return await listen(InboundHandler(rt), settings)  # loads (and checks) the certificate itself
