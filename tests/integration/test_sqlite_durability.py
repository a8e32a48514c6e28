"""SQLite commits are durable by default: ``synchronous=FULL`` on every connection.

In WAL mode ``synchronous=NORMAL`` can lose the last commits on a power loss or an OS
crash, and the relay answers 200 only after a commit (issue 11). The pragma is read back
from an engine built from ``ALERTQ_*`` settings alone, as every producer builds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from alertq.config import Settings
from alertq.db import create_engine

FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


async def test_sqlite_connections_from_default_settings_commit_with_synchronous_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ALERTQ_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    engine = create_engine(Settings())
    try:
        async with engine.connect() as conn:
            synchronous = (await conn.execute(text("PRAGMA synchronous"))).scalar()
            journal = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
    finally:
        await engine.dispose()
    assert synchronous == FULL
    assert journal == "wal"
