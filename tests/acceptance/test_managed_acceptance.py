"""Acceptance: managed alerts and heartbeats in a real Alertmanager (resolve_timeout 10 s).

The CLI runs in subprocesses, workers in-process on a real clock. Alertmanager keeps
alerts in memory, so what it shows is exactly what alertq has kept sending it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from alertq.alerts import label_fingerprint
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.engine import AlertWorker
from alertq.managed import HEARTBEAT_ALERTNAME
from alertq.models import CostSimAlertQueueModel, ManagedAlertModel
from tests.acceptance.test_breaker_acceptance import (
    RESEND,
    Factory,
    _resolved_notification,
    cli,
    wait_for,
    webhook,  # noqa: F401  (fixture)
    worker_settings,
)
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.stub import StubAlertmanager

DISK = {"alertname": "DiskFull", "host": "db1"}
DISK_ARGS = ["alertname=DiskFull", "host=db1"]
ROUTE = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}


async def am_alerts(am: AlertmanagerProcess, **labels: str) -> list[dict[str, Any]]:
    matchers = [f'{k}="{v}"' for k, v in labels.items()]
    return await asyncio.to_thread(am.alerts, None, matchers)


class Workers:
    """``n`` workers in this process, each with its own engine (its own connections)."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.engines = [create_engine(settings) for _ in range(n)]
        self.workers = [AlertWorker(settings, create_session_factory(e)) for e in self.engines]
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Workers:
        self.tasks = [asyncio.create_task(w.run(self.stop)) for w in self.workers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)
        for engine in self.engines:
            await engine.dispose()


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_fired_alert_stays_active_for_a_minute_then_resolves_with_the_same_fingerprint(
    db_url: str,
    session_factory: Factory,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    webhook: StubAlertmanager,  # noqa: F811
    tmp_path: Path,
) -> None:
    """endsAt is 4 × 5 s and resolve_timeout 10 s: without keep-alive Alertmanager would
    resolve the alert after 20 s."""
    am = alertmanager_factory(
        resolve_timeout="10s", webhook_url=f"{webhook.url}/api/v2/alerts", route=ROUTE
    )
    async with Workers(worker_settings(db_url, am), 1):
        await cli(db_url, tmp_path, "fire", *DISK_ARGS, "--annotation", "summary=disk full")
        alerts, _ = await wait_for(lambda: am_alerts(am, **DISK), within=10)
        fingerprint = alerts[0]["fingerprint"]
        assert fingerprint == label_fingerprint(DISK)
        polls = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alerts = await am_alerts(am, **DISK)
            assert len(alerts) == 1, f"alert gone after {polls} polls"
            assert alerts[0]["status"]["state"] == "active"
            assert alerts[0]["fingerprint"] == fingerprint
            assert alerts[0]["annotations"] == {"summary": "disk full"}
            polls += 1
            await asyncio.sleep(1.0)  # the poll cadence the acceptance asks for
        assert polls >= 50

        started = time.monotonic()
        await cli(db_url, tmp_path, "resolve", *DISK_ARGS)
        await wait_for(lambda: _gone(am, **DISK), within=2 * RESEND, interval=0.2)
        took = time.monotonic() - started
        resolved, _ = await wait_for(
            lambda: _resolved_notification(webhook, fingerprint), within=15
        )
        assert resolved["labels"] == DISK
        async with session_factory() as s:
            q = CostSimAlertQueueModel
            rows = (await s.scalars(select(q).order_by(q.id))).all()
        assert [r.alert_type for r in rows] == ["managed_firing", "managed_resolving"]
        print(f"resolved {took:.1f}s after `alertq resolve` started; {polls} polls")


