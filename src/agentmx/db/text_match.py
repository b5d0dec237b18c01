"""Case-insensitive substring matching (``lower(column) LIKE '%text%'``), as PostgreSQL's lower() does it.

SQLite's lower() and LIKE fold ASCII letters only, so a search for "überweisung" missed the subject
"Überweisung". Every SQLite connection gets ``agentmx_lower`` (Python's ``str.lower``), but a Python
call per row holds the GIL and cost a scan over 3x the CPU of the built-ins, so it is used only where
the built-ins could give other matches:
  * ASCII text, and text whose characters lower-casing never touches (CJK and other uncased scripts:
    db/lower_case_touched proves it), is compared with SQLite's LIKE, which folds ASCII as lower()
    would, without lower()'s copy of every value;
  * other text ("überweisung") is compared through ``agentmx_lower``, but only in rows that hold its
    longest untouched run ("berwe"), which every match must (same proof): a LIKE rules out the rest.
PostgreSQL's lower() follows the database's character type (C.UTF-8, en_US.UTF-8, ...), non-ASCII
letters included: there it is always ``lower(column) LIKE``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import and_, func
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from agentmx.db.lower_case_touched import touched

SQLITE_FUNCTION = "agentmx_lower"
ESCAPE = "\\"


def contains(column: Any, text: str, looked_for: str | None = None) -> Any:
    """``column`` lower-cased has ``text`` (lower-cased by the caller) in it; LIKE's wildcards in
    ``text`` are literal. ``looked_for`` (by default ``text``): the word searched for; when it is ASCII,
    SQLite's built-ins decide, as they always did (they do not fold the Kelvin sign to 'k', nor 'İ')."""
    if (looked_for or text).isascii():
        return _contains_builtin(column, _pattern(text))
    untouched = _untouched_runs(text)
    if untouched == [text]:
        return _contains_builtin(column, _pattern(text))
    if not untouched:
        return _contains_lowered(column, _pattern(text))
    return _contains_lowered(column, _pattern(text), _pattern(max(untouched, key=len)))


def _pattern(text: str) -> str:
    escaped = text.replace(ESCAPE, ESCAPE * 2).replace("%", ESCAPE + "%").replace("_", ESCAPE + "_")
    return f"%{escaped}%"


def _untouched_runs(text: str) -> list[str]:
    """The longest stretches of ``text`` without a character lower-casing touches."""
    touched_chars = touched()
    runs, run = [], ""
    for char in text:
        if char in touched_chars:
            runs.append(run)
            run = ""
        else:
            run += char
    runs.append(run)
    return [r for r in runs if r]


class _contains_builtin(FunctionElement[bool]):  # noqa: N801 (an SQL expression, named as functions are)
    """(column, pattern)"""

    inherit_cache = True


class _contains_lowered(FunctionElement[bool]):  # noqa: N801
    """(column, pattern[, pattern of a fragment every match has, for SQLite's LIKE to check first])"""

    inherit_cache = True


@compiles(_contains_builtin)
@compiles(_contains_lowered)
def _lower_like(element: FunctionElement[bool], compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern, *_ = element.clauses
    return compiler.process(func.lower(column).like(pattern, escape=ESCAPE), **kw)


@compiles(_contains_builtin, "sqlite")
def _like_sqlite(element: _contains_builtin, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern = element.clauses
    return compiler.process(column.like(pattern, escape=ESCAPE), **kw)


@compiles(_contains_lowered, "sqlite")
def _lowered_like_sqlite(element: _contains_lowered, compiler: SQLCompiler, **kw: Any) -> str:
    column, pattern, *fragment = element.clauses
    lowered = getattr(func, SQLITE_FUNCTION)(column).like(pattern, escape=ESCAPE)
    # SQLite tests an AND's terms in order: the Python call only for rows that hold the fragment.
    condition = and_(column.like(fragment[0], escape=ESCAPE), lowered) if fragment else lowered
    return compiler.process(condition.self_group(), **kw)


def register(conn: sqlite3.Connection) -> None:
    conn.create_function(SQLITE_FUNCTION, 1, _python_lower, deterministic=True)


def _python_lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value
