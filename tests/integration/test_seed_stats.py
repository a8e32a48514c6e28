"""Drop-in compatibility: code written against the seed reads ``oldest_pending`` from
``fetch_queue_stats()`` (issue 9, finding 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import get_alert_driver
from alertq.db import transaction

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_fetch_queue_stats_reports_the_oldest_pending_created_at_as_the_seed_did(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with transaction(session_factory) as s:
        d = get_alert_driver(s)
        old = await d.insert_alert(
            [{"labels": {"alertname": "Old"}}], "disable", None, None, now=T0
        )
        for i in range(1, 3):
            await d.insert_alert(
                [{"labels": {"alertname": f"N{i}"}}],
                "disable",
                None,
                None,
                now=T0 + timedelta(minutes=i),
            )
    async with transaction(session_factory) as s:
        (first,) = await get_alert_driver(s).fetch_pending_alerts(T0 + timedelta(hours=1), 1)
        assert first.id == old.id
        assert await get_alert_driver(s).update_alert_sent(first, T0 + timedelta(hours=1))
    async with session_factory() as s:
        stats = await get_alert_driver(s).fetch_queue_stats()
    # The sent row was older, but only pending rows count.
    assert stats["oldest_pending"] == T0 + timedelta(minutes=1)
    assert stats["oldest_pending"].tzinfo is not None
    assert stats["oldest_pending"] == stats["oldest_pending_created_at"]


async def test_fetch_queue_stats_oldest_pending_is_none_on_an_empty_queue(
    session: AsyncSession,
) -> None:
    stats = await get_alert_driver(session).fetch_queue_stats()
    assert "oldest_pending" in stats and stats["oldest_pending"] is None