async def _gone(am: AlertmanagerProcess, **labels: str) -> bool:
    return not await am_alerts(am, **labels)


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_restarted_alertmanager_learns_a_managed_alert_within_one_interval(
    db_url: str,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    tmp_path: Path,
) -> None:
    am = alertmanager_factory(resolve_timeout="10s")
    async with Workers(worker_settings(db_url, am), 1):
        await cli(db_url, tmp_path, "fire", *DISK_ARGS)
        await wait_for(lambda: am_alerts(am, **DISK), within=10)
        await asyncio.to_thread(am.restart, True)  # Alertmanager keeps alerts in memory only
        restarted_at = datetime.now(UTC)
        alerts, took = await wait_for(lambda: am_alerts(am, **DISK), within=3 * RESEND)
        assert took <= RESEND + 2.0, f"active again only after {took:.1f}s"
        assert alerts[0]["status"]["state"] == "active"
        updated = datetime.fromisoformat(alerts[0]["updatedAt"])
        assert updated >= restarted_at - timedelta(seconds=1)
        print(f"active again {took:.1f}s after the restart")


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_alert_fired_with_an_expiry_resolves_by_itself(
    db_url: str,
    session_factory: Factory,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    webhook: StubAlertmanager,  # noqa: F811
    tmp_path: Path,
) -> None:
    am = alertmanager_factory(
        resolve_timeout="10s", webhook_url=f"{webhook.url}/api/v2/alerts", route=ROUTE
    )
    async with Workers(worker_settings(db_url, am), 1):
        started = time.monotonic()
        await cli(db_url, tmp_path, "fire", *DISK_ARGS, "--expires-in", "20s")
        (alert,), _ = await wait_for(lambda: am_alerts(am, **DISK), within=10)
        assert alert["status"]["state"] == "active"
        await wait_for(lambda: _gone(am, **DISK), within=30, interval=0.5)
        took = time.monotonic() - started
        assert 19 <= took <= 20 + 2 * RESEND, f"gone after {took:.1f}s"
        await wait_for(lambda: _resolved_notification(webhook, label_fingerprint(DISK)), within=15)
        # Alertmanager resolved it at endsAt (= the expiry); alertq's next pass resolves
        # it too, so it is re-sent as resolved, not as firing.
        m, _ = await wait_for(lambda: _resolved_managed(session_factory), within=2 * RESEND)
        assert m.resolved_at == m.expires_at
        print(f"expired and resolved {took:.1f}s after `alertq fire --expires-in 20s`")


async def _resolved_managed(factory: Factory) -> ManagedAlertModel | None:
    async with factory() as s:
        m = (await s.scalars(select(ManagedAlertModel))).one()
    return m if m.state == "resolved" else None


def _missed_metric() -> float:
    return REGISTRY.get_sample_value("alertq_heartbeats_missed_total") or 0.0


@pytest.mark.slow
@pytest.mark.alertmanager
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_missed_heartbeat_fires_once_across_four_workers_and_a_ping_resolves_it(
    db_url: str,
    session_factory: Factory,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    webhook: StubAlertmanager,  # noqa: F811
    tmp_path: Path,
) -> None:
    am = alertmanager_factory(
        resolve_timeout="10s", webhook_url=f"{webhook.url}/api/v2/alerts", route=ROUTE
    )
    labels = {"alertname": HEARTBEAT_ALERTNAME, "heartbeat": "nightly", "team": "ops"}
    before = _missed_metric()
    async with Workers(worker_settings(db_url, am), 4):
        # The ping is recorded somewhere inside the CLI's run: bound it from both sides.
        calling = time.monotonic()
        await cli(db_url, tmp_path, "heartbeat", "nightly", "--within", "10s", "-l", "team=ops")
        returned = time.monotonic()
        (alert,), _ = await wait_for(lambda: am_alerts(am, **labels), within=30, interval=0.2)
        fired = time.monotonic()
        tick = RESEND / 5
        assert fired - calling >= 10, f"HeartbeatMissing {fired - calling:.1f}s after the ping"
        took = fired - returned
        assert took <= 10 + tick + 2.0, f"HeartbeatMissing after {took:.1f}s"
        assert alert["labels"] == labels and alert["status"]["state"] == "active"
        # Two more intervals: still one detection among the four workers' passes.
        deadline = time.monotonic() + 2 * RESEND
        while time.monotonic() < deadline:
            assert len(await am_alerts(am, **labels)) == 1
            await asyncio.sleep(0.5)
        assert _missed_metric() - before == 1

        await cli(db_url, tmp_path, "heartbeat", "nightly", "--within", "10s", "-l", "team=ops")
        await wait_for(lambda: _gone(am, **labels), within=2 * RESEND, interval=0.2)
        await wait_for(
            lambda: _resolved_notification(webhook, label_fingerprint(labels)), within=15
        )
    async with session_factory() as s:
        q = CostSimAlertQueueModel
        rows = (await s.scalars(select(q).order_by(q.id))).all()
    assert [r.alert_type for r in rows] == ["managed_firing", "managed_resolving"]
    print(f"HeartbeatMissing active {took:.1f}s after the last ping")
