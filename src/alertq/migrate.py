"""Schema upgrades through Alembic, for the CLI and the tests.

Alembic is imported where it is used: with Mako and Pygments it cost every ``alertq``
command about 0.16 s of start-up, and only ``alertq db`` needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config


def alembic_config(database_url: str) -> Config:
    """An Alembic config pointing at alertq's packaged migrations and ``database_url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "alertq:migrations")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema at ``database_url`` to ``revision``.

    Works on an empty database, on one alertq created, and on a legacy database that has
    the three tables but no ``alembic_version``: the baseline migration creates only the
    tables that are missing, and the next adds alertq's columns in place.
    """
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    """The revision the database is at, or None."""
    import asyncio

    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import Connection

    from alertq.config import Settings
    from alertq.db import create_engine

    def _read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async def _go() -> str | None:
        engine = create_engine(Settings(database_url=database_url))
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(_read)
        finally:
            await engine.dispose()

    return asyncio.run(_go())
