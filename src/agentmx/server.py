"""`agentmx serve`: the HTTP API, the SMTP listener, the job runner and event streams in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from agentmx import event_loops, features, log_setup, long_lived_heap
from agentmx.bind import bound_sockets
from agentmx.blobs import BlobStore
from agentmx.db.engine import Database
from agentmx.db.listen import Listener
from agentmx.fd_budget import HTTP_LISTEN_BACKLOG, connection_caps
from agentmx.jobs.runner import JobRunner
from agentmx.services import cache_notify
from agentmx.services.ingest_cache import IngestCache
from agentmx.services.key_cache import KeyCache
from agentmx.services.ratelimit import RateLimiter
from agentmx.services.runtime import Runtime
from agentmx.services.secrets import load_secret
from agentmx.settings import ConfigError, Settings, cannot_open_database

log = logging.getLogger("agentmx")

# Background services started after the job runner: async start(rt) -> async stop().
# Features append theirs (SMTP listener, live event fan-out, DNS re-checks).
Starter = Callable[[Runtime], Awaitable[Callable[[], Awaitable[None]]]]
BACKGROUND: list[Starter] = []

GRACEFUL_STOP = 10  # seconds requests in flight may take to finish once a stop begins
# Seconds an idle keep-alive connection is kept: longer than clients keep theirs (httpx, so the SDK: 5 s).
# At uvicorn's 5 s both ends gave up together, and a request sent on the connection as the server closed
# it found a reset (the close of a socket with unread bytes). Under the header deadline (20 s).
HTTP_KEEP_ALIVE = 15
# uvicorn says it is serving by a flag only: read this often (the ready line was up to 20 ms late).
READY_POLL = 0.005


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The server's event loop (``AGENTMX_EVENT_LOOP``); None means asyncio's own.

    asyncio is the default. uvloop (a dependency, through uvicorn[standard]) once saved about 15%
    of the CPU of an SMTP message; in A/B runs on 2026-11-29 it saved no CPU measurable for
    ingest, REST or WebSocket fan-out. Its REST p99 at 64 connections was 19-66 ms against
    asyncio's 9-21 ms (both backends). Its WebSocket fan-out p99 at 1,000 connections on
    PostgreSQL was 49-62 ms against 138-146 ms; since live events are written to sockets directly
    (events/ws_frame.py) it is 62-72 ms against asyncio's 66-81 ms (135 once).
    """
    return event_loops.factory(settings.event_loop)


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob folder, which must take files: found out at start, not as 500s on the first large mail."""
    try:
        blobs = BlobStore(settings.effective_blob_dir)
        blobs.check_writable()
    except OSError as exc:
        raise ConfigError(f"cannot use the blob folder: {exc}") from None
    return blobs


async def run(settings: Settings, ready: Callable[[], Any] | None = None) -> None:
    features.load()
    # Bound first: a port in use stops the server before it claims any job or starts any listener.
    http_sockets = await bound_sockets(settings.host, settings.http_port, "HTTP", HTTP_LISTEN_BACKLOG)
    rt = Runtime(
        settings=settings,
        db=Database(settings.effective_database_url, settings.database_pool_size),
        blobs=open_blob_store(settings),
        key_cache=KeyCache(settings.cache_ttl),
        ingest_cache=IngestCache(settings.cache_ttl),
    )
    try:  # the first statements of the server's own connections (a read-only SQLite file fails here)
        rt.secret = await load_secret(rt.db, settings.secret_key)
        async with rt.db.transaction() as s:
            await s.execute(text("SELECT 1"))
    except (DBAPIError, OSError) as exc:
        await rt.db.dispose()
        raise cannot_open_database(exc) from None
    if settings.rate_limit_per_minute > 0:
        rt.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    if not rt.db.is_sqlite:
        rt.listener = Listener(rt.db.url)
        cache_notify.listen(rt)
    runner = JobRunner(rt)
    await runner.start()
    stops: list[Callable[[], Awaitable[None]]] = []
    try:
        for start in BACKGROUND:
            stops.append(await start(rt))
        if rt.listener is not None:  # once every service has named its channels
            stops.append(await rt.listener.start())
    except BaseException:  # a listener that could not start: give back what was started
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()
        await runner.stop()
        await rt.db.dispose()
        raise
    # The HTTP app (FastAPI, its routes: a third of the start) only now: a database that cannot be
    # opened or a secret its DKIM keys were not encrypted with stops the server without loading it.
    import uvicorn

    from agentmx.http.app import create_app
    from agentmx.http.guard import HttpGuard
    from agentmx.http.listener import GuardedListener
    from agentmx.http.ws_frames import MAX_CLIENT_FRAME, FramedWebSocketProtocol

    app = create_app(rt)
    _, http_cap = connection_caps(settings.smtp_max_connections, settings.http_max_connections)
    guard = HttpGuard(
        http_cap, settings.http_header_timeout, settings.http_body_min_rate, settings.http_send_timeout
    )
    stops.append(guard.start())
    http_sockets = [GuardedListener.wrap(sock, guard) for sock in http_sockets]
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        http=guard.protocol(),
        backlog=HTTP_LISTEN_BACKLOG,
        timeout_keep_alive=HTTP_KEEP_ALIVE,
        ws=FramedWebSocketProtocol,
        ws_max_size=MAX_CLIENT_FRAME,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_interval,
        lifespan="off",
        # A stop waits this long at most for requests in flight: the job claims are handed back
        # after it, within systemd's default 90 s and the 30 s the README suggests.
        timeout_graceful_shutdown=GRACEFUL_STOP,
    )
    # After the Config: it sets up uvicorn's loggers.
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(log_setup.RedactKeys())
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()

    def begin_stopping() -> None:
        rt.stopping.set()
        server.should_exit = True

    # SIGHUP (a closed terminal) too: its default ended the process at once, claims kept for
    # AGENTMX_JOB_LEASE (a scheduled send up to 5 minutes late). There is nothing to reload.
    # Unless it is ignored: nohup asks the server to outlive its terminal.
    stop_signals = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        stop_signals.append(signal.SIGHUP)
    for sig in stop_signals:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, begin_stopping)
    try:
        serve_task = asyncio.create_task(server.serve(sockets=http_sockets))
        while not server.started and not serve_task.done():
            await asyncio.sleep(READY_POLL)
        if server.started:
            long_lived_heap.settle()
            log.info(
                "agentmx listening: http://%s:%s smtp %s:%s",
                settings.host,
                settings.http_port,
                settings.effective_smtp_host,
                settings.smtp_port,
            )
            if settings.outbound_capture:
                log.warning("AGENTMX_OUTBOUND_CAPTURE is on: mail for remote recipients is kept, not sent")
            print(f"agentmx ready http://{settings.host}:{settings.http_port}", flush=True)
            if ready:
                ready()
        await serve_task
    finally:
        for stop in reversed(stops):
            with contextlib.suppress(Exception):
                await stop()
        await runner.stop()
        await rt.db.dispose()
