"""SMTP front-end processes (``AGENTMX_SMTP_WORKERS``): started, answered and restarted by the server.

The server binds the SMTP port and hands the listening sockets to each front end
(``smtp/frontend.py``), which serves the sessions and parses the mail. Every RCPT and every
message comes back over the front end's link to be checked and stored here, by the same code
that serves in-process sessions (``smtp/handler.py``): one database owner, one set of rules.

A front end that dies is started again; its clients lose their sessions without a 250, so they
keep custody and retry. Front ends die with the server (the link's end of file, and on Linux a
parent-death signal), so a restarted server finds the port free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from agentmx import event_loops
from agentmx.bind import bound_sockets
from agentmx.services.runtime import Runtime
from agentmx.smtp import link
from agentmx.smtp.handler import accept_data, check_rcpt
from agentmx.smtp.link import LinkClosed, RcptReply
from agentmx.smtp.replies import S451_TEMP_FAILURE

log = logging.getLogger("agentmx.smtp")

START_TIMEOUT = 30.0  # seconds for a front end to import and listen
STOP_TIMEOUT = 15.0  # seconds for a front end to exit on SIGTERM (listener.STOP_GRACE, and some)
RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)  # seconds before restarting a front end that died, by streak
STEADY = 60.0  # seconds a front end must live for its restart streak to reset
CLEAN_EXIT_GRACE = 2.0  # seconds a front end's clean exit waits for this server's own stop
CLEAR = link.encode(("clear",))


class FrontEnd:
    """One front-end process: spawned, its link served, started again when it dies."""

    def __init__(self, rt: Runtime, sockets: list[socket.socket], share: int, index: int) -> None:
        self.rt = rt
        self.sockets = sockets
        self.share = share
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self._answers: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._max_frame = link.max_frame(rt.settings.smtp_max_message_size)
        self._outbox: link.Outbox | None = None  # the live link's frames, a turn's in one write

    async def start(self) -> None:
        """Spawn the process and wait until it listens; raises if it cannot."""
        reader, writer = await self._spawn()
        self._task = asyncio.create_task(self._run(reader, writer), name=f"smtp-frontend-{self.index}")

    async def _spawn(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ours, theirs = socket.socketpair()
        fds = [sock.fileno() for sock in self.sockets]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentmx.smtp.frontend",
                str(os.getpid()),
                str(theirs.fileno()),
                self.rt.settings.smtp_frontend_loop,
                *(str(fd) for fd in fds),
                pass_fds=[theirs.fileno(), *fds],
                stdin=asyncio.subprocess.DEVNULL,
                env=_environment(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        writer.write(link.encode(("settings", _settings_for(self.rt), self.share, self.rt.ingest_cache.ttl)))
        try:
            ready = await asyncio.wait_for(link.read(reader, self._max_frame), START_TIMEOUT)
            if ready != ("ready",):
                raise LinkClosed(f"{ready[:1]!r} instead of ready")
        except (TimeoutError, LinkClosed) as exc:
            writer.close()
            self._terminate()
            await self._reap()
            raise RuntimeError(f"SMTP front end {self.index} did not start: {exc}") from exc
        log.info("smtp front end %d (pid %d) listening", self.index, self.proc.pid)
        self._outbox = link.Outbox(writer)
        return reader, writer

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rt.ingest_cache.on_clear.append(self._clear)
        try:
            await self._serve_and_restart(reader, writer)
        finally:
            self.rt.ingest_cache.on_clear.remove(self._clear)

    def _clear(self) -> None:
        """The front end keeps a copy of the ingest cache's RCPT answers: clear it too."""
        if self._outbox is not None:
            self._outbox.send(CLEAR)

    async def _serve_and_restart(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        streak = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._serve(reader, writer)
            code = await self._reap()
            # A front end exits 0 only on SIGTERM: from this server, or sent to the whole process
            # group or cgroup (systemctl stop), which stops this server a moment later: no restart.
            if self._stopping.is_set() or (code == 0 and await self._stopped_within(CLEAN_EXIT_GRACE)):
                return
            streak = 0 if loop.time() - started > STEADY else streak + 1
            log.error("smtp front end %d exited (code %s): starting it again", self.index, code)
            while True:
                if await self._stopped_within(_backoff(streak)):
                    return
                try:
                    reader, writer = await self._spawn()
                    break
                except Exception:
                    log.exception("smtp front end %d failed to start", self.index)
                    streak += 1
            if self._stopping.is_set():  # stop() came while it started: it must not serve
                writer.close()
                self._terminate()
                await self._reap()
                return

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the front end's requests, each in its own task, until its link closes."""
        outbox = self._outbox  # this link's (_spawn): a late answer must not go to the next one
        assert outbox is not None
        try:
            while True:
                request = await link.read(reader, self._max_frame)
                task = asyncio.create_task(self._answer(outbox, request))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)
        except LinkClosed as exc:
            if not self._stopping.is_set() and str(exc) != "SMTP link closed":
                log.error("smtp front end %d: %s", self.index, exc)
        finally:
            writer.close()

    async def _answer(self, outbox: link.Outbox, request: tuple[Any, ...]) -> None:
        kind, request_id = request[0], request[1] if len(request) > 1 else None
        reply: Any
        try:
            if kind == "rcpt":
                reply = await check_rcpt(self.rt, *request[2:])
            elif kind == "data":
                reply = await accept_data(self.rt, *request[2:])
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception:  # a front end out of step with this server: its session fails, not ours
            log.exception("smtp front end %d: request %r failed", self.index, kind)
            reply = RcptReply(S451_TEMP_FAILURE) if kind == "rcpt" else S451_TEMP_FAILURE
        outbox.send(link.encode((request_id, reply)))  # dropped once the link is closing

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    async def _reap(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            try:
                return await asyncio.wait_for(asyncio.shield(self.proc.wait()), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
        return await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM: the front end stops accepting, lets sessions storing a message finish, and exits."""
        self._stopping.set()
        self._terminate()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT + 1)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._terminate()  # one that started while stopping
        await self._reap()
        for task in list(self._answers):  # the front end is gone: nobody waits for these replies
            task.cancel()


def _backoff(streak: int) -> float:
    """Seconds before restarting a front end that died ``streak`` times in a row (0: at once)."""
    return RESTART_BACKOFF[min(streak, len(RESTART_BACKOFF)) - 1] if streak else 0.0


# What a front end needs of the settings: its limits and names, not the database or any secret.
_FRONT_END_SETTINGS = (
    "host",
    "domain",
    "public_host",
    "log_level",
    "http_max_connections",
    "dns_resolver",
    "inbound_sender_checks",
    "inbound_dmarc_policy",
    "inbound_dnsbl",
)


def _settings_for(rt: Runtime) -> dict[str, Any]:
    values = rt.settings.model_dump(mode="json")
    return {
        name: value
        for name, value in values.items()
        if (name.startswith("smtp_") and not name.startswith("smtp_relay")) or name in _FRONT_END_SETTINGS
    }


def _environment() -> dict[str, str]:
    """The front end's environment: ours without AGENTMX_* (its settings come over the link)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("AGENTMX_")}


async def start(rt: Runtime, count: int) -> Callable[[], Awaitable[None]]:
    """Bind the SMTP port here and serve it from ``count`` front-end processes."""
    settings = rt.settings
    try:  # here, with its own message, rather than as front ends that never say they are ready
        event_loops.factory(settings.smtp_frontend_loop)
    except ImportError as exc:
        raise RuntimeError("AGENTMX_SMTP_FRONTEND_LOOP=uvloop, but uvloop cannot be imported") from exc
    # Bound, never served here: the front ends accept. Kept open so a restarted front end gets them.
    sockets = await bound_sockets(settings.effective_smtp_host, settings.smtp_port, "SMTP")
    front_ends = [FrontEnd(rt, sockets, count, i) for i in range(count)]
    try:
        for front_end in front_ends:
            await front_end.start()
    except BaseException:
        await asyncio.gather(*(f.stop() for f in front_ends), return_exceptions=True)
        for sock in sockets:
            sock.close()
        raise
    noun = "process" if count == 1 else "processes"
    log.info(
        "smtp listening on %s:%s (%d front-end %s)",
        settings.effective_smtp_host,
        settings.smtp_port,
        count,
        noun,
    )

    async def stop() -> None:
        await asyncio.gather(*(f.stop() for f in front_ends), return_exceptions=True)
        for sock in sockets:
            sock.close()

    return stop
