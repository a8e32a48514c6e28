"""A busy delivery loop claims its next batch in the transaction that records the last one.

One commit per batch instead of two (claim, then record), on SQLite and PostgreSQL; a loop
told to stop hands back a batch it claimed but will not deliver.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.engine import AlertWorker, _Batch
from tests.integration.test_engine import enqueue_many, rows, worker_settings
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


async def test_a_busy_loop_commits_once_per_batch(
    db_url: str, engine: AsyncEngine, session_factory: Factory, stub: StubAlertmanager
) -> None:
    batches = 8
    await enqueue_many(session_factory, 64 * batches)
    commits = 0

    def count(_conn: Any) -> None:
        nonlocal commits
        commits += 1

    event.listen(engine.sync_engine, "commit", count)
    try:
        settings = worker_settings(db_url, stub.url, batch_size=64)
        await asyncio.wait_for(
            AlertWorker(settings, session_factory).run(asyncio.Event(), drain=True), 60
        )
    finally:
        event.remove(engine.sync_engine, "commit", count)
    assert {r.status for r in (await rows(session_factory)).values()} == {"sent"}
    assert stub.requests == batches
    # The first claim, one record(+claim) per batch, the drain's look at an empty queue, a
    # keep-alive pass (two transactions: managed alerts, then heartbeats). Claim and record
    # in transactions of their own would be 2 × batches + 4.
    assert commits <= batches + 4, commits


async def test_a_stop_during_the_record_hands_the_claimed_batch_back(
    db_url: str, session_factory: Factory, stub: StubAlertmanager
) -> None:
    ids = await enqueue_many(session_factory, 30)
    stop = asyncio.Event()

    class StoppedMidRecord(AlertWorker):
        """The stop (a SIGTERM) arrives just after the record's transaction claimed."""

        async def _claim_in(self, session: AsyncSession) -> _Batch:
            batch = await super()._claim_in(session)
            if self.stats.claimed:  # not the first claim: this one rides on a record
                stop.set()
            return batch

    settings = worker_settings(db_url, stub.url, batch_size=10)
    worker = StoppedMidRecord(settings, session_factory)
    await asyncio.wait_for(worker.run(stop), 60)

    got = await rows(session_factory)
    assert stub.requests == 1 and len(stub.received_alerts()) == 10
    assert [got[i].status for i in ids[:10]] == ["sent"] * 10
    for i in ids[10:]:  # the second batch was claimed, never sent: back, as if untouched
        row = got[i]
        assert (row.status, row.attempts, row.leased_until) == ("pending", 0, None), i
    assert worker.stats.claimed == 20 and worker.stats.sent == 10
