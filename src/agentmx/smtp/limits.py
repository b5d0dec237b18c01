"""Connection caps for the SMTP listener (Postfix: smtpd_client_connection_count_limit = 50), fair at the cap."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import MISSING, SMTP, TLSSetupException, syntax
from aiosmtpd.smtp import log as aiosmtpd_log

from agentmx.client_address import address_group
from agentmx.smtp.data import read_data
from agentmx.smtp.replies import (
    GREETING,
    S421_TIMEOUT,
    S421_TLS_FAILED,
    S421_TOO_MANY_CONNECTIONS,
    S421_TOO_MANY_ERRORS,
    S421_TOO_MANY_JUNK_COMMANDS,
    with_enhanced_code,
)
from agentmx.smtp.tls import SHUTDOWN_TIMEOUT

log = logging.getLogger("agentmx.smtp")

_UNLIMITED = 1 << 62
MAX_RECIPIENTS = 1000  # per transaction, Postfix's smtpd_recipient_limit


@dataclass
class ConnectionLimits:
    """Who is connected, by client IP (an IPv6 /64 as one). At the cap, newcomers from light IPs displace heavy IPs.

    A slowloris spread over a few dozen addresses can fill the whole cap; refusing every newcomer
    would then lock legitimate senders out until the stress reaper (smtp/stress.py) frees slots, and
    the attacker would take those back first. So a newcomer whose IP holds fewer connections than the
    heaviest IP takes the slot of that IP's most idle connection instead.
    """

    max_total: int
    max_per_ip: int
    live: set[LimitedSMTP] = field(default_factory=set)  # also read by the stress reaper
    by_ip: dict[str, set[LimitedSMTP]] = field(default_factory=dict)

    def add(self, conn: LimitedSMTP, ip: str) -> None:
        self.live.add(conn)
        self.by_ip.setdefault(ip, set()).add(conn)

    def remove(self, conn: LimitedSMTP, ip: str) -> None:
        self.live.discard(conn)
        peers = self.by_ip.get(ip)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self.by_ip[ip]

    def admit(self, ip: str) -> bool:
        """Whether a connection just added from ``ip`` may be served (else it gets 421)."""
        mine = len(self.by_ip.get(ip, ()))
        if mine > self.max_per_ip:
            return False
        if len(self.live) <= self.max_total:
            return True
        heavy_ip, heaviest = max(self.by_ip.items(), key=lambda item: len(item[1]))  # only at the cap
        if len(heaviest) <= mine:
            return False
        victim = min(heaviest, key=lambda conn: conn.last_command_at)
        victim.displace()
        self.remove(victim, heavy_ip)  # now, not at connection_lost: the next newcomer must not pick it again
        return True


def names_for_aiosmtpd(obj: object, prefixes: tuple[str, ...], leave_out: str = "") -> list[str]:
    """``dir(obj)`` as aiosmtpd needs it: only the names with these prefixes, listed once per class.

    On every connection aiosmtpd builds its command, hook and AUTH tables from dir() and
    inspect.getmembers() (which reads every attribute) of the protocol and of the handler.
    """
    cls = type(obj)
    names: list[str] | None = cls.__dict__.get("_aiosmtpd_names")
    if names is None:
        names = [n for n in object.__dir__(obj) if n.startswith(prefixes) and n != leave_out]
        cls._aiosmtpd_names = names  # type: ignore[attr-defined]
    return names


class HookNames:
    """Base of our aiosmtpd handlers: only the handle_/auth_ names for aiosmtpd's scan of them
    (a connection's set-up took 16 us instead of 27), and the EHLO answer's extensions."""

    offers_auth = False  # whether this listener logs anyone in (submission does; the MX port does not)

    def __dir__(self) -> list[str]:
        # Not handle_EHLO: aiosmtpd would read its signature on every connection (LimitedSMTP adds it).
        return names_for_aiosmtpd(self, ("handle_", "auth_"), leave_out="handle_EHLO")

    async def handle_EHLO(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """aiosmtpd's answer with PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034: LimitedSMTP.push)
        and, where nobody can log in, without AUTH.

        aiosmtpd reads each command off the stream in turn, so pipelined commands get their
        replies in order; senders such as Postfix then send MAIL, RCPT and DATA in one round trip.
        aiosmtpd offers AUTH after STARTTLS on every listener, but on the MX port it always failed,
        and a sender holding credentials may defer its mail after that failure.
        """
        session.host_name = hostname  # this hook's job once it exists (aiosmtpd's "new" EHLO hook)
        kept = [line for line in responses if self.offers_auth or not line.startswith("250-AUTH")]
        return [*kept[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", kept[-1]]


# <dot-atom@dot-atom>, then nothing or whitespace and a parameter: the form nearly every client
# sends. aiosmtpd's full RFC 5322 parse of it costs more than the rest of MAIL or RCPT.
_SIMPLE_PATH = re.compile(
    r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?:[ \t]+(?=[^\s(])|\Z)"
)


class LimitedSMTP(SMTP):
    """aiosmtpd's protocol, answering 421 and closing when the listener or the client IP is at its cap."""

    data_line_limit: int | None = None  # DATA lines of any length (smtp/data.py), as Postfix takes them
    # aiosmtpd makes it the session's StreamReader limit (its 1001 is RFC 5321's text line). The reader
    # pauses the socket above twice that, and readuntil gives up past it: a 4 KB body paused and resumed
    # the socket (two epoll_ctl calls) and took two reads and a LimitOverrunError. Commands keep their
    # own limits (command_size_limits: 500 "Command line too long", as before), DATA lines ours.
    line_length_limit = 64 * 1024

    def __dir__(self) -> list[str]:
        return names_for_aiosmtpd(self, ("smtp_", "auth_"))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        found = _SIMPLE_PATH.match(arg)
        if found is None or (self.local_part_limit and found.group(1).index("@") > self.local_part_limit):
            try:
                return super()._getaddr(arg)  # the general parser (and its error handling)
            except IndexError:
                # Python's parser on a path cut short ("<a@", "<"): malformed, as when it raises
                # HeaderParseError; aiosmtpd answered 500 with the exception and logged a traceback.
                return None, None
        return found.group(1), arg[found.end() :]

    def __init__(
        self, handler: Any, *, limits: ConnectionLimits, error_limit: int = 0, junk_limit: int = 0, **kw: Any
    ) -> None:
        self.last_command_at = 0.0  # loop time of the last completed command (or of the connect)
        self.storing = False  # between the end of DATA and its reply
        super().__init__(handler, **kw)
        if isinstance(handler, HookNames):
            # Its 5-argument EHLO hook, known without the inspect.signature aiosmtpd's __init__ would
            # build for it on every connection (5 us, a bound method's signature is made anew each time).
            self._handle_hooks["EHLO"], self._ehlo_hook_ver = handler.handle_EHLO, "new"
        self._limits = limits
        self._ip: str | None = None
        # Postfix's smtpd_hard_error_limit and smtpd_junk_command_limit: counted since the session's
        # last delivered message, so a long session that delivers mail is never cut off by them.
        self._error_limit = error_limit if error_limit > 0 else _UNLIMITED
        self._junk_limit = junk_limit if junk_limit > 0 else _UNLIMITED
        self._errors_left = self._error_limit
        self._junk_left = self._junk_limit
        self._held: list[bytes] = []  # a multi-line reply's continuation lines, not sent yet
        self._unsent: list[bytes] = []  # whole replies (with their CRLF) to write in one go (_send)
        self._answering: str | None = GREETING  # the command whose reply is next (its enhanced code)

    def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """aiosmtpd asks the handler before each reply that depends on it ("250 OK" to MAIL or RCPT):
        the command noted, for the reply's enhanced code. Returns aiosmtpd's coroutine, not one more."""
        self._answering = command
        return super()._call_handler_hook(command, *args)

    async def push(self, status: Any) -> None:
        """Every reply line, with its enhanced code (RFC 2034); permanent errors count against the
        session's error budget.

        Temporary ones do not: a 452 for recipients past the limit is how a pipelining client learns
        to send them in another transaction, and a 451 is our failure, not the client's.
        A multi-line reply's continuation lines ("250-SIZE …") go out with its last line, in one
        socket write: an EHLO answer was five writes, each a system call (with the peer's wake-up).
        Replies come as str but AUTH's 334 challenges (bytes), which take no code.
        """
        if isinstance(status, str):
            status = with_enhanced_code(status, self._answering)
        if status[3:4] in ("-", b"-"):
            self._held.append(self._encode(status))
            return
        self._answering = None  # its last line: the next reply answers a command not noted yet
        if self._held:
            lines, self._held = [*self._held, self._encode(status)], []
            await self._send(b"\r\n".join(lines))
        else:
            await self._send(self._encode(status))
        if status[:1] not in ("5", b"5"):
            return
        self._errors_left -= 1
        if self._errors_left <= 0:
            # Stops address harvesting through RCPT and clients stuck in a loop of refused commands.
            self.close_with(S421_TOO_MANY_ERRORS)

    async def _send(self, reply: bytes) -> None:
        """aiosmtpd's push of an encoded reply, but a 250 answering a command while the next ones
        are already in (a pipelining client: MAIL, RCPT, DATA sent at once) waits, within this
        turn of the event loop, to go out in one write with the replies after it.

        It never waits for input: it goes with the next reply written, or at the loop's next turn
        (_send_unsent), whichever is first. Only a 250: after it aiosmtpd closes nothing nor starts
        TLS without writing a reply first, and close_with sends it first.
        """
        aiosmtpd_log.debug("%r << %r", self.session.peer if self.session else None, reply)
        if reply[:3] == b"250" and self._reader._buffer:  # type: ignore[attr-defined]
            if not self._unsent:
                self.loop.call_soon(self._send_unsent)
            self._unsent.append(reply + b"\r\n")
        elif self._unsent:
            self._unsent.append(reply + b"\r\n")
            self._send_unsent()
        else:
            self._writer.write(reply + b"\r\n")
        await self._writer.drain()

    def _send_unsent(self) -> None:
        replies, self._unsent = self._unsent, []
        if replies and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(replies))

    def _encode(self, status: str | bytes) -> bytes:
        """As aiosmtpd's push encodes a reply line."""
        if isinstance(status, bytes):
            return status
        return status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")

    def _junk_exhausted(self) -> bool:
        """Counts a command that moves no mail; True (and the session closed) past the budget."""
        self._junk_left -= 1
        if self._junk_left >= 0:
            return False
        self.close_with(S421_TOO_MANY_JUNK_COMMANDS)
        return True

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802 (aiosmtpd command name)
        self._answering = "EHLO"  # RFC 2034 3: no enhanced code on any answer to it, "501 Syntax" too
        await super().smtp_EHLO(hostname)

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:  # noqa: N802
        self._answering = "HELO"
        await super().smtp_HELO(hostname)

    @syntax("NOOP [ignored]")  # HELP lists only commands that say their syntax
    async def smtp_NOOP(self, arg: str) -> None:  # noqa: N802 (aiosmtpd command name)
        if not self._junk_exhausted():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:  # noqa: N802
        if not self._junk_exhausted():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:  # noqa: N802
        if not self._junk_exhausted():
            await super().smtp_VRFY(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:  # noqa: N802
        if not self._junk_exhausted():
            await super().smtp_HELP(arg)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # Scanners and clients with no cipher in common fail here all day: one line, no traceback.
            # aiosmtpd closes the connection itself; this reply is never sent.
            peer = self.session.peer if self.session is not None else None
            log.info("%r STARTTLS handshake failed: %s", peer, error.__cause__)
            return S421_TLS_FAILED
        status: str = await super().handle_exception(error)
        return status

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd re-arms its timeout on connect and on each command: the reaper's clock too.
        self.last_command_at = self.loop.time()
        super()._reset_timeout(duration)

    def close_idle(self) -> None:
        """Closed by the stress reaper: tell the client why, as Postfix does."""
        self.close_with(S421_TIMEOUT)

    def displace(self) -> None:
        """Closed to make room for a client from a less crowded IP (ConnectionLimits.admit)."""
        self.close_with(S421_TOO_MANY_CONNECTIONS)

    def close_with(self, reply: str) -> None:
        # A cast, not isinstance: uvloop's transports are not asyncio.WriteTransport subclasses.
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is not None and not transport.is_closing():
            replies, self._unsent = self._unsent, []
            transport.write(b"".join([*replies, reply.encode() + b"\r\n"]))
            transport.close()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd command name)
        """aiosmtpd's DATA, reading the body with bounded memory (smtp/data.py)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = await read_data(self._reader, self.data_size_limit, self.data_line_limit)
        if body.error:
            self._set_post_data_state()
            await self.push(body.error)
            return
        self.envelope.content = self.envelope.original_content = body.content
        self._reset_timeout()  # the body is in: storing it is our time, not the client's
        self.storing = True  # until the reply is out: a stop waits for it (listener.py)
        try:
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            reply = "250 OK" if status is MISSING else status
            if reply.startswith("250"):
                self._errors_left, self._junk_left = self._error_limit, self._junk_limit
            await self.push(reply)
        finally:
            self.storing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._ip is None:  # not again after STARTTLS
            peer = transport.get_extra_info("peername")
            self._ip = address_group(str(peer[0])) if isinstance(peer, tuple) and peer else "unknown"
            self._limits.add(self, self._ip)
        elif self._tls_protocol is not None:  # after STARTTLS's handshake
            # aiosmtpd builds asyncio's SSLProtocol itself, with the default close_notify wait; the
            # protocol reads its timeout when the session closes (tests/test_smtp_tls_close.py).
            self._tls_protocol._ssl_shutdown_timeout = SHUTDOWN_TIMEOUT  # type: ignore[attr-defined]
        super().connection_made(transport)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 (aiosmtpd name)
        await super().smtp_STARTTLS(arg)
        if self._tls_protocol is not None and self.session is not None and self.session.ssl is None:
            # No handshake, yet no error: the command timeout closed the session mid-handshake (a
            # client silent after the 220). asyncio's SSLProtocol reports no lost connection to a
            # session it never connected, which then waited for a command for good, in its place
            # under the caps (tests/test_smtp_tls_close.py).
            self.connection_lost(None)

    def connection_lost(self, error: Exception | None) -> None:
        if self._ip is not None:
            self._limits.remove(self, self._ip)
            self._ip = None
        super().connection_lost(error)
        # Its task ends cancelled (QUIT cancels it too), and the CancelledError's frames hold this
        # session: a cycle through the task that only the garbage collector freed (_drop_cycles).
        self._handler_coroutine = None

    async def _handle_client(self) -> None:
        assert self._ip is not None
        try:
            if not self._limits.admit(self._ip):
                await self.push(S421_TOO_MANY_CONNECTIONS)
                if self.transport is not None:
                    self.transport.close()
                return
            await super()._handle_client()
        finally:
            self._drop_cycles()

    def _drop_cycles(self) -> None:
        """Once its commands are over, what points back at the session: aiosmtpd's tables of bound
        methods, its stream writer and asyncio's connect callback (used by connection_made, which a
        session sees again only after STARTTLS, and then without it). Left to the collector, ~45
        objects a session made a young collection every 16 messages or so, ~5 % of a front end's CPU.
        """
        self._smtp_methods, self._auth_methods, self._handle_hooks = {}, {}, {}
        self._writer = None  # type: ignore[assignment]
        self._client_connected_cb = None
