"""The start's own check that the schema is at head agrees with Alembic, and says no when unsure."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from agentmx.db import schema_head
from agentmx.db.migrate import alembic_config, upgrade


def test_head_is_alembics_head() -> None:
    assert (
        schema_head.head_revision()
        == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    )


def test_at_head_only_once_every_migration_ran(empty_database: str) -> None:
    assert not schema_head.at_head(empty_database)  # nothing there yet
    command.upgrade(alembic_config(empty_database), "0011")
    assert not schema_head.at_head(empty_database)
    upgrade(empty_database)
    assert schema_head.at_head(empty_database)


def test_a_file_that_is_not_a_database_is_left_to_alembic(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    path.write_bytes(b"not a database at all" * 100)
    assert not schema_head.at_head(f"sqlite:///{path}")
    assert not schema_head.at_head(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()  # the check creates nothing


def test_an_unknown_newer_revision_is_not_head(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    assert not schema_head.at_head(f"sqlite:///{path}")  # Alembic then refuses it, as before
