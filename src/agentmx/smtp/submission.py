"""SMTP submission (RFC 6409): agents send with any SMTP client, and agentmx sends as its API does.

As AgentMail's ports 587 and 465: on ``AGENTMX_SUBMISSION_PORT`` STARTTLS with the SMTP certificate
comes first (AUTH before it: 538), on ``AGENTMX_SUBMISSIONS_PORT`` TLS from the first byte. AUTH
PLAIN or LOGIN takes the inbox address as the user name and an API key that may send from that inbox
(``message_send``, the inbox in its scope) as the password. MAIL FROM and the From field must be that
inbox; up to 50 recipients, anywhere. The rules, the stored copy (label ``sent``), delivery and
``message.sent`` are the send API's (``services/sending``); the 250 comes once the message is stored
and queued. Served in the server process, never by front ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.models import Inbox
from agentmx.errors import AgentMXError
from agentmx.mail import compose
from agentmx.services import sending
from agentmx.services.authenticate import caller_for_secret
from agentmx.services.caller import Caller
from agentmx.services.inboxes import get_inbox
from agentmx.services.runtime import Runtime
from agentmx.smtp import replies
from agentmx.smtp.data import body_of
from agentmx.smtp.limits import HookNames, LimitedSMTP
from agentmx.smtp.listener import Stop, listen
from agentmx.smtp.tls import describe
from agentmx.smtp.trace import submission_trace

log = logging.getLogger("agentmx.smtp")


@dataclass
class Submitter:
    """Who authenticated: the key (checked again for each message: it may be deleted meanwhile)
    and the inbox it sends as."""

    secret: str = field(repr=False)  # never in a log line
    inbox_id: str = ""


class SubmissionSMTP(LimitedSMTP):
    """aiosmtpd's AUTH PLAIN and LOGIN parse the credentials; they are checked here, asynchronously."""

    # The message goes on to other MTAs as written: a line over RFC 5321's 1000 octets is refused
    # here (500), where the agent sees why, not bounced later by a receiver that refuses it.
    data_line_limit = SMTP.line_length_limit
    line_length_limit = SMTP.line_length_limit  # aiosmtpd's: AUTH's answers too are read as lines

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and self._tls_protocol is None:
            # Implicit TLS (465): aiosmtpd knows TLS only from STARTTLS; this is how it tells.
            self._tls_protocol = cast(Any, transport)
            assert self.session is not None
            self.session.ssl = {"cipher": ssl_object.cipher()}

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=True, auth_data=auth_data)  # parsed; see _checked

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802 (aiosmtpd name)
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802
        return await self._checked(await super().auth_LOGIN(_, args))

    async def _checked(self, parsed: AuthResult) -> AuthResult:
        if not parsed.success or not isinstance(parsed.auth_data, LoginPassword):
            return parsed
        handler: SubmissionHandler = self.event_handler
        submitter = await handler.authenticate(parsed.auth_data.login, parsed.auth_data.password)
        if submitter is None:
            return AuthResult(success=False, handled=False)  # 535, counted in the session's error budget
        return AuthResult(success=True, auth_data=submitter)


class SubmissionHandler(HookNames):
    offers_auth = True

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def authenticate(self, login: bytes, password: bytes) -> Submitter | None:
        """The submitter, if the key may send from the inbox named by ``login``."""
        try:
            secret = password.decode()
            async with self.rt.db.read() as session:
                _, inbox = await self._sender(session, secret, login.decode().strip())
        except (AgentMXError, UnicodeDecodeError):
            return None
        return Submitter(secret, inbox.id)

    async def _sender(self, session: AsyncSession, secret: str, inbox_id: str) -> tuple[Caller, Inbox]:
        """The key's caller and the inbox, if it may send from it; Unauthorized, NotFound or Forbidden if not."""
        caller = await caller_for_secret(self.rt, secret)
        inbox = await get_inbox(session, caller, inbox_id)
        caller.require("message_send")
        return caller, inbox

    async def handle_MAIL(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        submitter: Submitter = session.auth_data  # auth_required: MAIL before AUTH got 530
        if address.strip().lower() != submitter.inbox_id:
            return replies.S553_NOT_YOUR_ADDRESS
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.S250_OK

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= sending.MAX_RECIPIENTS:
            return replies.S452_TOO_MANY_RECIPIENTS
        if not compose.valid_address(address.strip()):
            # Refused here, as the send API refuses it (400): accepted, it could only be dropped.
            return replies.S553_BAD_RECIPIENT
        envelope.rcpt_tos.append(address)
        return replies.S250_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        submitter: Submitter = session.auth_data
        try:
            async with self.rt.db.read() as s:
                caller, inbox = await self._sender(s, submitter.secret, submitter.inbox_id)
                trace = submission_trace(session.host_name, self.rt.settings.hostname, describe(session))
                prepared = await sending.prepare_submitted(
                    s, self.rt, inbox, body_of(envelope), list(envelope.rcpt_tos), trace
                )
            async with self.rt.db.transaction() as s:
                inbox = await get_inbox(s, caller, inbox.id)
                message = await sending.commit_submitted(s, self.rt, inbox, prepared)
        except AgentMXError as exc:
            return replies.submission_reply_for(exc)
        except Exception:
            log.exception("storing a submitted message failed")
            return replies.S451_TEMP_FAILURE  # nothing committed: the client keeps custody
        return f"250 2.0.0 OK: queued as {message.message_id}"


async def start(rt: Runtime) -> Stop:
    """Background service: the submission listeners that are configured (STARTTLS, implicit TLS)."""
    settings = rt.settings
    stops: list[Stop] = []
    for port, implicit in ((settings.submission_port, False), (settings.submissions_port, True)):
        if port:
            stops.append(
                await listen(
                    SubmissionHandler(rt),
                    settings,
                    port=port,
                    protocol=SubmissionSMTP,
                    implicit_tls=implicit,
                    auth_required=True,
                    auth_require_tls=True,  # AUTH before STARTTLS: 538
                )
            )

    async def stop() -> None:
        for each in stops:
            await each()

    return stop
