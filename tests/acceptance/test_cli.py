"""The ``alertq`` command line, run as a child process the way an operator runs it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import migrate
from alertq.db import transaction
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel
from tests.support.processes import alertq_env, run_alertq_async

Factory = async_sessionmaker[AsyncSession]
Q = CostSimAlertQueueModel
# For commands whose behaviour does not depend on the backend.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def one(name: str, **labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": name, **labels}}]


async def rows(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        return list((await s.scalars(select(Q).order_by(Q.id))).all())


async def row_count(factory: Factory) -> int:
    async with factory() as s:
        return int(await s.scalar(select(func.count()).select_from(Q)) or 0)


async def add_row(
    factory: Factory,
    name: str,
    status: str = "pending",
    *,
    created: datetime | None = None,
    attempts: int = 0,
    max_attempts: int = 10,
) -> int:
    """A queue row in ``status``, created at ``created``."""
    async with transaction(factory) as s:
        row = await enqueue_alert(s, one(name), "disable", now=created, max_attempts=max_attempts)
        row_id = row.id
    async with transaction(factory) as s:
        stored = await s.get(Q, row_id)
        assert stored is not None
        stored.status, stored.attempts = status, attempts
    return row_id


def head_revision(database_url: str) -> str:
    """The newest migration alertq ships."""
    head = ScriptDirectory.from_config(migrate.alembic_config(database_url)).get_current_head()
    assert head is not None
    return head


# --------------------------------------------------------------------------- enqueue


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '[{"labels": {"alertname": "A", "severity": 1}}]',
            "invalid payload: alert[0].labels.severity: label value must be a string (got int)",
        ),
        ('[{"labels": {"alertname": "A"}', "invalid payload: payload: not valid JSON"),
    ],
    ids=["label-not-string", "not-json"],
)
async def test_enqueue_of_a_bad_file_exits_2_with_the_message_and_inserts_nothing(
    db_url: str, session_factory: Factory, tmp_path: Path, content: str, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = await run_alertq_async(
        ["enqueue", "--file", str(bad), "--type", "disable"], alertq_env(db_url), cwd=tmp_path
    )
    assert result.returncode == 2, result.describe()
    assert message in result.message, result.describe()
    assert result.stdout == ""
    assert await row_count(session_factory) == 0


@SQLITE_ONLY
async def test_enqueue_of_a_missing_file_exits_2(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    result = await run_alertq_async(
        ["enqueue", "--file", str(tmp_path / "nope.json"), "--type", "disable"],
        alertq_env(db_url),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.describe()
    assert "cannot read" in result.message and "nope.json" in result.message
    assert await row_count(session_factory) == 0


async def test_enqueue_of_a_good_file_prints_the_new_id(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    await add_row(session_factory, "Existing")
    payload = one("CostSimV2Disabled", severity="P1", circuit_breaker="costsim_v2")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(payload))
    args = ["enqueue", "--file", str(good), "--type", "disable"]
    args += ["--incident", "inc-1", "--breaker", "costsim_v2"]

    result = await run_alertq_async(args, alertq_env(db_url), cwd=tmp_path)

    assert result.returncode == 0, result.describe()
    new_id = int(result.stdout.strip())
    stored = {r.id: r for r in await rows(session_factory)}
    assert new_id == 2 and set(stored) == {1, 2}
    row = stored[new_id]
    assert (row.payload, row.alert_type, row.incident_id, row.circuit_breaker_name) == (
        payload,
        "disable",
        "inc-1",
        "costsim_v2",
    )
    assert row.status == "pending" and row.fingerprint is not None


@SQLITE_ONLY
async def test_enqueue_reads_the_payload_from_stdin(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    result = await run_alertq_async(
        ["enqueue", "--file", "-", "--type", "enable"],
        alertq_env(db_url),
        cwd=tmp_path,
        stdin=json.dumps(one("FromStdin")),
    )
    assert result.returncode == 0, result.describe()
    (row,) = await rows(session_factory)
    assert row.id == int(result.stdout) and row.payload == one("FromStdin")


# --------------------------------------------------------------------------- operations


async def test_stats_json_reports_counts_by_status(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    for i in range(3):
        await add_row(session_factory, f"P{i}")
    await add_row(session_factory, "S0", "sent")
    await add_row(session_factory, "S1", "sent")
    await add_row(session_factory, "F0", "failed")

    result = await run_alertq_async(["stats", "--json"], alertq_env(db_url), cwd=tmp_path)

    assert result.returncode == 0, result.describe()
    stats = json.loads(result.stdout)
    assert (stats["pending"], stats["sent"], stats["failed"], stats["total"]) == (3, 2, 1, 6)
    oldest = datetime.fromisoformat(stats["oldest_pending_created_at"])
    assert abs((datetime.now(UTC) - oldest).total_seconds()) < 600
    assert stats["oldest_due_age_seconds"] >= 0


async def test_retry_failed_requeues_failed_rows_with_more_attempts(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    failed = [
        await add_row(session_factory, f"F{i}", "failed", attempts=3, max_attempts=3)
        for i in range(2)
    ]
    sent = await add_row(session_factory, "S", "sent", attempts=1)

    result = await run_alertq_async(
        ["retry-failed", "--max-retries", "2"], alertq_env(db_url), cwd=tmp_path
    )

    assert result.returncode == 0, result.describe()
    assert result.stdout.strip() == "2 rows queued again"
    got = {r.id: r for r in await rows(session_factory)}
    for row_id in failed:
        assert (got[row_id].status, got[row_id].max_attempts) == ("pending", 5)
        assert got[row_id].next_attempt_at <= datetime.now(UTC)
    assert got[sent].status == "sent"


async def test_purge_deletes_only_old_rows_of_the_given_statuses(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    old_sent = await add_row(session_factory, "OldSent", "sent", created=old)
    old_failed = await add_row(session_factory, "OldFailed", "failed", created=old)
    keep = {
        await add_row(session_factory, "OldPending", "pending", created=old),
        await add_row(session_factory, "OldSuperseded", "superseded", created=old),
        await add_row(session_factory, "NewSent", "sent"),
        await add_row(session_factory, "NewFailed", "failed"),
    }

    result = await run_alertq_async(
        ["purge", "--older-than", "30d", "--status", "sent,failed"],
        alertq_env(db_url),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.describe()
    assert result.stdout.strip() == "purged 2 rows"
    remaining = {r.id for r in await rows(session_factory)}
    assert remaining == keep and not remaining & {old_sent, old_failed}


async def test_purge_refuses_pending_rows_and_deletes_nothing(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    await add_row(session_factory, "OldPending", created=old)
    await add_row(session_factory, "OldSent", "sent", created=old)

    result = await run_alertq_async(
        ["purge", "--older-than", "30d", "--status", "sent,pending"],
        alertq_env(db_url),
        cwd=tmp_path,
    )

    assert result.returncode == 2, result.describe()
    assert "refusing to purge pending rows" in result.message
    assert await row_count(session_factory) == 2


@SQLITE_ONLY
async def test_purge_rejects_a_bad_duration(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    await add_row(session_factory, "OldSent", "sent", created=datetime.now(UTC) - timedelta(40))
    result = await run_alertq_async(
        ["purge", "--older-than", "soon"], alertq_env(db_url), cwd=tmp_path
    )
    assert result.returncode == 2, result.describe()
    assert "invalid duration 'soon'" in result.message
    assert await row_count(session_factory) == 1


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_db_upgrade_twice_on_postgres_is_idempotent_and_keeps_rows(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    await add_row(session_factory, "Survivor")
    head = head_revision(db_url)
    env = alertq_env(db_url)

    for _ in range(2):
        result = await run_alertq_async(["db", "upgrade"], env, cwd=tmp_path)
        assert result.returncode == 0, result.describe()
        assert result.stdout.strip() == f"schema at {head}"

    assert [r.payload for r in await rows(session_factory)] == [one("Survivor")]


async def test_db_upgrade_creates_a_fresh_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    env = alertq_env(url)
    first = await run_alertq_async(["db", "upgrade"], env, cwd=tmp_path)
    again = await run_alertq_async(["db", "upgrade"], env, cwd=tmp_path)
    assert first.returncode == again.returncode == 0, first.describe() + again.describe()
    head = head_revision(url)
    assert await asyncio.to_thread(migrate.current, url) == head
    assert first.stdout.strip() == again.stdout.strip() == f"schema at {head}"


# --------------------------------------------------------------------------- configuration


async def test_lease_not_longer_than_timeout_is_refused_with_exit_2(tmp_path: Path) -> None:
    env = alertq_env(
        f"sqlite+aiosqlite:///{tmp_path / 'q.db'}",
        "http://127.0.0.1:9",
        lease_seconds=5,
        alertmanager_timeout=10,
        alertmanager_username="svc",
        alertmanager_password="hunter2-do-not-print",
    )
    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "invalid configuration" in result.message
    assert "lease_seconds (5.0) must exceed alertmanager_timeout (10.0)" in result.message
    assert "hunter2" not in result.stdout + result.stderr
    assert not (tmp_path / "q.db").exists()  # refused before touching the database


async def test_an_unbounded_lease_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    """It once started a worker whose every claim overflowed a datetime, logging a
    traceback a second and delivering nothing."""
    env = alertq_env(
        f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", "http://127.0.0.1:9", lease_seconds=1e12
    )
    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert result.stderr.strip().splitlines() == [
        "alertq: invalid configuration: lease_seconds: Input should be less than or equal to 3600"
    ]
    assert not (tmp_path / "q.db").exists()


async def test_invalid_alertmanager_url_is_refused_without_echoing_its_password(
    tmp_path: Path,
) -> None:
    env = alertq_env(
        f"sqlite+aiosqlite:///{tmp_path / 'q.db'}", "ftp://svc:hunter2-secret@am.example:9093"
    )
    result = await run_alertq_async(["stats"], env, cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert "must start with http:// or https://" in result.message
    assert "hunter2" not in result.stdout + result.stderr
