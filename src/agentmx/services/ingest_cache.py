"""A short-lived, in-process cache for the inbound hot path (recipient inboxes, list scopes).

Every RCPT and every DATA would otherwise read the inbox, its domain and the allow/block lists.
A transaction in this process that changes an inbox, pod, organization, domain or list entry
clears every cache when it flushes and again when it commits; on PostgreSQL it also tells the
other processes sharing the database to clear theirs (``cache_notify``), and ``ttl`` bounds how
long they could miss that.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import ORMExecuteState, Session

from agentmx.db.models import Domain, Inbox, ListEntry, Organization, Pod
from agentmx.services.cache_notify import notify_at_commit

DEFAULT_TTL = 2.0
MAX_ENTRIES = 10_000
WATCHED = (Inbox, Pod, Organization, Domain, ListEntry)
MISSING: Any = object()

_caches: weakref.WeakSet[IngestCache] = weakref.WeakSet()


class IngestCache:
    def __init__(self, ttl: float = DEFAULT_TTL) -> None:
        self.ttl = ttl
        # Bumped by every clear: a lookup that started before a change must not store its result.
        self.generation = 0
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self.on_clear: list[Callable[[], None]] = []  # copies elsewhere (SMTP front ends) to clear too
        _caches.add(self)

    def get(self, key: Hashable) -> Any:
        """The cached value, or ``MISSING``."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return MISSING
        return entry[1]

    def put(self, key: Hashable, value: Any, generation: int) -> None:
        """Store ``value`` read while the cache was at ``generation`` (dropped if it changed since)."""
        if generation != self.generation:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic(), value)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        for listener in self.on_clear:
            listener()


def clear_all() -> None:
    for cache in list(_caches):
        cache.clear()


def _schedule_clear(session: Session) -> None:
    clear_all()  # lookups from now on see no stale entry
    # ...and once more after commit, so nothing read in between survives (Database.transaction).
    hooks = session.info.setdefault("after_commit", [])
    if clear_all not in hooks:
        hooks.append(clear_all)
    notify_at_commit(session)  # ...and the other processes' at commit


@sa_event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _ctx: Any) -> None:
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, WATCHED):
            _schedule_clear(session)
            return


@sa_event.listens_for(Session, "do_orm_execute")
def _bulk_change(state: ORMExecuteState) -> None:
    """Core-style UPDATE/DELETE through the session bypass the flush: watch those too."""
    if not (state.is_update or state.is_delete):
        return
    mapper = state.bind_mapper
    if mapper is not None and issubclass(mapper.class_, WATCHED):
        _schedule_clear(state.session)
