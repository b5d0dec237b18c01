"""Helpers for the sending tests: an aiosmtpd sink standing in for remote mail hosts, and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import sqlite3
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from agentmail import AgentMail
from agentmail.inboxes.types import CreateInboxRequest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from agentmx.testing import postgres
from agentmx.testing.certs import write_self_signed
from agentmx.testing.server import ServerProcess, free_port

T = TypeVar("T")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    mail_options: list[str] = dataclasses.field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


class SinkHandler:
    """Local parts decide the reply: ``bounce-*`` -> 550 at RCPT, ``soft<N>-*`` -> 451 for the first
    N attempts, then 250; ``full<N>-*`` -> 552 (too many recipients) likewise; ``datacmd-*`` -> 451 to
    the DATA command (``SinkSMTP``); ``dataperm-*`` -> 554 at end of DATA; ``slow<N>-*`` -> 250 after N
    seconds; anything else 250. ``refuse_mail``, while set, is the reply to every MAIL FROM. ``hold(address)``
    keeps the end of DATA for that recipient unanswered until the event it returns is set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.attempts: dict[str, int] = {}
        self.refuse_mail: str | None = None
        self.refuse_rcpt: str | None = None  # while set, the reply to every RCPT TO
        self.mail_commands = 0
        self.broken_starttls = ""  # "454": refused; "garbage": 220, then no TLS handshake
        self.holds: dict[str, threading.Event] = {}

    def hold(self, address: str) -> threading.Event:
        """Answer the DATA of mail to ``address`` only once the returned event is set."""
        gate = self.holds[address] = threading.Event()
        return gate

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        with self.lock:
            self.mail_commands += 1
        if self.refuse_mail:
            return self.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        local = address.split("@", 1)[0].lower()
        with self.lock:
            self.attempts[address] = self.attempts.get(address, 0) + 1
            count = self.attempts[address]
        if self.refuse_rcpt:
            return self.refuse_rcpt
        if local.startswith("bounce-"):
            return "550 5.1.1 No such user here"
        if local.startswith("soft"):
            limit = int(local[4 : local.index("-")] or 1)
            if count <= limit:
                return "451 4.3.0 Try again later"
        if local.startswith("full"):
            limit = int(local[4 : local.index("-")] or 1)
            if count <= limit:
                return "552 5.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        locals_ = [r.split("@")[0].lower() for r in envelope.rcpt_tos]
        if any(local.startswith("dataperm-") for local in locals_):
            return "554 5.6.0 Message refused"
        for rcpt, local in zip(envelope.rcpt_tos, locals_, strict=True):
            if local.startswith("drop") and self.attempts[rcpt] <= int(local[4 : local.index("-")] or 1):
                server.transport.close()  # the connection dies in the middle of the transaction
                return "451 4.4.2 Connection dropped"
        for local in locals_:
            if local.startswith("slow"):
                await asyncio.sleep(float(local[4 : local.index("-")]))
        for rcpt in envelope.rcpt_tos:
            gate = self.holds.get(rcpt)
            while gate is not None and not gate.is_set():
                await asyncio.sleep(0.05)
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    list(envelope.mail_options),
                )
            )
        return "250 2.0.0 Queued"

    def for_rcpt(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.rcpt_tos]


