"""One WebSocket event stream: subscriptions, scope filtering, replay from the log, live events.

Protocol (API.md 3.3): the client sends ``{"type":"subscribe", event_types?, inbox_ids?, pod_ids?}``;
the server answers ``subscribed`` and then ``event`` frames, or ``error`` frames. Beyond AgentMail, a
subscribe may carry ``after_event_id`` (or the URL ``?after_event_id=``): events after that one are
replayed from the log, in order, before live ones, so a client that reconnects misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from agentmx.db.models import Event
from agentmx.errors import AgentMXError, NotFound
from agentmx.events.bodies import encode_body
from agentmx.events.catalogue import DEFAULT_TYPES, EVENT_TYPES, FILTERED, read_permission
from agentmx.events.hub import Hub, Item, Subscriber
from agentmx.events.routes import route_of
from agentmx.events.ws_frame import FrameWriter
from agentmx.http.nul_guard import DuplicateKey, contains_nul, contains_surrogate, unique_keys
from agentmx.services import event_position, inboxes, pods
from agentmx.services.caller import Caller
from agentmx.services.runtime import Runtime
from agentmx.services.webhooks import RoutedEvent

Send = Callable[[str], Awaitable[None]]


KEY_RECHECK = 5.0  # seconds between checks that an open stream's key still stands (deleted keys: 401s)
# A catch-up reads the log's routing columns this many rows at a time, and the bodies of the events it
# sends a few at a time: bodies are up to 1 MB, and 500 of them per reconnecting client were GBs.
REPLAY_SCAN = 500
REPLAY_BODIES = 8
# Distinct ids a subscribe may list in inbox_ids, and in pod_ids. Each is looked up while the stream's
# task runs, and a cached row is found without yielding: 200,000 copies of one id held the whole
# process (every request and stream) for minutes. Webhooks take 10; a pod covers any number of inboxes.
MAX_CHANNELS = 100
# Client frames parsed and waiting for the stream's task. The socket is not read beyond them: a client
# that sent frames without reading the answers (its socket full, the task waiting on it) made the
# server parse and keep every frame it sent until the keepalive timeout, at the speed it sent them.
MAX_PENDING_FRAMES = 4


class StreamError(Exception):
    """Answered with an error frame; the stream stays open with its previous subscription."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


@dataclass(frozen=True)
class Filter:
    event_types: frozenset[str]
    inbox_ids: frozenset[str]
    pod_ids: frozenset[str]

    def matches(self, caller: Caller, item: RoutedEvent) -> bool:
        if item.organization_id != caller.organization_id or item.event_type not in self.event_types:
            return False
        if caller.pod_id and item.pod_id != caller.pod_id:
            return False
        if caller.inbox_id and item.inbox_id != caller.inbox_id:
            return False
        if not self.inbox_ids and not self.pod_ids:
            return True
        return item.pod_id in self.pod_ids or (item.inbox_id is not None and item.inbox_id in self.inbox_ids)


@dataclass(frozen=True)
class Subscribe:
    frame: dict[str, Any]
    refused: StreamError | None = None  # why the frame cannot be read, answered in its turn


def _str_list(frame: dict[str, Any], name: str) -> list[str] | None:
    value = frame.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StreamError("ValidationError", f"{name} must be a list of strings")
    distinct = list(dict.fromkeys(value))
    if len(distinct) > MAX_CHANNELS:
        raise StreamError("ValidationError", f"{name} may list at most {MAX_CHANNELS} ids")
    return distinct


