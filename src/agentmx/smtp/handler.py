"""aiosmtpd handler: RCPT checks the inbox, DATA stores the message and answers 250 only after commit."""

from __future__ import annotations

import logging
from typing import Any

from agentmx.errors import AgentMXError
from agentmx.services import hooks, mailstore
from agentmx.services.runtime import Runtime
from agentmx.smtp import replies
from agentmx.smtp.trace import trace_headers

log = logging.getLogger("agentmx.smtp")

MAX_RECIPIENTS = 1000  # Postfix smtpd_recipient_limit


class InboundHandler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return replies.S452_TOO_MANY_RECIPIENTS
        if hooks.return_path_handler(address) is not None:  # a DSN to our return path (outbound)
            envelope.rcpt_tos.append(address)
            return replies.S250_OK
        try:
            await mailstore.recipient_inbox(self.rt, address)
        except AgentMXError as exc:
            return replies.reply_for(exc)
        except Exception:
            log.exception("recipient check failed for %s", address)
            return replies.S451_TEMP_FAILURE
        envelope.rcpt_tos.append(address)
        return replies.S250_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            rcpt_tos = await self._return_paths(raw, list(envelope.rcpt_tos))
            if not rcpt_tos:
                return replies.S250_QUEUED
            mail_from = envelope.mail_from or ""
            hostname = self.rt.settings.public_host or self.rt.settings.domain
            raw = trace_headers(mail_from, session.host_name, session.peer, hostname, rcpt_tos) + raw
            results = await mailstore.receive(self.rt, raw, mail_from, rcpt_tos)
        except AgentMXError as exc:
            log.warning("inbound message refused: %s", exc)
            return replies.reply_for(exc)
        except Exception:
            # Nothing was committed: the client keeps custody and retries.
            log.exception("storing an inbound message failed")
            return replies.S451_TEMP_FAILURE
        if results and all(r.status == "rejected" for r in results.values()):
            first = next(r.error for r in results.values() if r.error is not None)
            return replies.reply_for(first) if first else replies.S550_NO_SUCH_INBOX
        return replies.S250_QUEUED

    async def _return_paths(self, raw: bytes, rcpt_tos: list[str]) -> list[str]:
        """Hand recipients that are our return paths to their handler; returns the other recipients."""
        rest: list[str] = []
        for rcpt in rcpt_tos:
            entry = hooks.return_path_handler(rcpt)
            if entry is None:
                rest.append(rcpt)
            else:
                await entry.handle(self.rt, raw, rcpt)
        return rest
