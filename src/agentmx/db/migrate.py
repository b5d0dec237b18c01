"""Apply Alembic migrations (at start-up and by ``agentmx db upgrade``, through db/prepare.py)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.util import CommandError

from agentmx.settings import ConfigError, normalize_database_url

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalize_database_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the schema to head. Must run outside an event loop (Alembic's env runs its own)."""
    try:
        command.upgrade(alembic_config(url), "head")
    except CommandError as exc:
        if "Can't locate revision" not in str(exc):
            raise
        # A revision we do not know: a newer agentmx migrated the database (a downgrade of the code).
        raise ConfigError(
            f"the database's schema is newer than this agentmx ({exc}): run the version that upgraded it"
        ) from None
