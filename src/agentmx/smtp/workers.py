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

from agentmx.services.runtime import Runtime
from agentmx.smtp import link
from agentmx.smtp.handler import accept_data, check_rcpt
from agentmx.smtp.link import LinkClosed, RcptReply
from agentmx.smtp.replies import S451_TEMP_FAILURE

log = logging.getLogger("agentmx.smtp")

START_TIMEOUT = 30.0  # seconds for a front end to import and listen
STOP_TIMEOUT = 10.0  # seconds for a front end to close its sessions on SIGTERM
RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)  # seconds before restarting a front end that died, by streak
STEADY = 60.0  # seconds a front end must live for its restart streak to reset
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
        self._stopping = False
        self._max_frame = link.max_frame(rt.settings.smtp_max_message_size)
        self._writer: asyncio.StreamWriter | None = None  # the live link's

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
                *(str(fd) for fd in fds),
                pass_fds=[theirs.fileno(), *fds],
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        settings = self.rt.settings.model_dump(mode="json")
        writer.write(link.encode(("settings", settings, self.share, self.rt.ingest_cache.ttl)))
        try:
            ready = await asyncio.wait_for(link.read(reader, self._max_frame), START_TIMEOUT)
        except (TimeoutError, LinkClosed) as exc:
            writer.close()
            await self._reap()
            raise RuntimeError(f"SMTP front end {self.index} did not start: {exc}") from exc
        if ready != ("ready",):
            writer.close()
            await self._reap()
            raise RuntimeError(f"SMTP front end {self.index} sent {ready[:1]!r} instead of ready")
        log.info("smtp front end %d (pid %d) listening", self.index, self.proc.pid)
        self._writer = writer
        return reader, writer

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rt.ingest_cache.on_clear.append(self._clear)
        try:
            await self._serve_and_restart(reader, writer)
        finally:
            self.rt.ingest_cache.on_clear.remove(self._clear)

    def _clear(self) -> None:
        """The front end keeps a copy of the ingest cache's RCPT answers: clear it too."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(CLEAR)

    async def _serve_and_restart(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        streak = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._serve(reader, writer)
            code = await self._reap()
            if self._stopping:
                return
            streak = 0 if loop.time() - started > STEADY else streak + 1
            delay = RESTART_BACKOFF[min(streak, len(RESTART_BACKOFF)) - 1] if streak else 0
            log.error("smtp front end %d exited (code %s): starting it again in %ss", self.index, code, delay)
            while True:
                await asyncio.sleep(delay)
                try:
                    reader, writer = await self._spawn()
                    break
                except Exception:
                    log.exception("smtp front end %d failed to start", self.index)
                    streak += 1
                    delay = RESTART_BACKOFF[min(streak, len(RESTART_BACKOFF)) - 1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the front end's requests, each in its own task, until its link closes."""
        try:
            while True:
                request = await link.read(reader, self._max_frame)
                task = asyncio.create_task(self._answer(writer, request))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)
        except LinkClosed as exc:
            if not self._stopping and str(exc) != "SMTP link closed":
                log.error("smtp front end %d: %s", self.index, exc)
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, request: tuple[Any, ...]) -> None:
        kind, request_id, *args = request
        reply: Any
        try:
            if kind == "rcpt":
                reply = await check_rcpt(self.rt, *args)
            elif kind == "data":
                reply = await accept_data(self.rt, *args)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception:  # a front end out of step with this server: its session fails, not ours
            log.exception("smtp front end %d: request %r failed", self.index, kind)
            reply = S451_TEMP_FAILURE if kind == "data" else RcptReply(S451_TEMP_FAILURE)
        if not writer.is_closing():
            writer.write(link.encode((request_id, reply)))

    async def _reap(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            try:
                return await asyncio.wait_for(asyncio.shield(self.proc.wait()), STOP_TIMEOUT)
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT + 1)
            self._task.cancel()
        await self._reap()
        for task in list(self._answers):
            task.cancel()


async def start(rt: Runtime, count: int) -> Callable[[], Awaitable[None]]:
    """Bind the SMTP port here and serve it from ``count`` front-end processes."""
    settings = rt.settings
    loop = asyncio.get_running_loop()
    # Bound, never served here: the front ends accept. Kept open so a restarted front end gets them.
    bound = await loop.create_server(
        asyncio.Protocol, host=settings.host, port=settings.smtp_port, start_serving=False
    )
    sockets = [socket.socket(fileno=os.dup(s.fileno())) for s in bound.sockets]
    front_ends = [FrontEnd(rt, sockets, count, i) for i in range(count)]
    try:
        for front_end in front_ends:
            await front_end.start()
    except BaseException:
        await asyncio.gather(*(f.stop() for f in front_ends), return_exceptions=True)
        bound.close()
        for sock in sockets:
            sock.close()
        raise
    log.info("smtp listening on %s:%s (%d front-end processes)", settings.host, settings.smtp_port, count)

    async def stop() -> None:
        await asyncio.gather(*(f.stop() for f in front_ends), return_exceptions=True)
        bound.close()
        for sock in sockets:
            sock.close()

    return stop
