"""Loading what a webhook delivery needs: the webhook's URL, secret and headers, and the event body.

The job runner starts a claimed batch of deliveries in one loop tick; their lookups are gathered
here and answered with two queries for the whole batch (not a read transaction per delivery), on
the driver's own connection (``db/driver_reads``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import Row, Select, String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect

from agentmx.db.driver_reads import DriverStatement
from agentmx.db.models import Event, Webhook
from agentmx.services.runtime import Runtime

Key = tuple[str, str]  # webhook_id, event_id

_HOOK_COLUMNS: tuple[Any, ...] = (
    Webhook.id,
    Webhook.url,
    Webhook.secret,
    Webhook.headers,
    Webhook.enabled,
    Webhook.updated_at,
)


def _ids_in(column: Any, postgres: bool) -> Any:
    """``column`` is one of the :ids, as one bound value (no IN list rendered per batch, which
    driver reads do not run): an array on PostgreSQL, a JSON array on SQLite."""
    if postgres:
        return column == any_(bindparam("ids", type_=ARRAY(String)))
    listed = func.json_each(bindparam("ids", type_=String)).table_valued("value")
    return column.in_(select(listed.c.value))


_compiled: dict[str, tuple[DriverStatement, DriverStatement]] = {}


def _statements(dialect: Dialect) -> tuple[DriverStatement, DriverStatement]:
    """The webhook and event lookups, compiled once per dialect."""
    found = _compiled.get(dialect.name)
    if found is None:
        postgres = dialect.name == "postgresql"
        hooks = select(*_HOOK_COLUMNS).where(_ids_in(Webhook.id, postgres))
        bodies: Select[Any] = select(Event.event_id, Event.body).where(_ids_in(Event.event_id, postgres))
        found = _compiled[dialect.name] = (DriverStatement(hooks, dialect), DriverStatement(bodies, dialect))
    return found


def _ids(values: set[str], dialect: Dialect) -> Any:
    # str(): a non-str id (a hand-written payload) finds nothing instead of failing the whole batch.
    listed = sorted(str(v) for v in values)
    return listed if dialect.name == "postgresql" else json.dumps(listed)


_fetching: set[asyncio.Task[None]] = set()
_waiting: dict[int, dict[Key, list[asyncio.Future[tuple[Row[Any], Any] | None]]]] = {}


async def load(rt: Runtime, webhook_id: str, event_id: str) -> tuple[Row[Any], Any] | None:
    """(webhook row, event body), or None when either is gone."""
    future: asyncio.Future[tuple[Row[Any], Any] | None] = asyncio.get_running_loop().create_future()
    batch = _waiting.get(id(rt))
    if batch is None:
        batch = _waiting[id(rt)] = {}
        # Runs after the tasks already scheduled for this loop turn have queued their keys too.
        task = asyncio.create_task(_fetch(rt))
        _fetching.add(task)
        task.add_done_callback(_fetching.discard)
    batch.setdefault((webhook_id, event_id), []).append(future)
    return await future


async def _fetch(rt: Runtime) -> None:
    batch = _waiting.pop(id(rt), {})
    try:
        # On the driver's connection: SQLAlchemy's connection, transaction and result plumbing cost
        # more than the two indexed lookups (the rows are processed the same, see db/driver_reads).
        async with rt.db.read_driver() as conn:
            hooks_sql, bodies_sql = _statements(conn.dialect)
            hook_ids = _ids({w for w, _ in batch}, conn.dialect)
            hooks: dict[str, Any] = {row.id: row for row in await conn.run(hooks_sql, {"ids": hook_ids})}
            event_ids = _ids({e for _, e in batch}, conn.dialect)
            bodies = {row.event_id: row.body for row in await conn.run(bodies_sql, {"ids": event_ids})}
    except BaseException as exc:
        for futures in batch.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
        if not isinstance(exc, Exception):
            raise
        return
    for (webhook_id, event_id), futures in batch.items():
        hook, found = hooks.get(webhook_id), event_id in bodies
        result = (hook, bodies[event_id]) if hook is not None and found else None
        for future in futures:
            if not future.done():
                future.set_result(result)
