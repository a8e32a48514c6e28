"""The circuit breaker's transitions (on SQLite and PostgreSQL) and its alert builders.

Split by test tier: these are the integration tests; see also ``tests/unit/test_breaker.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from alertq.alerts import (
    InvalidAlertPayload,
    label_fingerprint,
)
from alertq.breaker import CircuitBreaker
from alertq.cli import app
from alertq.config import Settings
from alertq.driver import get_alert_driver
from alertq.models import CostSimAlertQueueModel
from tests.support.clock import FakeClock
from tests.unit.test_breaker import parse

Factory = async_sessionmaker[AsyncSession]


def breaker(db_url: str, factory: Factory, clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    values: dict[str, Any] = {
        "database_url": db_url,
        "drift_threshold": 0.2,
        "failure_threshold": 3,
        "schema_error_threshold": 5,
        "severity_p1_drift": 0.5,
        "severity_p2_drift": 0.3,
        "instance": "test-instance",
    }
    values.update(overrides)
    return CircuitBreaker(Settings(**values), factory, clock=clock)


async def queue(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        return sorted(await get_alert_driver(s).alerts_list(limit=1000), key=lambda r: r.id)


async def test_drift_trips_after_consecutive_reports_above_threshold(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    for expected in (1, 2):
        state = await cb.report_drift("cb", 0.55, sample_count=20)
        assert not state.disabled and state.consecutive_failures == expected
        assert await queue(session_factory) == []
    state = await cb.report_drift("cb", 0.55, sample_count=20, details={"model": "v2"})
    assert state.disabled and state.incident_id is not None
    assert (state.disabled_by, state.disabled_until) == ("circuit_breaker", None)
    assert await cb.is_disabled("cb")
    (inc,) = await cb.list_incidents()
    assert (inc.id, inc.severity, inc.drift_score, inc.sample_count) == (
        state.incident_id,
        "P1",
        0.55,
        20,
    )
    assert inc.details == {"model": "v2"} and inc.timestamp == clock.now and not inc.resolved
    (row,) = await queue(session_factory)
    assert (row.alert_type, row.circuit_breaker_name, row.incident_id, row.status) == (
        "disable",
        "cb",
        inc.id,
        "pending",
    )
    labels = row.payload[0]["labels"]
    assert labels["incident_id"] == inc.id and labels["instance"] == "test-instance"
    assert row.fingerprint == label_fingerprint(labels)


async def test_report_within_threshold_resets_the_count(
    db_url: str, session_factory: Factory
) -> None:
    cb = breaker(db_url, session_factory, FakeClock())
    await cb.report_drift("cb", 0.9)
    await cb.report_drift("cb", 0.9)
    state = await cb.report_drift("cb", 0.2)  # at the threshold is within it
    assert state.consecutive_failures == 0 and not state.disabled
    await cb.report_drift("cb", 0.9)
    state = await cb.report_drift("cb", 0.9)
    assert state.consecutive_failures == 2 and not state.disabled
    assert (await cb.report_drift("cb", 0.9)).disabled


@pytest.mark.parametrize(
    ("score", "severity"), [(0.25, "P3"), (0.3, "P2"), (0.49, "P2"), (0.5, "P1")]
)
async def test_severity_follows_the_drift_score(
    db_url: str, session_factory: Factory, score: float, severity: str
) -> None:
    cb = breaker(db_url, session_factory, FakeClock(), failure_threshold=1)
    state = await cb.report_drift("cb", score)
    (inc,) = await cb.list_incidents()
    assert state.incident_id == inc.id and inc.severity == severity
    (row,) = await queue(session_factory)
    assert row.payload[0]["labels"]["severity"] == severity


async def test_reports_while_open_change_nothing(db_url: str, session_factory: Factory) -> None:
    cb = breaker(db_url, session_factory, FakeClock(), failure_threshold=1)
    first = await cb.report_drift("cb", 0.9)
    again = await cb.report_drift("cb", 0.95)
    calm = await cb.report_drift("cb", 0.0)
    assert first == again == calm
    assert len(await cb.list_incidents(include_resolved=True)) == 1
    assert len(await queue(session_factory)) == 1


async def test_schema_errors_trip_at_the_threshold(db_url: str, session_factory: Factory) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    state = await cb.report_schema_error("cb", 4)
    assert not state.disabled and state.last_failure_at == clock.now
    assert await queue(session_factory) == []
    clock.advance(1)
    state = await cb.report_schema_error("cb", 5, {"field": "price"})
    assert state.disabled
    (inc,) = await cb.list_incidents()
    assert inc.severity == "P2" and "5 schema errors" in inc.reason
    assert inc.details == {"field": "price"}
    (row,) = await queue(session_factory)
    assert row.alert_type == "disable" and row.incident_id == inc.id


async def test_disable_is_idempotent(db_url: str, session_factory: Factory) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    until = clock.now + timedelta(hours=2)
    first = await cb.disable("cb", "maintenance", "alice", until)
    assert first.disabled and first.disabled_until == until and first.disabled_by == "alice"
    clock.advance(5)
    second = await cb.disable("cb", "again", "bob")
    assert second == first
    assert len(await cb.list_incidents(include_resolved=True)) == 1
    assert len(await queue(session_factory)) == 1
    with pytest.raises(ValueError, match="not in the future"):
        await cb.disable("other", "r", "alice", clock.now - timedelta(seconds=1))


async def test_enable_resolves_the_incident_with_an_alert_of_the_same_labels(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    closed = await cb.enable("cb", "alice")  # never used: stays closed, sends nothing
    assert not closed.disabled and await queue(session_factory) == []
    opened = await cb.disable("cb", "maintenance", "alice")
    clock.advance(30)
    state = await cb.enable("cb", "bob", "fixed")
    assert not state.disabled and state.incident_id is None and state.disabled_by is None
    assert state.consecutive_failures == 0 and state.updated_at == clock.now
    (inc,) = await cb.list_incidents(include_resolved=True)
    assert inc.id == opened.incident_id and inc.resolved
    assert (inc.resolved_at, inc.resolved_by, inc.resolution_notes) == (clock.now, "bob", "fixed")
    assert await cb.list_incidents() == []
    firing, resolving = await queue(session_factory)
    assert (firing.alert_type, resolving.alert_type) == ("disable", "enable")
    assert resolving.incident_id == inc.id
    assert firing.payload[0]["labels"] == resolving.payload[0]["labels"]
    assert firing.fingerprint == resolving.fingerprint
    assert parse(resolving.payload[0]["endsAt"]) == clock.now
    # The undelivered firing row is retired: only the resolved state is delivered.
    assert (firing.status, resolving.status) == ("superseded", "pending")
    again = await cb.enable("cb", "carol")
    assert again == state and len(await queue(session_factory)) == 2


async def test_ttl_expiry_closes_the_breaker_once(db_url: str, session_factory: Factory) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    state = await cb.disable("cb", "cool down", "alice", clock.now + timedelta(seconds=60))
    clock.advance(59)
    assert await cb.is_disabled("cb")
    clock.advance(1)
    assert not await cb.is_disabled("cb")
    assert not await cb.is_disabled("cb")
    (inc,) = await cb.list_incidents(include_resolved=True)
    assert inc.id == state.incident_id and inc.resolved and inc.resolved_by == "ttl"
    assert [r.alert_type for r in await queue(session_factory)] == ["disable", "enable"]
    after = await cb.get_state("cb")
    assert after is not None and not after.disabled and after.disabled_until is None


async def test_automatic_trips_get_the_default_ttl(db_url: str, session_factory: Factory) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock, failure_threshold=1, default_disable_ttl=120)
    state = await cb.report_drift("cb", 0.9)
    assert state.disabled_until == clock.now + timedelta(seconds=120)
    manual = await cb.disable("manual", "by hand", "alice")
    assert manual.disabled_until is None  # a manual trip without a TTL waits for a reset


async def test_an_expired_breaker_is_closed_before_the_next_report(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock, failure_threshold=1, default_disable_ttl=60)
    first = await cb.report_drift("cb", 0.9)
    clock.advance(61)
    second = await cb.report_drift("cb", 0.9)
    assert second.disabled and second.incident_id != first.incident_id
    old, new = sorted(await cb.list_incidents(include_resolved=True), key=lambda i: i.timestamp)
    assert (old.id, old.resolved, old.resolved_by) == (first.incident_id, True, "ttl")
    assert (new.id, new.resolved) == (second.incident_id, False)
    assert [r.alert_type for r in await queue(session_factory)] == ["disable", "enable", "disable"]


async def test_unknown_breakers_are_closed_and_reads_create_nothing(
    db_url: str, session_factory: Factory
) -> None:
    cb = breaker(db_url, session_factory, FakeClock())
    assert await cb.get_state("nope") is None
    assert not await cb.is_disabled("nope")
    assert await cb.list_states() == []
    assert await cb.list_incidents(include_resolved=True) == []


async def test_list_incidents_filters_and_orders_newest_first(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    cb = breaker(db_url, session_factory, clock)
    a = await cb.disable("a", "first", "ops")
    clock.advance(10)
    b = await cb.disable("b", "second", "ops")
    clock.advance(10)
    await cb.enable("a", "ops")
    clock.advance(10)
    c = await cb.disable("a", "third", "ops")
    assert [i.id for i in await cb.list_incidents()] == [c.incident_id, b.incident_id]
    every = await cb.list_incidents(include_resolved=True)
    assert [i.id for i in every] == [c.incident_id, b.incident_id, a.incident_id]
    assert [i.id for i in await cb.list_incidents("a", include_resolved=True)] == [
        c.incident_id,
        a.incident_id,
    ]
    assert len(await cb.list_incidents(include_resolved=True, limit=1)) == 1
    assert [s.name for s in await cb.list_states()] == ["a", "b"]


async def test_a_bad_setting_fails_the_trip_before_anything_is_written(
    db_url: str, session_factory: Factory
) -> None:
    cb = breaker(db_url, session_factory, FakeClock(), instance="")
    with pytest.raises(InvalidAlertPayload, match="instance"):
        await cb.disable("cb", "maintenance", "alice")
    assert await cb.get_state("cb") is None
    assert await cb.list_incidents(include_resolved=True) == []
    assert await queue(session_factory) == []


def test_cli_breaker_commands(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "ALERTQ_DATABASE_URL": db_url,
        "ALERTQ_FAILURE_THRESHOLD": "2",
        "ALERTQ_CONFIG_FILE": str(tmp_path / "absent.toml"),
    }
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    run("breaker", "report-drift", "cb", "0.9")
    (state,) = json.loads(run("breaker", "status", "cb", "--json"))
    assert state["consecutive_failures"] == 1 and not state["disabled"]
    assert "cb" in run("breaker", "report-drift", "cb", "0.9")
    (inc,) = json.loads(run("breaker", "incidents", "--json"))
    assert (inc["circuit_breaker_name"], inc["severity"], inc["resolved"]) == ("cb", "P1", False)
    assert "already open" in run("breaker", "trip", "cb", "--reason", "again")
    assert inc["id"] in run("breaker", "reset", "cb", "--reason", "fixed")
    assert "already closed" in run("breaker", "reset", "cb")
    assert json.loads(run("breaker", "incidents", "--json")) == []
    (done,) = json.loads(run("breaker", "incidents", "--all", "--json"))
    assert done["resolved"] and done["resolution_notes"] == "fixed"
    assert done["resolved_by"].startswith("cli")

    before = datetime.now(UTC)
    assert "OPEN" in run("breaker", "trip", "other", "--reason", "maintenance", "--until", "2h")
    (other,) = json.loads(run("breaker", "status", "other", "--json"))
    until = datetime.fromisoformat(other["disabled_until"])
    assert timedelta(hours=2) <= until - before < timedelta(hours=2, minutes=1)
    assert other["disabled_reason"] == "maintenance"
    table = run("breaker", "status")
    assert "cb" in table and "other" in table and "OPEN" in table
    assert "other" in run("breaker", "incidents")
    run("breaker", "trip", "x", "--reason", "r", "--until", "soon", code=2)
    run("breaker", "status", "nope", code=1)