class Stream:
    def __init__(
        self,
        rt: Runtime,
        hub: Hub,
        caller: Caller,
        send: Send,
        after_event_id: str | StreamError | None,
        write: FrameWriter | None = None,
    ) -> None:
        self.rt = rt
        self.hub = hub
        self.caller = caller
        self.send = send
        self.pending_after = after_event_id
        self.filter: Filter | None = None
        self.sub: Subscriber = hub.register(caller.organization_id)
        self.sub.write = write
        self.frame_room = asyncio.Semaphore(
            MAX_PENDING_FRAMES
        )  # taken per frame read, given back when handled

    def close(self) -> None:
        self.hub.unregister(self.sub)

    def received(self, text: str) -> None:
        """A client frame: queued so it is handled in order with the events."""
        try:
            # A key twice is refused as in HTTP bodies: json takes the last, a proxy may read the first.
            frame = json.loads(text, object_pairs_hook=unique_keys)
        except DuplicateKey as exc:
            self.sub.queue.put_nowait(Subscribe({}, StreamError("ValidationError", f"frame: {exc.message}")))
            return
        except (ValueError, RecursionError):  # bad JSON, a number over 4300 digits, deep nesting
            frame = None
        self.sub.queue.put_nowait(Subscribe(frame if isinstance(frame, dict) else {}))

    async def run(self) -> None:
        sub = self.sub
        while True:
            sub.idle = True  # while parked, the hub may write live events itself
            item = await sub.queue.get()
            sub.idle = False
            if isinstance(item, Item):
                sub.queued_bytes -= len(item.text)
            if sub.lagging:
                await self._recover()
            if isinstance(item, Subscribe):
                try:
                    if item.refused is not None:
                        raise item.refused
                    await self._subscribe(item.frame)
                except StreamError as exc:
                    await self._send_json({"type": "error", "name": exc.name, "message": exc.message})
                finally:
                    self.frame_room.release()
            elif item.seq > sub.cursor:
                sub.cursor = item.seq
                if self.filter is not None and self.filter.matches(self.caller, item):
                    await self.send(item.text)

    async def _send_json(self, frame: dict[str, Any]) -> None:
        await self.send(json.dumps(frame))

    async def _subscribe(self, frame: dict[str, Any]) -> None:
        if frame.get("type") != "subscribe":
            raise StreamError("ValidationError", 'expected a {"type": "subscribe"} frame')
        if contains_nul(frame) or contains_surrogate(frame):  # no database takes them: ids never hold them
            raise StreamError("ValidationError", "frame contains a NUL character or a lone surrogate")
        requested = _str_list(frame, "event_types")
        inbox_ids = _str_list(frame, "inbox_ids")
        pod_ids = _str_list(frame, "pod_ids")
        types = self._event_types(requested)
        inbox_list, pod_list = await self._channels(inbox_ids or [], pod_ids or [])
        url_after, self.pending_after = self.pending_after, None
        if isinstance(url_after, StreamError):  # the URL's, refused when the stream opened
            raise url_after
        after = frame.get("after_event_id") or frame.get("last_event_id") or url_after
        after_seq = await self._seq_of(after) if after else None
        self.filter = active = Filter(frozenset(types), frozenset(inbox_list), frozenset(pod_list))
        self.sub.accepts = route_of(active, self.caller)
        ack: dict[str, Any] = {"type": "subscribed", "event_types": types}
        # The filter in effect: each id once, as events carry it (an inbox may be named in any case).
        if inbox_ids is not None:
            ack["inbox_ids"] = inbox_list
        if pod_ids is not None:
            ack["pod_ids"] = pod_list
        await self._send_json(ack)
        if after_seq is not None:
            await self._replay(after_seq)

    def _event_types(self, requested: list[str] | None) -> list[str]:
        if requested is None or not requested:
            return [t for t in EVENT_TYPES if t in DEFAULT_TYPES and self.caller.can(read_permission(t))]
        out: list[str] = []
        for name in requested:
            if name not in EVENT_TYPES:
                raise StreamError("ValidationError", f"unknown event type {name[:100]!r}")
            for permission in (FILTERED.get(name), read_permission(name)):
                if permission and not self.caller.can(permission):
                    raise StreamError("ForbiddenError", f"{permission} is forbidden")
            if name not in out:
                out.append(name)
        return out

    async def _channels(self, inbox_ids: list[str], pod_ids: list[str]) -> tuple[list[str], list[str]]:
        """Listed inboxes and pods must exist in the key's scope (a foreign id is refused); their ids,
        in the order given, each once. Dicts keep insertion order."""
        inbox_set: dict[str, None] = {}
        pod_set: dict[str, None] = {}
        async with self.rt.db.read() as s:
            for inbox_id in inbox_ids:
                try:
                    inbox_set[(await inboxes.get_inbox(s, self.caller, inbox_id)).id] = None
                except NotFound as exc:
                    raise StreamError("NotFoundError", f"Inbox {inbox_id} not found") from exc
            for pod_id in pod_ids:
                try:
                    pod_set[(await pods.get_pod(s, self.caller, pod_id)).id] = None
                except NotFound as exc:
                    raise StreamError("NotFoundError", f"Pod {pod_id} not found") from exc
        return list(inbox_set), list(pod_set)

    async def _seq_of(self, event_id: Any) -> int:
        if not isinstance(event_id, str):
            raise StreamError("ValidationError", "after_event_id must be a string")
        caller = self.caller
        async with self.rt.db.read() as s:
            seq = await event_position.seq_of(
                s,
                event_id,
                organization_id=caller.organization_id,
                pod_id=caller.pod_id,
                inbox_id=caller.inbox_id,
            )
        if seq is None:
            raise StreamError("NotFoundError", f"Event {event_id} not found")
        return seq

    async def _replay(self, after_seq: int) -> None:
        """Send matching events after ``after_seq`` from the log; live items up to there are skipped.

        Routing columns first, then the bodies of the events sent, ``REPLAY_BODIES`` per read, with no
        read open while sending (a slow client must not hold a connection or SQLite's WAL).
        """
        seq = after_seq
        while True:
            async with self.rt.db.read() as s:
                routes = (
                    await s.execute(
                        select(
                            Event.seq, Event.event_type, Event.organization_id, Event.pod_id, Event.inbox_id
                        )
                        .where(Event.organization_id == self.caller.organization_id, Event.seq > seq)
                        .order_by(Event.seq)
                        .limit(REPLAY_SCAN)
                    )
                ).all()
            active = self.filter
            wanted = [r.seq for r in routes if active is not None and active.matches(self.caller, r)]
            for start in range(0, len(wanted), REPLAY_BODIES):
                await self._send_logged(wanted[start : start + REPLAY_BODIES])
            if routes:
                seq = routes[-1].seq
                self.sub.cursor = max(self.sub.cursor, seq)
            if len(routes) < REPLAY_SCAN:
                return

    async def _send_logged(self, seqs: list[int]) -> None:
        async with self.rt.db.read() as s:
            rows = await s.execute(select(Event.seq, Event.body).where(Event.seq.in_(seqs)))
            bodies: dict[int, dict[str, Any]] = {seq: body for seq, body in rows}
        for seq in seqs:
            body = bodies.pop(seq, None)
            if body is not None:  # None: pruned by retention since its routing row was read
                await self.send(encode_body(body).decode())
            self.sub.cursor = max(self.sub.cursor, seq)

    async def _recover(self) -> None:
        """The hub dropped events for this slow stream: keep client frames, re-read events from the log."""
        self.sub.lagging = False
        self.sub.drop_events()
        if self.filter is not None:
            await self._replay(self.sub.cursor)


