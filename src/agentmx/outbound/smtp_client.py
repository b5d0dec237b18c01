"""SMTP transactions to one host over one connection: per-recipient replies, or an exception when the host
is unusable."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import cast

import aiosmtplib

TIMEOUT = 60.0
# Seconds to wait for the reply to QUIT. Every reply that matters is in by then; a host that went
# silent held the job's slot for the whole command timeout (Postfix skips the wait: smtp_skip_quit_response).
QUIT_TIMEOUT = 2.0
# Seconds a closed TLS session waits for the host's close_notify before its socket is cut. A host
# that vanished sends none: asyncio's default wait of 30 s held the socket.
TLS_SHUTDOWN_TIMEOUT = 1.0
_LINE_BREAK = re.compile(rb"\r\n|\n|\r(?!\n)")  # as aiosmtplib finds them when it sends DATA


def wire_form(raw: bytes) -> bytes:
    """``raw`` as the SMTP client puts it on the wire: every line break CRLF. A DKIM signature must be
    made over these bytes: made over a bare CR (a submission client's), it failed at the receiver."""
    return _LINE_BREAK.sub(b"\r\n", raw)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str
    tried: bool = True  # False: never sent (the connection was lost before its turn)
    # False: a refusal of the message, not of the address (which RCPT accepted): too large, its
    # content or a policy. Such a bounce must not suppress the address for every later message.
    about_address: bool = True

    @property
    def ok(self) -> bool:
        return _positive(self.code)

    @property
    def permanent(self) -> bool:
        # Codes begin with 2 to 5 (RFC 5321 4.2.1): a 999 says nothing understood, so it is retried,
        # never a bounce that suppresses the address.
        return 500 <= self.code < 600


def _positive(code: int) -> bool:
    """A 2yz: positive completion, whichever (RFC 5321 4.2.1). aiosmtplib takes 250 alone at MAIL
    and 250 / 251 at RCPT, and raises for the rest."""
    return 200 <= code < 300


def _status_class(text: str) -> str:
    """The subject digit of the reply's enhanced status code (RFC 3463: "5.7.1" -> "7"), or ""."""
    status = text.lstrip()
    return status[2] if len(status) > 3 and status[1] == "." and status[3] == "." else ""


class HostUnusable(Exception):
    """Connection, TLS, login or greeting failure before any transaction began: try the next host."""


@dataclass(frozen=True)
class Connection:
    address: str
    port: int
    server_name: str
    helo: str
    starttls: str = "opportunistic"  # "never" | "opportunistic" | "required"
    username: str = ""
    password: str = ""
    timeout: float = TIMEOUT
    verify: bool = False  # check the certificate and that it names server_name (a relay; MX hosts: RFC 7435)
    ca_file: str = ""  # PEM trust anchors besides the system's, when verifying


async def _connect(conn: Connection) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=conn.address,
        port=conn.port,
        local_hostname=conn.helo,
        timeout=conn.timeout,
        use_tls=False,
        start_tls=False,
        validate_certs=False,
    )
    await client.connect()
    try:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError as exc:
            if not 500 <= exc.code < 600:
                raise
            # A server that does not know EHLO is sent HELO (RFC 5321 3.2), as Postfix does: no
            # extensions, so neither STARTTLS nor 8BITMIME.
            await client.helo()
    except BaseException:
        _close(client)
        raise
    return client


async def _open(conn: Connection) -> aiosmtplib.SMTP:
    client = await _connect(conn)
    try:
        if conn.starttls != "never" and client.supports_extension("starttls"):
            try:
                # MTA-to-MTA TLS is opportunistic: certificates are not checked (RFC 7435). A relay we log
                # in to is checked, or a man in the middle would read the password.
                await client.starttls(
                    server_hostname=conn.server_name,
                    validate_certs=conn.verify,
                    cert_bundle=conn.ca_file or None,
                )
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                if conn.starttls == "required":
                    raise
                # Opportunistic TLS that fails falls back to plain text (RFC 7435, Postfix's "may"), on a
                # new connection: after a failed handshake the old one is in no known state.
                _close(client)
                client = await _connect(conn)
        elif conn.starttls == "required":
            raise HostUnusable("server does not offer STARTTLS")
        if conn.username:
            await client.login(conn.username, conn.password)
    except BaseException:
        # Refused (EHLO, no STARTTLS, a failed handshake, a refused login): closed, not left open
        # until the host drops it.
        _close(client)
        raise
    return client


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt: str


