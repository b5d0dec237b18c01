"""What every command does first: create the data folder and bring the schema up to date."""

from __future__ import annotations

import logging

from agentmx.db import schema_head
from agentmx.settings import Settings

log = logging.getLogger("agentmx")


def prepare(settings: Settings) -> None:
    """Create the data folder and migrate (outside any event loop).

    It lives here, not in ``server``, so that ``keys create`` and ``db upgrade`` do not import the
    HTTP app (a second of a CLI call's two); Alembic is imported only when there is work for it.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    if schema_head.at_head(url):
        log.debug("the database schema is at the newest migration: nothing to apply")
        return
    from agentmx.db.migrate import upgrade

    upgrade(url)
