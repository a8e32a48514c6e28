"""Acceptance: the breaker's alert in a real Alertmanager matches the breaker's state.

The long tests run the real CLI in subprocesses and a worker in-process against a real
Alertmanager (``alertmanager_factory``); the concurrency tests race real connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import label_fingerprint
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.models import CostSimAlertQueueModel
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]
RESEND = 5.0


async def queue(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        return sorted(await get_alert_driver(s).alerts_list(limit=1000), key=lambda r: r.id)


def worker_settings(db_url: str, am: AlertmanagerProcess, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [am.url],
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
        "concurrency": 1,
        "poll_interval": 0.2,
        "backoff_base": 0.5,
        "backoff_cap": 2.0,
        "resend_interval": RESEND,
        "instance": "acceptance",
    }
    values.update(overrides)
    return Settings(**values)


async def cli(db_url: str, cwd: Path, *args: str) -> str:
    """Run ``alertq`` in a subprocess against ``db_url``; return its output."""
    env = {
        **os.environ,
        "ALERTQ_DATABASE_URL": db_url,
        "ALERTQ_RESEND_INTERVAL": str(RESEND),
        "ALERTQ_INSTANCE": "acceptance",
        "ALERTQ_CONFIG_FILE": str(cwd / "absent.toml"),
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alertq",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, f"alertq {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


async def am_alerts(am: AlertmanagerProcess, incident_id: str) -> list[dict[str, Any]]:
    """Alertmanager's alerts of one incident (off the event loop: the worker runs on it)."""
    return await asyncio.to_thread(am.alerts, None, f'incident_id="{incident_id}"')


async def wait_for(
    check: Callable[[], Any], within: float, interval: float = 0.25
) -> tuple[Any, float]:
    """Poll the async ``check`` until it returns something truthy; (result, seconds taken)."""
    started = time.monotonic()
    while True:
        result = await check()
        if result:
            return result, time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)  # polling cadence, not synchronisation


@pytest.fixture
def webhook() -> Iterator[StubAlertmanager]:
    """Records Alertmanager's webhook notifications (posted to the stub's alerts path)."""
    with StubAlertmanager() as stub:
        yield stub


def notifications(webhook: StubAlertmanager) -> list[dict[str, Any]]:
    """Every alert of every webhook notification received so far."""
    out: list[dict[str, Any]] = []
    for request in webhook.received_requests:
        body = json.loads(request.raw)
        out.extend(body.get("alerts", []))
    return out


