"""Multi-row INSERTs handed to the driver as tuples, for the hot tables of an inbound batch.

``session.execute(insert(table), rows)`` takes each row through the compiled statement's parameter
machinery (a dict of bind values per row, then a processor call per value): about a tenth of the
server's CPU per inbound message (py-spy). Here the INSERT is compiled once per statement, dialect
and set of columns; each row becomes a tuple of values run through the same bind processors (the
column types' own, so the stored values are the same) and the driver gets them all in one
``executemany`` (``exec_driver_sql``, inside the session's transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    columns: tuple[tuple[str, Processor | None], ...]  # row key and its bind processor, in placeholder order


# By dialect object, not name: a bind processor carries its dialect's settings (the JSON serializer).
_compiled: dict[tuple[Insert, Dialect, tuple[str, ...]], _Compiled] = {}


async def insert_many(session: AsyncSession, statement: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute ``statement`` (an INSERT with no values of its own) once per row.

    Every row has the same keys (column keys). A column left out must have no Python-side default:
    ``session.execute`` would fill that in, this does not (a ValueError names it).
    """
    if not rows:
        return
    conn = await session.connection()
    plan = _plan(statement, conn.dialect, tuple(rows[0]))
    columns = plan.columns
    params = [
        tuple([row[k] if process is None else process(row[k]) for k, process in columns]) for row in rows
    ]
    await conn.exec_driver_sql(plan.sql, params)


def _plan(statement: Insert, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
    found = _compiled.get((statement, dialect, keys))
    if found is not None:
        return found
    table = statement.table
    defaulted = [c.key for c in table.columns if c.key not in keys and c.default is not None]
    if defaulted:
        raise ValueError(f"insert_many into {table}: rows leave out {defaulted}, which have defaults")
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    if not compiled.positional or compiled.positiontup is None:
        raise ValueError(f"insert_many needs a positional paramstyle, not {dialect.paramstyle}")
    names = tuple(compiled.positiontup)
    if sorted(names) != sorted(keys):  # bind names are the column keys, unless a key needs escaping
        raise ValueError(f"insert_many into {table}: binds {names} do not match the row keys {keys}")
    order = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
    )
    found = _compiled[(statement, dialect, keys)] = _Compiled(compiled.string, order)
    return found
