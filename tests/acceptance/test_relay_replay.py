"""Restart replay, acceptance: 5,000 relayed live alerts and an Alertmanager restart (its
memory wiped): all the firing ones are listed again within 15 s, and the resolved ones
come back as resolved, on SQLite and PostgreSQL. Plus the detection rules of
:class:`ReplayService` and the liveness rule.

Split by test tier: these are the acceptance tests; see also
``tests/unit/test_relay_replay.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from alertq.api import create_app
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.delivery import AlertmanagerClient
from alertq.engine import AlertWorker
from alertq.opsview import OpsContext
from alertq.replay import ReplayService
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.processes import wait_until

FIRING, RESOLVED = 4_500, 500


def rfc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def received(am: AlertmanagerProcess, status: str) -> float:
    """Alerts of ``status`` the Alertmanager received since it started (all API versions)."""
    text = httpx.get(f"{am.url}/metrics", timeout=10, trust_env=False).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "alertmanager_alerts_received_total" and s.labels["status"] == status
    )


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_restarted_alertmanager_relearns_every_live_alert_within_15s(
    db_url: str, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    am = alertmanager_factory()
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[am.url],
        alertmanager_timeout=10.0,
        lease_seconds=20.0,
        replay_interval=0.5,
    )
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    now = datetime.now(UTC)
    alerts: list[dict[str, Any]] = [
        {"labels": {"alertname": "Replay", "n": str(i)}, "endsAt": rfc(now + timedelta(hours=1))}
        for i in range(FIRING)
    ]
    alerts += [
        {
            "labels": {"alertname": "ReplayResolved", "n": str(i)},
            "startsAt": rfc(now - timedelta(minutes=10)),
            "endsAt": rfc(now - timedelta(minutes=1)),
        }
        for i in range(RESOLVED)
    ]
    app = create_app(OpsContext(settings, factory))
    stop = asyncio.Event()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as relay:
            for start in range(0, len(alerts), 250):
                response = await relay.post("/api/v2/alerts", json=alerts[start : start + 250])
                assert response.status_code == 200, response.text
        await AlertWorker(settings, factory).run(asyncio.Event(), drain=True)
        assert len(await asyncio.to_thread(am.alerts, None, 'alertname="Replay"')) == FIRING

        async with AlertmanagerClient.from_settings(settings) as client:
            replay = ReplayService(settings, factory, client)
            target = client.targets[0]
            metric = "alertq_replayed_alerts_total"
            before = REGISTRY.get_sample_value(metric, {"alertmanager": target}) or 0.0
            assert await replay.run_once() == 0  # first sight: a baseline, no replay
            assert await replay.run_once() == 0  # same uptime: nothing to do
            task = asyncio.create_task(replay.run(stop))

            await asyncio.to_thread(am.restart, True)  # state wiped, as a real restart
            back = time.monotonic()

            async def all_listed_again() -> bool:
                listed = await asyncio.to_thread(am.alerts, None, 'alertname="Replay"')
                return len(listed) == FIRING

            await wait_until(all_listed_again, within=15, message="firing alerts not replayed")
            elapsed = time.monotonic() - back
            await wait_until(lambda: received(am, "resolved") >= RESOLVED, within=15)
            assert received(am, "resolved") == RESOLVED
            resolved_listed = await asyncio.to_thread(am.alerts, None, 'alertname="ReplayResolved"')
            assert resolved_listed == []  # came back resolved, not firing
            after = REGISTRY.get_sample_value(metric, {"alertmanager": target}) or 0.0
            assert after - before == FIRING + RESOLVED
            stop.set()
            await task
        print(f"replayed {FIRING + RESOLVED} alerts, all listed {elapsed:.2f}s after restart")
    finally:
        stop.set()
        await engine.dispose()