# --------------------------------------------------------------------------- the alert stays true


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_open_breaker_stays_active_for_a_minute_then_resolves_the_same_alert(
    db_url: str,
    session_factory: Factory,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    webhook: StubAlertmanager,
    tmp_path: Path,
) -> None:
    """resolve_timeout 10 s and endsAt 4 × 5 s: without keep-alives the alert would be
    resolved by Alertmanager after 20 s. It must stay active for the whole minute."""
    am = alertmanager_factory(
        resolve_timeout="10s",
        webhook_url=f"{webhook.url}/api/v2/alerts",
        route={"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
    )
    settings = worker_settings(db_url, am)
    worker = AlertWorker(settings, session_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await cli(db_url, tmp_path, "breaker", "trip", "costsim_v2", "--reason", "drift")
        (state,) = json.loads(
            await cli(db_url, tmp_path, "breaker", "status", "costsim_v2", "--json")
        )
        incident_id = state["incident_id"]
        assert state["disabled"] and incident_id

        alerts, _ = await wait_for(lambda: am_alerts(am, incident_id), within=10)
        fingerprint = alerts[0]["fingerprint"]
        polls = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alerts = await am_alerts(am, incident_id)
            assert len(alerts) == 1, f"alert gone after {polls} polls: {alerts}"
            assert alerts[0]["status"]["state"] == "active"
            assert alerts[0]["fingerprint"] == fingerprint
            assert alerts[0]["labels"]["alertname"] == "CircuitBreakerOpen"
            polls += 1
            await asyncio.sleep(1.0)  # the poll cadence the acceptance asks for
        assert polls >= 50
        assert worker.stats.keepalives >= 60 / RESEND - 2
        assert not [n for n in notifications(webhook) if n["status"] == "resolved"]

        reset_started = time.monotonic()
        await cli(db_url, tmp_path, "breaker", "reset", "costsim_v2", "--reason", "fixed")
        # Resolved alerts leave GET /api/v2/alerts (Alertmanager filters out endsAt < now).
        await wait_for(lambda: _gone(am, incident_id), within=2 * RESEND, interval=0.2)
        took = time.monotonic() - reset_started  # from the start of the reset command
        assert took <= 2 * RESEND
        resolved, _ = await wait_for(
            lambda: _resolved_notification(webhook, fingerprint), within=15
        )
        assert resolved["labels"]["incident_id"] == incident_id
        firing_row, resolving_row = await queue(session_factory)
        assert (firing_row.alert_type, resolving_row.alert_type) == ("disable", "enable")
        assert firing_row.fingerprint == resolving_row.fingerprint == fingerprint
        assert label_fingerprint(resolving_row.payload[0]["labels"]) == fingerprint
        print(f"resolved in Alertmanager {took:.1f}s after `breaker reset` started; {polls} polls")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _gone(am: AlertmanagerProcess, incident_id: str) -> bool:
    return not await am_alerts(am, incident_id)


async def _resolved_notification(
    webhook: StubAlertmanager, fingerprint: str
) -> dict[str, Any] | None:
    for alert in notifications(webhook):
        if alert["status"] == "resolved" and alert["fingerprint"] == fingerprint:
            return alert
    return None


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_restarted_alertmanager_learns_the_open_breaker_within_one_interval(
    db_url: str,
    session_factory: Factory,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
) -> None:
    am = alertmanager_factory(resolve_timeout="10s")
    settings = worker_settings(db_url, am)
    state = await CircuitBreaker(settings, session_factory).disable("cb", "drift", "ops")
    assert state.incident_id is not None
    incident_id = state.incident_id
    worker = AlertWorker(settings, session_factory)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_for(lambda: am_alerts(am, incident_id), within=10)
        await asyncio.to_thread(am.restart, True)  # Alertmanager keeps alerts in memory only
        restarted_at = datetime.now(UTC)
        alerts, took = await wait_for(lambda: am_alerts(am, incident_id), within=3 * RESEND)
        # Design bound: sends are at most one interval apart. The margin covers polling.
        assert took <= RESEND + 2.0, f"active again only after {took:.1f}s"
        assert alerts[0]["status"]["state"] == "active"
        updated = datetime.fromisoformat(alerts[0]["updatedAt"])
        assert updated >= restarted_at - timedelta(seconds=1)  # learnt after the restart
        print(f"active again {took:.1f}s after the restart")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize(
    ("threshold", "existing"),
    [(1, False), (1, True), (3, False)],
    ids=["first-use", "existing-row", "threshold-3"],
)
async def test_concurrent_drift_reports_trip_the_breaker_once(
    db_url: str, session_factory: Factory, threshold: int, existing: bool
) -> None:
    """8 callers, each on its own connection, report drift over the threshold at once:
    one incident, one firing alert. ``first-use`` races the state row's creation,
    ``existing-row`` the row lock alone (every caller would trip without it)."""
    settings = Settings(database_url=db_url, failure_threshold=threshold, drift_threshold=0.2)
    breakers = [CircuitBreaker(settings, session_factory) for _ in range(8)]
    if existing:
        assert not (await breakers[0].report_drift("cb", 0.0)).disabled
    states = await asyncio.gather(*(cb.report_drift("cb", 0.9) for cb in breakers))
    incidents = await breakers[0].list_incidents(include_resolved=True)
    assert len(incidents) == 1
    rows = await queue(session_factory)
    assert [(r.alert_type, r.incident_id) for r in rows] == [("disable", incidents[0].id)]
    assert sum(1 for s in states if s.disabled) == 8 - (threshold - 1)
    final = await breakers[0].get_state("cb")
    assert final is not None and final.disabled and final.incident_id == incidents[0].id
    assert final.consecutive_failures == threshold


async def test_concurrent_checks_after_the_ttl_recover_once(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    settings = Settings(database_url=db_url)
    breakers = [CircuitBreaker(settings, session_factory, clock=clock) for _ in range(8)]
    state = await breakers[0].disable("cb", "cool down", "ops", clock.now + timedelta(seconds=30))
    assert all(await asyncio.gather(*(cb.is_disabled("cb") for cb in breakers)))
    clock.advance(31)
    results = await asyncio.gather(*(cb.is_disabled("cb") for cb in breakers))
    assert results == [False] * 8
    (incident,) = await breakers[0].list_incidents(include_resolved=True)
    assert incident.id == state.incident_id and incident.resolved and incident.resolved_by == "ttl"
    rows = await queue(session_factory)
    assert [(r.alert_type, r.incident_id) for r in rows] == [
        ("disable", incident.id),
        ("enable", incident.id),
    ]


# --------------------------------------------------------------------------- rollback


class Rollback(Exception):
    pass


async def test_trip_in_a_rolled_back_transaction_leaves_no_trace(
    db_url: str, session_factory: Factory
) -> None:
    cb = CircuitBreaker(Settings(database_url=db_url, failure_threshold=2), session_factory)
    before = await cb.report_drift("cb", 0.9)  # committed: one failure counted
    assert before.consecutive_failures == 1 and not before.disabled

    with pytest.raises(Rollback):
        async with session_factory() as s, s.begin():
            tripped = await cb.report_drift("cb", 0.9, session=s)
            assert tripped.disabled  # visible inside the caller's transaction
            raise Rollback
    async with session_factory() as s:
        manual = await cb.disable("cb", "by hand", "ops", session=s)
        assert manual.disabled
        await s.rollback()

    assert await cb.get_state("cb") == before
    assert await cb.list_incidents(include_resolved=True) == []
    assert await queue(session_factory) == []


async def test_reset_in_a_rolled_back_transaction_leaves_the_breaker_open(
    db_url: str, session_factory: Factory
) -> None:
    cb = CircuitBreaker(Settings(database_url=db_url), session_factory)
    opened = await cb.disable("cb", "maintenance", "ops")
    async with session_factory() as s:
        assert not (await cb.enable("cb", "ops", session=s)).disabled
        await s.rollback()
    assert await cb.get_state("cb") == opened
    (incident,) = await cb.list_incidents()
    assert not incident.resolved
    assert [r.alert_type for r in await queue(session_factory)] == ["disable"]
