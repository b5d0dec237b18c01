"""New databases already at the newest migration, copied from one this process migrated.

A server started on a new database spent a fifth of its start-up CPU in Alembic (0.4 of 2.2 s;
on PostgreSQL more, and the server's own DDL work besides), and the test suite starts hundreds.
The copy is made once per process, by a real ``agentmx db upgrade``; a server then finds its
schema at head, as after any restart. Servers that must migrate a new database themselves are
started on an empty one, as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from agentmx.testing import postgres

SQLITE_FILE = "agentmx.db"  # the file `agentmx serve --data-dir D` opens


def _upgrade(*storage: str) -> None:
    """``agentmx db upgrade`` on this storage, with no AGENTMX_ setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMX_")}
    subprocess.run(
        [sys.executable, "-m", "agentmx", "db", "upgrade", *storage],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )


class MigratedTemplates:
    """One migrated SQLite file and one migrated PostgreSQL database, each made on first use."""

    def __init__(self) -> None:
        self._sqlite_dir: Path | None = None
        self._postgres_name: str | None = None

    def sqlite_into(self, data_dir: Path) -> None:
        """Put a migrated database where a server on ``data_dir`` will open it."""
        if self._sqlite_dir is None:
            folder = Path(tempfile.mkdtemp(prefix="agentmx-template-"))
            _upgrade("--data-dir", str(folder))
            self._sqlite_dir = folder
        data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._sqlite_dir / SQLITE_FILE, data_dir / SQLITE_FILE)

    def postgres_database(self) -> str:
        """The URL of a new migrated PostgreSQL database (drop it with ``postgres.drop_database``)."""
        if self._postgres_name is None:
            url = postgres.create_database("agentmx_template")
            _upgrade("--database-url", url)
            self._postgres_name = url.rsplit("/", 1)[1]
        return postgres.create_database(template=self._postgres_name)

    def close(self) -> None:
        if self._sqlite_dir is not None:
            shutil.rmtree(self._sqlite_dir, ignore_errors=True)
            self._sqlite_dir = None
        if self._postgres_name is not None:
            postgres.drop_database(postgres.url_of(self._postgres_name))
            self._postgres_name = None
