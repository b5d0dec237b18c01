"""Multi-row INSERTs handed to the driver as tuples, for the hot tables of an inbound batch.

``session.execute(insert(table), rows)`` takes each row through the compiled statement's parameter
machinery (a dict of bind values per row, then a processor call per value): about a tenth of the
server's CPU per inbound message (py-spy). Here the INSERT is compiled once per dialect as the hot
reads' statements are (``driver_reads.DriverStatement``): each row becomes its values run through
the column types' own bind processors, so the stored values are the same, and the driver gets them
all in one ``executemany`` (``exec_driver_sql``, inside the session's transaction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from agentmx.db.driver_reads import DriverStatement

# By dialect object, not name: a bind processor carries its dialect's settings (the JSON serializer).
_compiled: dict[tuple[Insert, Dialect], DriverStatement] = {}


async def insert_many(session: AsyncSession, statement: Insert, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute ``statement`` (an INSERT with no values of its own) once per row.

    Each row holds every column of the table (as ``transient.column_values`` gives them): nothing
    is filled in from column defaults. A row without one raises ValueError naming it.
    """
    if not rows:
        return
    conn = await session.connection()
    compiled = _compiled.get((statement, conn.dialect))
    if compiled is None:
        compiled = _compiled[(statement, conn.dialect)] = DriverStatement(statement, conn.dialect)
    try:
        params = [tuple(compiled.args(row)) for row in rows]
    except KeyError as exc:
        raise ValueError(f"insert_many into {statement.table}: a row has no {exc}") from exc
    await conn.exec_driver_sql(compiled.sql, params)
