"""The Python API applies :mod:`alertq.limits` before any statement runs.

"Before any statement" is proven without mocks: the services get a session factory for a
PostgreSQL port nothing listens on. A check that ran after connecting would fail with a
connection error instead of the ``ValueError`` the tests expect. Each table also has a
control row showing the same call does reach for the database when the arguments are good.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import ops
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.enqueue import enqueue_alert
from tests.support import free_port

Factory = async_sessionmaker[AsyncSession]
Call = Callable[[CircuitBreaker, Factory], Awaitable[Any]]
PAYLOAD = [{"labels": {"alertname": "A"}}]


@pytest.fixture
async def nowhere() -> AsyncIterator[tuple[Settings, Factory]]:
    """Settings and a session factory for a database that refuses connections."""
    settings = Settings(database_url=f"postgresql+asyncpg://u:p@127.0.0.1:{free_port()}/x")
    engine = create_engine(settings)
    try:
        yield settings, create_session_factory(engine)
    finally:
        await engine.dispose()


async def enqueue_with(factory: Factory, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"alert_type": "t", **kwargs}
    async with factory() as session:
        return await enqueue_alert(session, PAYLOAD, **args)


def old() -> datetime:
    return datetime(2020, 1, 1, tzinfo=UTC)


BAD_CALLS: list[tuple[str, Call, str]] = [
    ("trip-spaced-name", lambda cb, f: cb.disable("spaced name", "r", "t"), "name"),
    ("trip-empty-name", lambda cb, f: cb.disable("", "r", "t"), "name"),
    ("trip-long-name", lambda cb, f: cb.disable("n" * 201, "r", "t"), "name"),
    ("trip-empty-reason", lambda cb, f: cb.disable("cb", "", "t"), "reason"),
    ("trip-long-reason", lambda cb, f: cb.disable("cb", "r" * 1001, "t"), "reason"),
    ("reset-blank-reason", lambda cb, f: cb.enable("cb", "t", " "), "reason"),
    ("reset-bad-name", lambda cb, f: cb.enable("a b", "t"), "name"),
    ("drift-nan", lambda cb, f: cb.report_drift("cb", float("nan")), "drift_score"),
    ("drift-inf", lambda cb, f: cb.report_drift("cb", float("inf")), "drift_score"),
    ("drift-samples", lambda cb, f: cb.report_drift("cb", 0.5, 99_999_999_999), "sample_count"),
    ("drift-samples-0", lambda cb, f: cb.report_drift("cb", 0.5, 0), "sample_count"),
    ("schema-errors", lambda cb, f: cb.report_schema_error("cb", 2**40), "error_count"),
    ("incidents-limit", lambda cb, f: cb.list_incidents(None, False, 10**20), "limit"),
    ("incidents-name", lambda cb, f: cb.list_incidents("a b"), "name"),
    ("retry-int32", lambda cb, f: ops.retry_failed(f, 2_147_483_647), "max_retries"),
    ("retry-0", lambda cb, f: ops.retry_failed(f, 0), "max_retries"),
    ("purge-bogus", lambda cb, f: ops.purge(f, old(), ["bogus"]), "unknown status"),
    ("purge-pending", lambda cb, f: ops.purge(f, old(), ["pending"]), "pending"),
    ("purge-naive", lambda cb, f: ops.purge(f, datetime(2020, 1, 1), ["sent"]), "naive"),
    ("list-status", lambda cb, f: ops.list_alerts(f, "bogus", 10), "unknown status"),
    ("list-limit", lambda cb, f: ops.list_alerts(f, None, 10**9), "limit"),
    ("enqueue-incident", lambda cb, f: enqueue_with(f, incident_id="i" * 16_000), "incident_id"),
    ("enqueue-type", lambda cb, f: enqueue_with(f, alert_type="t" * 101), "alert_type"),
    (
        "enqueue-breaker",
        lambda cb, f: enqueue_with(f, circuit_breaker_name="b" * 201),
        "circuit_breaker_name",
    ),
]


@pytest.mark.parametrize(
    ("call", "match"), [(c, m) for _, c, m in BAD_CALLS], ids=[i for i, _, _ in BAD_CALLS]
)
async def test_a_bad_argument_raises_value_error_before_connecting(
    nowhere: tuple[Settings, Factory], call: Call, match: str
) -> None:
    settings, factory = nowhere
    with pytest.raises(ValueError, match=match) as info:
        await call(CircuitBreaker(settings, factory), factory)
    assert not isinstance(info.value, OSError)


GOOD_CALLS: list[tuple[str, Call]] = [
    ("trip", lambda cb, f: cb.disable("cb", "r", "t")),
    ("drift", lambda cb, f: cb.report_drift("cb", 0.5, 10)),
    ("incidents", lambda cb, f: cb.list_incidents(None, False, 10_000)),
    ("retry", lambda cb, f: ops.retry_failed(f, 1000)),
    ("purge", lambda cb, f: ops.purge(f, old(), ["sent"])),
    ("enqueue", lambda cb, f: enqueue_with(f, incident_id="i" * 200)),
]


@pytest.mark.parametrize("call", [c for _, c in GOOD_CALLS], ids=[i for i, _ in GOOD_CALLS])
async def test_good_arguments_do_reach_for_the_database(
    nowhere: tuple[Settings, Factory], call: Call
) -> None:
    """The control: with arguments inside the limits the same calls try to connect."""
    settings, factory = nowhere
    with pytest.raises(OSError):
        await call(CircuitBreaker(settings, factory), factory)
