"""Case-insensitive matching of non-ASCII text on SQLite, as PostgreSQL's lower() does it.

SQLite's lower() (and LIKE) fold ASCII letters only, so a search for "überweisung" missed the
subject "Überweisung". Every SQLite connection gets ``agentmx_lower`` (Python's ``str.lower``),
and ``lowered`` picks it when the text looked for has non-ASCII characters. For ASCII text the
built-in gives the same matches without a Python call per row. PostgreSQL's lower() follows the
database's character type (C.UTF-8, en_US.UTF-8, ...), non-ASCII letters included.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Text, func
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

SQLITE_FUNCTION = "agentmx_lower"


class unicode_lower(FunctionElement[str]):  # noqa: N801 (SQL function names are lower case)
    type = Text()
    inherit_cache = True


@compiles(unicode_lower)
def _lower(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(unicode_lower, "sqlite")
def _lower_sqlite(element: unicode_lower, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


def lowered(column: Any, looked_for: str) -> Any:
    """``column`` lower-cased for comparing with ``looked_for`` (itself lower-cased by the caller)."""
    return func.lower(column) if looked_for.isascii() else unicode_lower(column)


def register(conn: sqlite3.Connection) -> None:
    conn.create_function(SQLITE_FUNCTION, 1, _python_lower, deterministic=True)


def _python_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
