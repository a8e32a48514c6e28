"""Operator actions on the queue, shared by the CLI and the ops API.

Each function owns its transactions; long work (purge) commits batch by batch so it never
holds locks or one giant statement for long.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import limits
from alertq.db import read_transaction, transaction
from alertq.driver import PURGE_BATCH, get_queue_driver
from alertq.driver.intake import IntakeDriver, IntakeSource
from alertq.models import AlertStatus, CostSimAlertQueueModel

Factory = async_sessionmaker[AsyncSession]
PURGEABLE = (AlertStatus.SENT.value, AlertStatus.FAILED.value, AlertStatus.SUPERSEDED.value)


async def queue_stats(factory: Factory) -> dict[str, Any]:
    """The driver's grouped stats, with the oldest due row's age in seconds added."""
    async with transaction(factory) as session:
        stats = await get_queue_driver(session).alerts_stats()
    due = stats.get("oldest_pending_due_at")
    now = datetime.now(UTC)
    stats["oldest_due_age_seconds"] = max(0.0, (now - due).total_seconds()) if due else 0.0
    return stats


async def ping(factory: Factory) -> None:
    """One trivial statement; raises when the database does not answer (readiness). A read
    transaction: on SQLite a probe must not queue for the write lock behind producers."""
    async with read_transaction(factory) as session:
        await IntakeDriver(session).ping()


async def retry_failed(
    factory: Factory, max_retries: int, *, ids: Sequence[int] | None = None
) -> int:
    """Give failed rows ``max_retries`` (1 to :data:`~alertq.limits.MAX_RETRIES`) more
    attempts, due now."""
    limits.check_count(max_retries, "max_retries", 1, limits.MAX_RETRIES)
    async with transaction(factory) as session:
        return await get_queue_driver(session).alerts_retry_failed(
            max_retries, datetime.now(UTC), ids=ids
        )


async def purge(
    factory: Factory,
    cutoff: datetime,
    statuses: Sequence[str] = PURGEABLE,
    *,
    batch_size: int = PURGE_BATCH,
    progress: Callable[[int], None] | None = None,
    max_batches: int | None = None,
) -> int:
    """Delete old rows in batches, one short transaction each; returns the total.

    ``pending`` is refused (deleting undelivered alerts loses them), and so is any status
    that is not one of :data:`~alertq.limits.PURGEABLE_STATUSES`. With ``max_batches``, it
    stops after that many batches (the retention service's bounded pass).
    """
    statuses = limits.check_purge_statuses(statuses)
    if cutoff.tzinfo is None:
        raise ValueError(f"naive datetime {cutoff!r}: pass an aware UTC datetime")
    limits.check_count(batch_size, "batch_size", 1, 100_000)
    if max_batches is not None:
        limits.check_count(max_batches, "max_batches", 1, 100_000)
    total, after_id, batches = 0, 0, 0
    while max_batches is None or batches < max_batches:
        batches += 1
        async with transaction(factory) as session:
            deleted, last_id = await get_queue_driver(session).alerts_purge_batch(
                cutoff, statuses, after_id, batch_size
            )
        if last_id == after_id:
            return total
        total, after_id = total + deleted, last_id
        if progress is not None:
            progress(total)
    return total


async def list_alerts(
    factory: Factory, status: str | None, limit: int, before_id: int | None = None
) -> list[CostSimAlertQueueModel]:
    if status is not None:
        limits.check_status(status)
    limits.check_count(limit, "limit", 1, limits.MAX_LIST_LIMIT)
    if before_id is not None:
        limits.check_count(before_id, "before_id", 1, limits.MAX_ALERT_ID)
    async with transaction(factory) as session:
        return await get_queue_driver(session).alerts_list(status, limit, before_id)


async def get_alert(factory: Factory, alert_id: int) -> CostSimAlertQueueModel | None:
    async with transaction(factory) as session:
        return await get_queue_driver(session).alerts_get(alert_id)


RELAY_ALERT_TYPE = "relay"
INTAKE_SOURCES_SHOWN = 20


async def intake_sources(factory: Factory, limit: int = INTAKE_SOURCES_SHOWN) -> list[IntakeSource]:
    """Relayed rows in the queue by sender (address, User-Agent), latest sender first."""
    async with transaction(factory) as session:
        return await IntakeDriver(session).intake_sources(RELAY_ALERT_TYPE, limit)
