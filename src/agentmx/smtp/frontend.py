"""``python -m agentmx.smtp.frontend``: an SMTP front-end process, started by the server.

It serves SMTP sessions on listening sockets the server process bound and handed over, checks
each message's sender (SPF, DKIM, DMARC: ``mail/sender_auth.py``) and parses it. The server
process checks each recipient and stores each message (``smtp/workers.py``), so a 250 still means
committed. With ``AGENTMX_SMTP_WORKERS`` set, the SMTP dialogue and the MIME parse, about a third
of a message's CPU, run on another core.

Arguments: the server's pid, the link socket's descriptor, the event loop (``event_loops.CHOICES``),
then the listening sockets' descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from agentmx import event_loops, log_setup, long_lived_heap
from agentmx.mail import sender_auth
from agentmx.mail.parse import parse_off_loop
from agentmx.services import hop_limit
from agentmx.smtp import link
from agentmx.smtp.data import body_of
from agentmx.smtp.front_settings import FrontEndSettings, SmtpSettings
from agentmx.smtp.limits import MAX_RECIPIENTS, HookNames
from agentmx.smtp.link import LinkClosed, Prepared, RcptReply
from agentmx.smtp.listener import listen
from agentmx.smtp.replies import S250_OK, S451_TEMP_FAILURE, S452_TOO_MANY_RECIPIENTS, S550_DMARC
from agentmx.smtp.tls import describe
from agentmx.smtp.trace import trace_headers

log = logging.getLogger("agentmx.smtp")

PR_SET_PDEATHSIG = 1
FRAME_LIMIT = 1 << 20  # settings and replies
MAX_CACHED = 10_000  # recipients, as the server's ingest cache


class RcptCache:
    """The server's ingest cache (services/ingest_cache), mirrored for RCPT: the answers that
    accept a recipient, for half its seconds, all dropped whenever the server drops its own.

    So a front end answers RCPT as the server would without asking it each time: a round trip
    that waited behind the server's batch of inserts cost about a tenth of the message rate.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.generation = 0  # bumped by clear(): an answer asked for before it is not kept
        self._entries: dict[str, tuple[float, RcptReply]] = {}

    def get(self, address: str) -> RcptReply | None:
        entry = self._entries.get(address.strip().lower())
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, address: str, answer: RcptReply, generation: int) -> None:
        if answer.reply != S250_OK or generation != self.generation:
            return
        if len(self._entries) >= MAX_CACHED:
            self._entries.clear()
        self._entries[address.strip().lower()] = (time.monotonic(), answer)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()