async def serve(
    rt: Runtime,
    hub: Hub,
    caller: Caller,
    send: Send,
    receive: Callable[[], Awaitable[str | None]],
    after_event_id: str | StreamError | None = None,
    write: FrameWriter | None = None,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> bool:
    """Run one stream until the client goes away. ``receive`` returns None when the socket closed.

    ``after_event_id`` is the URL's resume point, or its refusal: either is answered at the first subscribe.

    ``write``, when the edge has one, sends pre-framed live events without the ASGI round.
    ``still_allowed`` is asked every ``KEY_RECHECK`` seconds whether the caller's key still stands
    as it was (not deleted, expired or changed); returns True when the stream ended for that.
    """
    stream = Stream(rt, hub, caller, send, after_event_id, write)
    writer = asyncio.create_task(stream.run())
    watchdog = asyncio.create_task(_watch(still_allowed))
    revoked = False
    try:
        while not writer.done():
            room: asyncio.Future[Any] = asyncio.ensure_future(stream.frame_room.acquire())
            done, _ = await asyncio.wait({room, writer, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if room not in done:
                revoked = watchdog in done
                room.cancel()
                break
            receiving: asyncio.Future[Any] = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({receiving, writer, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done or watchdog in done:
                revoked = watchdog in done
                receiving.cancel()
                break
            text = receiving.result()
            if text is None:
                break
            stream.received(text)
    except AgentMXError:
        pass
    finally:
        stream.close()
        writer.cancel()
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer
    return revoked


async def _watch(still_allowed: Callable[[], Awaitable[bool]] | None) -> None:
    """Returns when the key no longer allows the stream; never without ``still_allowed``."""
    while True:
        await asyncio.sleep(KEY_RECHECK)
        if still_allowed is not None and not await still_allowed():
            return