class SinkSMTP(SMTP):
    """Refuses the DATA command for ``datacmd-*`` recipients and keeps the transaction open, as
    Postfix does: the client must RSET before its next MAIL ("503 nested MAIL command")."""

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd command name)
        rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
        if any(r.split("@")[0].lower().startswith("datacmd-") for r in rcpts):
            await self.push("451 4.7.1 Data command rejected")
            return
        await super().smtp_DATA(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802
        broken = self.event_handler.broken_starttls
        if broken == "454":
            await self.push("454 4.7.0 TLS not available due to temporary reason")
        elif broken == "garbage":  # the client's handshake reads this: not TLS
            await self.push("220 Ready to start TLS")
            assert self.transport is not None
            self.transport.write(b"this is no TLS server hello\r\n" * 20)
            self.transport.close()
        else:
            await super().smtp_STARTTLS(arg)


class SinkController(Controller):
    def factory(self) -> SMTP:
        return SinkSMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    """``tls_auth=(user, password)`` makes it a relay that requires STARTTLS and AUTH; ``broken_starttls``
    (see SinkHandler) an MX host that offers STARTTLS and fails it; ``smtputf8`` offers SMTPUTF8; ``host`` and
    ``port`` place it (several MX hosts share the one outbound port, each on its own loopback address)."""

    def __init__(
        self,
        tls_auth: tuple[str, str] | None = None,
        broken_starttls: str = "",
        smtputf8: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.handler = SinkHandler()
        self.handler.broken_starttls = broken_starttls
        self.host = host
        self.port = port or free_port()
        self.logins: list[str] = []
        kwargs: dict[str, Any] = {"enable_SMTPUTF8": smtputf8}
        if broken_starttls:
            cert, key = self_signed_cert(Path(tempfile.mkdtemp()), "mx.test")
            kwargs["tls_context"] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            kwargs["tls_context"].load_cert_chain(cert, key)
        self.certificate = Path()  # with tls_auth: the relay's self-signed certificate, to trust
        if tls_auth is not None:
            self.certificate, key = self_signed_cert(Path(tempfile.mkdtemp()), "relay.test")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.certificate, key)
            kwargs |= {
                "tls_context": context,
                "require_starttls": True,
                "auth_required": True,
                "auth_require_tls": True,
                "authenticator": self._authenticator(*tls_auth),
            }
        self.controller = SinkController(self.handler, hostname=host, port=self.port, **kwargs)

    def _authenticator(self, user: str, password: str) -> Callable[..., AuthResult]:
        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == user
                and data.password.decode() == password
            )
            if ok:
                self.logins.append(user)
            return AuthResult(success=ok)

        return check

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller._thread is not None:  # started
            self.controller.stop()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def relaying_server(
    tmp: Path, backend: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServerProcess, Sink]]:
    """A started server whose outbound mail all goes to a new Sink (retries after 0.5 s); both stopped after."""
    from conftest import make_server  # noqa: PLC0415 (conftest imports nothing from here)

    sink = Sink().start()
    env = {"AGENTMX_SMTP_RELAY": sink.address, "AGENTMX_OUTBOUND_RETRY_SCHEDULE": "0.5", **(env or {})}
    server, url = make_server(tmp, backend, env)
    try:
        server.start()
        yield server, sink
    finally:
        server.stop()
        sink.stop()
        if url:
            postgres.drop_database(url)


def self_signed_cert(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` signed by itself (the default trust store rejects it): cert and key paths."""
    write_self_signed(folder, host)
    return folder / "cert.pem", folder / "key.pem"


def new_inbox(client: AgentMail, prefix: str = "s", display_name: str | None = None) -> str:
    request = CreateInboxRequest(username=prefix + secrets.token_hex(5), display_name=display_name)
    return client.inboxes.create(request=request).inbox_id


def ext(local: str = "") -> str:
    """A fresh external address (the ``.test`` TLD never resolves on the internet)."""
    return f"{local}{secrets.token_hex(4)}@remote.test"


def wait_for(fn: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


def events(server: ServerProcess, event_type: str) -> list[dict[str, Any]]:
    """Event bodies of one type from the server's durable event log (read straight from its database)."""
    if server.database_url:

        async def fetch() -> list[Any]:
            conn = await asyncpg.connect(server.database_url)
            try:
                rows = await conn.fetch(
                    "SELECT body FROM events WHERE event_type = $1 ORDER BY seq", event_type
                )
            finally:
                await conn.close()
            return [row["body"] for row in rows]

        bodies = asyncio.run(fetch())
    else:
        with sqlite3.connect(server.data_dir / "agentmx.db") as conn:
            bodies = [
                row[0]
                for row in conn.execute(
                    "SELECT body FROM events WHERE event_type = ? ORDER BY seq", (event_type,)
                )
            ]
    return [json.loads(b) if isinstance(b, str | bytes) else b for b in bodies]


def events_for(server: ServerProcess, event_type: str, key: str, message_id: str) -> list[dict[str, Any]]:
    return [e for e in events(server, event_type) if e[key]["message_id"] == message_id]
