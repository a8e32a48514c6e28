"""Every setting does what it says: each ``Settings`` field is read by the code, and
``ALERTQ_MAX_ATTEMPTS`` alone decides how often a row is tried."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import alertq
from alertq.config import Settings, get_settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_queue_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from tests.support.clock import FakeClock
from tests.support.processes import alertq_env, run_alertq_async
from tests.support.stub import StubAlertmanager

SRC = Path(alertq.__file__).parent


def settings_reads() -> dict[str, set[str]]:
    """For each attribute read off something named ``*settings*`` (``settings.x``,
    ``self.settings.x``, ``get_settings().x``), the modules that read it. ``config.py``
    itself (where fields are declared and validated) does not count."""
    reads: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            owner = ast.unparse(node.value).rsplit(".", 1)[-1]
            if "settings" in owner.lower():
                reads.setdefault(node.attr, set()).add(path.relative_to(SRC).as_posix())
    return reads


def test_every_settings_field_is_read_by_the_code() -> None:
    reads = settings_reads()
    assert "database_url" in reads, "the scan finds settings reads at all"
    unread = sorted(name for name in Settings.model_fields if name not in reads)
    assert unread == [], f"Settings fields nothing in src/alertq reads: {unread}"


@pytest.fixture
def max_attempts_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTQ_MAX_ATTEMPTS", "2")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_max_attempts_env_var_alone_decides_when_a_row_fails(
    max_attempts_env: None,
    db_url: str,
    session_factory: async_sessionmaker[AsyncSession],
    stub: StubAlertmanager,
) -> None:
    stub.respond(503, "try later")
    async with transaction(session_factory) as s:
        row = await enqueue_alert(s, [{"labels": {"alertname": "Retry"}}], "disable")
    clock = FakeClock()  # after the enqueue: the row is due
    assert row.max_attempts == 2
    settings = Settings(database_url=db_url, alertmanager_urls=[stub.url], backoff_base=0.01)
    worker = AlertWorker(settings, session_factory, clock=clock)
    client = AlertmanagerClient.from_settings(settings)
    try:
        for _ in range(2):
            assert await worker.run_once(client) == 1
            clock.advance(60)

    finally:
        await client.aclose()
    async with session_factory() as s:
        got = await get_queue_driver(s).alerts_get(row.id)
    assert got is not None and (got.status, got.attempts) == ("failed", 2)


async def test_cli_enqueue_takes_max_attempts_from_the_environment(
    db_url: str, tmp_path: Path, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    file = tmp_path / "alert.json"
    file.write_text(json.dumps([{"labels": {"alertname": "FromCli"}}]))
    env = alertq_env(db_url, max_attempts=4)
    done = await run_alertq_async(
        ["enqueue", "--file", str(file), "--type", "disable"], env, cwd=tmp_path
    )
    assert done.returncode == 0, done.describe()
    async with session_factory() as s:
        got = await get_queue_driver(s).alerts_get(int(done.stdout.strip()))
    assert got is not None and got.max_attempts == 4
