"""Every setting does what it says: each ``Settings`` field is read by the code,
``ALERTQ_MAX_ATTEMPTS`` alone decides how often a row is tried, ``alertq worker`` runs
the delivery loops ``ALERTQ_CONCURRENCY`` or its role says, and deletes finished rows older
than ``ALERTQ_HISTORY_RETENTION``.

Split by test tier: these are the acceptance tests; see also
``tests/unit/test_settings_wiring.py``.
"""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.config import Settings, get_settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_queue_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from tests.support.clock import FakeClock
from tests.support.processes import alertq_env, run_alertq_async, start_alertq, wait_until
from tests.support.stub import StubAlertmanager


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


@pytest.mark.parametrize(
    ("concurrency", "expected"), [(None, None), (1, "1 delivery loop,"), (4, "4 delivery loops,")]
)
async def test_cli_worker_runs_the_loops_concurrency_or_its_role_says(
    db_url: str, is_postgres: bool, tmp_path: Path, concurrency: int | None, expected: str | None
) -> None:
    # Unset: a dedicated worker runs 3 loops on PostgreSQL, 2 on SQLite (one writer).
    expected = expected or ("3 delivery loops," if is_postgres else "2 delivery loops,")
    settings = {} if concurrency is None else {"concurrency": concurrency}
    done = await run_alertq_async(
        ["worker", "--drain"], alertq_env(db_url, **settings), cwd=tmp_path
    )
    assert done.returncode == 0, done.describe()
    assert expected in done.message, done.describe()


async def test_history_retention_env_var_makes_alertq_worker_delete_old_finished_rows(
    db_url: str, session_factory: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    async with transaction(session_factory) as s:
        queue = get_queue_driver(s)
        ids = {}
        for name, status, age in (
            ("old-sent", "sent", timedelta(days=2)),
            ("old-pending", "pending", timedelta(days=2)),  # undelivered: kept
            ("young-sent", "sent", timedelta(hours=1)),
        ):
            row = await queue.alerts_insert(
                [{"labels": {"alertname": name}}], "relay", None, None, now=now - age
            )
            row.status = status
            ids[name] = row.id

    async def only_the_kept_are_left() -> bool:
        async with session_factory() as s:
            left = {r.id for r in await get_queue_driver(s).alerts_list(limit=10)}
        return left == {ids["old-pending"], ids["young-sent"]}

    # Nothing listens on port 9: the pending row stays pending, so nothing else changes.
    env = alertq_env(db_url, "http://127.0.0.1:9", history_retention=86400)
    with start_alertq(["worker"], env, cwd=tmp_path) as worker:
        await wait_until(only_the_kept_are_left, within=30, message=worker.describe)
        worker.send_signal(signal.SIGTERM)
        assert await worker.wait_async(30) == 0, worker.describe()
    assert "retention: deleted 1 finished rows" in worker.stderr, worker.describe()
