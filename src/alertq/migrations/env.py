"""Alembic environment: runs migrations over the async engine alertq itself uses."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from alertq.config import Settings
from alertq.db import create_engine
from alertq.models import Base

config = context.config
target_metadata = Base.metadata


def _include_name(name: str | None, type_: str, _parent: object) -> bool:
    return not (type_ == "table" and name == "alembic_version")


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=_include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    settings = Settings(database_url=url)
    # On PostgreSQL connecting stays bounded but statements do not: an index build on a
    # large legacy table may rightly take minutes, and a migration waits for its locks.
    unbounded = {} if settings.is_sqlite else {"connect_args": {"command_timeout": None}}
    engine = create_engine(settings, **unbounded)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("database_url") or Settings().database_url
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("alertq migrations run online only: use `alertq db upgrade`")
run_migrations_online()
