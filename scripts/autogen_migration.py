"""Fill a placeholder migration with the DDL for the named tables.

Usage: python scripts/autogen_migration.py 0002 threads messages message_labels …
Upgrades a scratch SQLite database to head, compares it with the models restricted to the
named tables, and writes the rendered upgrade()/downgrade() into the placeholder file.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from typing import Any

from alembic.autogenerate import produce_migrations, render_python_code
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.db import models  # noqa: F401
from agentmx.db.base import Base
from agentmx.db.migrate import MIGRATIONS, upgrade

IMPORTS = """import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text  # noqa: F401
from sqlalchemy.dialects import postgresql  # noqa: F401

import agentmx.db.types  # noqa: F401
"""


def _render(url: str, tables: set[str]) -> tuple[str, str]:
    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = obj if type_ == "table" else getattr(obj, "table", None)
        return table is not None and table.name in tables

    async def run() -> tuple[str, str]:
        engine = create_async_engine(url)
        async with engine.connect() as conn:

            def sync(c: Any) -> tuple[str, str]:
                ctx = MigrationContext.configure(
                    c,
                    opts={
                        "include_object": include,
                        "render_as_batch": True,
                        "target_metadata": Base.metadata,
                    },
                )
                script = produce_migrations(ctx, Base.metadata)
                opts = {
                    "render_as_batch": True,
                    "alembic_module_prefix": "op.",
                    "sqlalchemy_module_prefix": "sa.",
                }
                return (
                    render_python_code(script.upgrade_ops, **opts),  # type: ignore[arg-type]
                    render_python_code(script.downgrade_ops, **opts),  # type: ignore[arg-type]
                )

            result = await conn.run_sync(sync)
        await engine.dispose()
        return result

    return asyncio.run(run())


def indent(code: str) -> str:
    return "\n".join("    " + line if line.strip() else "" for line in code.strip().splitlines())


def main(rev: str, tables: list[str]) -> None:
    (target,) = list((MIGRATIONS / "versions").glob(f"{rev}_*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/scratch.db"
        upgrade(url)
        up, down = _render(url, set(tables))
    up = up.replace("agentmx.db.types.UTCDateTime(timezone=True)", "agentmx.db.types.UTCDateTime()")
    original = target.read_text()
    head = original[: original.index("def upgrade()")]
    if "from alembic import op" not in head:
        head = head.replace(
            "from __future__ import annotations\n", "from __future__ import annotations\n\n" + IMPORTS, 1
        )
    target.write_text(
        f"{head}def upgrade() -> None:\n{indent(up)}\n\n\ndef downgrade() -> None:\n{indent(down)}\n"
    )
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
