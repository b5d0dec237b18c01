"""Inbound SMTP acceptance: RCPT checks the inbox, DATA stores the message and answers 250 only after commit.

``check_rcpt`` and ``accept_data`` hold the rules and need only the runtime: ``InboundHandler``
calls them for sessions served in this process, ``smtp/workers.py`` for sessions a front-end
process serves (``smtp/frontend.py``).
"""

from __future__ import annotations

import logging
from typing import Any

from agentmx.errors import AgentMXError
from agentmx.mail import sender_auth
from agentmx.services import hooks, hop_limit, mailstore
from agentmx.services.runtime import Runtime
from agentmx.smtp import replies
from agentmx.smtp.data import body_of
from agentmx.smtp.limits import MAX_RECIPIENTS, HookNames
from agentmx.smtp.link import Prepared, RcptReply
from agentmx.smtp.tls import describe
from agentmx.smtp.trace import trace_headers

log = logging.getLogger("agentmx.smtp")


async def check_rcpt(rt: Runtime, address: str, accepted: int) -> RcptReply:
    """The reply to RCPT TO:<address> after ``accepted`` recipients of this transaction."""
    if accepted >= MAX_RECIPIENTS:
        return RcptReply(replies.S452_TOO_MANY_RECIPIENTS)
    if hooks.return_path_handler(address) is not None:
        return RcptReply(replies.S250_OK, return_path=True)
    try:
        await mailstore.recipient_inbox(rt, address)
    except AgentMXError as exc:
        return RcptReply(replies.reply_for(exc))
    except Exception:
        log.exception("recipient check failed for %s", address)
        return RcptReply(replies.S451_TEMP_FAILURE)
    return RcptReply(replies.S250_OK)


async def accept_data(
    rt: Runtime,
    raw: bytes,
    mail_from: str,
    rcpt_tos: list[str],
    helo: str | None,
    peer: Any,
    tls: str | None = None,
    prepared: Prepared | None = None,
) -> str:
    """Store the message for its recipients; the reply to the end of DATA.

    ``tls``: the session's TLS (``smtp.tls.describe``), None for plain text.
    """
    try:
        # A mail loop first: refused, not stored, nor read as a bounce, nor worth the sender checks.
        hop_limit.check(rt.settings, raw, added=1)  # with the Received this server adds
        rcpt_tos = await _return_paths(rt, raw, rcpt_tos)
        if not rcpt_tos:
            return replies.S250_QUEUED
        if prepared is not None and prepared.rcpt_tos == rcpt_tos:  # the front end checked and parsed it
            trace, parsed, verdict = prepared.trace, prepared.parsed, prepared.sender
        else:
            checked = await sender_auth.check(rt.settings, raw, mail_from, helo, peer)
            if checked.refused:
                return replies.S550_DMARC
            raw, verdict = checked.raw, checked.verdict
            trace = trace_headers(mail_from, helo, peer, rt.settings.hostname, rcpt_tos, tls) + checked.field
            parsed = await mailstore.parse(trace + raw)
        results = await mailstore.receive(rt, trace + raw, mail_from, rcpt_tos, parsed=parsed, sender=verdict)
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


async def _return_paths(rt: Runtime, raw: bytes, rcpt_tos: list[str]) -> list[str]:
    """Hand recipients that are our return paths to their handler; returns the other recipients."""
    rest: list[str] = []
    for rcpt in rcpt_tos:
        entry = hooks.return_path_handler(rcpt)
        if entry is None:
            rest.append(rcpt)
        else:
            await entry.handle(rt, raw, rcpt)
    return rest


class InboundHandler(HookNames):
    """aiosmtpd handler for sessions served in this process."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        answer = await check_rcpt(self.rt, address, len(envelope.rcpt_tos))
        if answer.reply == replies.S250_OK:
            envelope.rcpt_tos.append(address)
        return answer.reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        rcpt_tos = list(envelope.rcpt_tos)
        return await accept_data(
            self.rt,
            body_of(envelope),
            envelope.mail_from or "",
            rcpt_tos,
            session.host_name,
            session.peer,
            describe(session),
        )