class LinkClient:
    """Requests to the server process over the link; each waits for its own reply.

    The server also sends ``("clear",)`` when its ingest cache is cleared.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_clear: Callable[[], None]
    ) -> None:
        self._on_clear = on_clear
        self._reader = reader
        self._writer = writer
        self._outbox = link.Outbox(writer)
        self._loop = asyncio.get_running_loop()  # each lookup of the running loop is a getpid() call
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read_replies(), name="smtp-link")

    async def call(self, kind: str, *args: Any, frame_limit: int = 0, large: bool = False) -> Any:
        """Send a request and wait for its reply. Past ``frame_limit`` bytes the last argument,
        which must be optional for the server, goes as None. ``large``: a frame of a large message,
        encoded once the link has sent the previous large one (``Outbox.send_large``)."""
        if self.closed.is_set():
            raise LinkClosed("SMTP link closed")
        request = (kind, next(self._ids), *args)
        request_id = request[1]
        reply = self._pending[request_id] = self._loop.create_future()
        try:
            if large:
                await self._outbox.send_large(lambda: _body_within(request, frame_limit))
            else:
                self._outbox.send(link.framed(_body_within(request, frame_limit)))
                await self._writer.drain()  # waits while earlier frames fill the socket's buffer
            return await reply
        except ConnectionError as exc:
            raise LinkClosed("SMTP link closed") from exc
        finally:
            self._pending.pop(request_id, None)
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()  # retrieved: the caller got LinkClosed either way

    async def _read_replies(self) -> None:
        try:
            while True:
                frame = await link.read(self._reader, FRAME_LIMIT)
                if frame == ("clear",):
                    self._on_clear()
                    continue
                request_id, reply = frame
                waiting = self._pending.get(request_id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(reply)
        except LinkClosed:
            pass
        finally:
            self.closed.set()
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(LinkClosed("SMTP link closed"))


def _body_within(request: tuple[Any, ...], frame_limit: int) -> bytes:
    body = link.encode_body(request)
    if frame_limit and link.HEADER.size + len(body) > frame_limit:
        body = link.encode_body((*request[:-1], None))
    return body


class ForwardingHandler(HookNames):
    """aiosmtpd handler: the rules run in the server process (``smtp/handler.py``)."""

    def __init__(self, client: LinkClient, cache: RcptCache, settings: SmtpSettings) -> None:
        self.client = client
        self.cache = cache
        self.settings = settings
        self.hostname = settings.hostname
        self.frame_limit = link.max_frame(settings.smtp_max_message_size)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd hook name)
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return S452_TOO_MANY_RECIPIENTS
        answer = self.cache.get(address)
        if answer is None:
            generation = self.cache.generation
            try:
                answer = await self.client.call("rcpt", address, len(envelope.rcpt_tos))
            except LinkClosed:
                return S451_TEMP_FAILURE
            self.cache.put(address, answer, generation)
        if answer.reply == S250_OK:
            envelope.rcpt_tos.append(address)
            if answer.return_path:
                envelope.agentmx_return_paths = {*getattr(envelope, "agentmx_return_paths", ()), address}
        return answer.reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw = body_of(envelope)
        mail_from = envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        return_paths: set[str] = getattr(envelope, "agentmx_return_paths", set())
        local = [rcpt for rcpt in rcpt_tos if rcpt not in return_paths]
        prepared = None
        tls = describe(session)
        # What the server would do first, done here: the sender checks, the trace fields, the parse. A
        # message in a mail loop goes without: the server refuses it before any of that (hop_limit).
        if local and not hop_limit.exceeded(self.settings, raw, added=1):
            checked = await sender_auth.check(self.settings, raw, mail_from, session.host_name, session.peer)
            if checked.refused:
                return S550_DMARC
            raw = checked.raw
            trace = trace_headers(mail_from, session.host_name, session.peer, self.hostname, local, tls)
            trace += checked.field
            prepared = Prepared(local, trace, await parse_off_loop(raw, head=trace), checked.verdict)
        try:
            # A big message whose parse would not fit a frame goes without it: the server parses.
            reply: str = await self.client.call(
                "data",
                raw,
                mail_from,
                rcpt_tos,
                session.host_name,
                session.peer,
                tls,
                prepared,
                frame_limit=self.frame_limit,
                large=len(raw) > link.LARGE_MESSAGE_BYTES,
            )
        except LinkClosed:  # nothing is known to be stored: the client keeps custody
            return S451_TEMP_FAILURE
        return reply


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM when the server process dies, however it dies (the link's EOF says so too)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


async def serve(link_fd: int, listen_fds: list[int]) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=link_fd))
    first = await link.read(reader, FRAME_LIMIT)
    _, values, share, cache_ttl = first
    settings = FrontEndSettings.of(values)
    log_setup.configure(settings.log_level)
    # Half the server's lifetime: an answer may come from a server entry that is nearly as old.
    cache = RcptCache(cache_ttl / 2)
    client = LinkClient(reader, writer, cache.clear)
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    stop = await listen(ForwardingHandler(client, cache, settings), settings, sockets, share)
    writer.write(link.encode(("ready",)))
    long_lived_heap.settle()  # a full collection walked the start-up heap every second or two (~25 ms)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    closed = asyncio.create_task(client.closed.wait())
    asked = asyncio.create_task(stopping.wait())
    await asyncio.wait([closed, asked], return_when=asyncio.FIRST_COMPLETED)
    await stop()
    writer.close()


def main(argv: list[str]) -> None:
    parent_pid, link_fd, loop, *listen_fds = argv
    if loop not in event_loops.CHOICES:
        raise SystemExit(f"event loop {loop!r} is not one of {event_loops.CHOICES}")
    # Ctrl-C and a closed terminal's SIGHUP reach the whole process group: the server stops its
    # front ends itself (SIGTERM), once the sessions storing a message have their reply.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(int(parent_pid))
    with asyncio.Runner(loop_factory=event_loops.factory(cast(event_loops.Choice, loop))) as runner:
        runner.run(serve(int(link_fd), [int(fd) for fd in listen_fds]))


if __name__ == "__main__":
    main(sys.argv[1:])
