"""The circuit breaker is a user of managed alerts: a trip fires one with the breaker's
labels, a reset resolves it, and its queue rows keep the breaker's types and incident."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import breaker_labels
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.driver import get_breaker_driver
from alertq.managed import ManagedAlerts, OwnedByAlertq
from alertq.models import CostSimAlertQueueModel
from tests.support.clock import FakeClock

Factory = async_sessionmaker[AsyncSession]


async def test_trip_fires_a_managed_alert_with_the_breaker_labels_and_reset_resolves_it(
    db_url: str, session_factory: Factory
) -> None:
    settings = Settings(database_url=db_url)
    clock = FakeClock()
    breaker = CircuitBreaker(settings, session_factory, clock=clock)
    alerts = ManagedAlerts(settings, session_factory, clock=clock)
    state = await breaker.disable("costsim_v2", "drift by hand", "ops")
    assert state.incident_id is not None
    async with session_factory() as s:
        incident = await get_breaker_driver(s).incidents_get(state.incident_id)
        assert incident is not None
        labels = breaker_labels(incident, instance=settings.instance)
    (firing,) = await alerts.list_alerts()
    assert firing.labels == labels and firing.state == "firing"
    assert firing.starts_at == clock.now
    clock.advance(10)
    await breaker.enable("costsim_v2", "ops", "fixed")
    (resolved,) = await alerts.list_alerts()
    assert resolved.state == "resolved" and resolved.resolved_at == clock.now
    assert "closed again" in resolved.annotations["summary"]
    async with session_factory() as s:
        rows = (await s.scalars(select(CostSimAlertQueueModel).order_by("id"))).all()
    assert [(r.alert_type, r.incident_id) for r in rows] == [
        ("disable", state.incident_id),
        ("enable", state.incident_id),
    ]
    # The managed API leaves a breaker's alert to the breaker (red-team pass 4).
    with pytest.raises(OwnedByAlertq, match="circuit breaker's"):
        await alerts.resolve(labels)