async def _transaction(client: aiosmtplib.SMTP, envelope: Envelope, raw: bytes) -> Reply:
    """MAIL, RCPT and DATA for one recipient: its final reply."""
    utf8 = not (envelope.mail_from.isascii() and envelope.rcpt.isascii())
    if utf8 and not client.supports_extension("smtputf8"):
        # Nothing sent: a non-ASCII address cannot go on the wire without SMTPUTF8 (RFC 6531 3.2).
        # A non-ASCII sender is not the recipient's fault (see MAIL below): retried, not bounced.
        code = 553 if envelope.mail_from.isascii() else 451
        return Reply(code, f"{code // 100}.6.7 non-ASCII address; the server does not support SMTPUTF8")
    encoding = "utf-8" if utf8 else "ascii"
    options = ["SMTPUTF8"] if utf8 else []
    if not raw.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")  # 8-bit data only so declared (RFC 6152 3), as submitted
    try:
        await client.mail(envelope.mail_from, options=options, encoding=encoding)
    except aiosmtplib.SMTPResponseException as exc:
        if not _positive(exc.code):
            # A refused sender (a relay wanting a login, a sender or relaying policy) says nothing about
            # the recipient: a bounce would suppress it. Retried until the message's lifetime.
            code = exc.code if 400 <= exc.code < 500 else 451
            return Reply(code, f"MAIL FROM refused: {exc.code} {exc.message}")
    try:
        await client.rcpt(envelope.rcpt, encoding=encoding)
    except aiosmtplib.SMTPResponseException as exc:
        if not _positive(exc.code):
            # "Too many recipients" is temporary whatever its code (RFC 5321 4.5.3.1.10). A policy
            # status (X.7.Y: relaying denied, our address blocklisted) refuses the sender, not the address.
            code = 452 if exc.code == 552 else exc.code
            return Reply(code, exc.message, about_address=_status_class(exc.message) != "7")
    try:
        response = await client.data(raw)
    except aiosmtplib.SMTPResponseException as exc:
        if _positive(exc.code):
            # aiosmtplib raises a 2yz to the DATA command (where 354 must come: the message was never
            # sent) and a 2yz but 250 after the message alike. Retried: a duplicate rather than a loss.
            return Reply(451, f"4.5.0 unexpected reply to DATA: {exc.code} {exc.message}")
        # Only an addressing status (X.1.Y, RFC 3463) blames the recipient this late.
        return Reply(exc.code, exc.message, about_address=_status_class(exc.message) == "1")
    return Reply(response.code, response.message)


async def send(conn: Connection, envelopes: list[Envelope], raw: bytes) -> dict[str, Reply]:
    """One transaction per envelope over one connection; the final reply per recipient."""
    try:
        client = await _open(conn)
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise HostUnusable(f"{conn.server_name} ({conn.address}:{conn.port}): {exc}") from exc
    transport = client.transport  # kept: aiosmtplib lets go of it when a command times out or fails
    replies: dict[str, Reply] = {}
    try:
        for envelope in envelopes:
            reply = replies[envelope.rcpt] = await _transaction(client, envelope, raw)
            if not reply.ok:
                # Whatever was refused (MAIL, RCPT, the DATA command or the message), a server may
                # hold the transaction open; the next MAIL would be a "nested MAIL command" (503).
                await client.rset()
        return replies
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        # Lost the connection during the transactions: the unanswered recipients are retried. Only the
        # one in progress was tried: the others go first next time (delivery orders recipients by
        # attempts), so a host that drops one recipient's transaction cannot starve the rest.
        lost = {e.rcpt: replies.get(e.rcpt) for e in envelopes}
        in_progress = next((rcpt for rcpt, reply in lost.items() if reply is None), None)
        return {
            rcpt: reply or Reply(451, f"connection lost: {exc}", tried=rcpt == in_progress)
            for rcpt, reply in lost.items()
        }
    finally:
        try:
            await client.quit(timeout=min(conn.timeout, QUIT_TIMEOUT))
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            client.close()
        _cut_tls_later(transport)


def _close(client: aiosmtplib.SMTP) -> None:
    transport = client.transport
    client.close()
    _cut_tls_later(transport)


def _cut_tls_later(transport: asyncio.BaseTransport | None) -> None:
    """A closing TLS session waits for the host's close_notify: not for longer than TLS_SHUTDOWN_TIMEOUT.

    aiosmtplib's STARTTLS takes no ssl_shutdown_timeout; aborting a transport already closed does nothing.
    """
    if transport is not None and transport.get_extra_info("sslcontext") is not None:
        # A cast, not isinstance: uvloop's transports are not asyncio.Transport subclasses.
        asyncio.get_running_loop().call_later(TLS_SHUTDOWN_TIMEOUT, cast(asyncio.Transport, transport).abort)
