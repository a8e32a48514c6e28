"""Keep-alive cost with 10,000 open managed alerts, and the two-row bound over 24 hours.

For each backend (PostgreSQL and SQLite), on a throw-away database:

1. fire ``--alerts`` managed alerts (default 10,000) with their start times spread over one
   resend interval (60 s), as alerts fired over time would be, and mark their rows sent;
2. optionally add ``--history`` managed alerts resolved long ago (keep-alive is done with
   them) to show that a pass does not read history;
3. steady state: run the keep-alive pass every tick (5 s) of an injected clock for
   ``--minutes`` simulated minutes, timing each pass (wall time, and this process's CPU
   time: what is not CPU here is waiting for the database), then "deliver" the re-armed
   rows with one UPDATE (standing in for the worker, which is not what is measured);
4. the rest of a simulated day in one-hour steps, with churn at hour 6 (10 % resolved,
   5 % fired again, 5 % with new annotations), then count queue rows per managed alert.

    python bench/keepalive.py [--alerts 10000] [--history 0] [--minutes 10]
                              [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from _common import (
    Report,
    add_common_args,
    command_line,
    database,
    fmt,
    median,
    out_dir,
    percentile,
)
from alertq.alerts import label_fingerprint
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.managed import ManagedAlerts, ManagedKeepalive, keepalive_tick
from alertq.models import AlertStatus, CostSimAlertQueueModel, ManagedAlertModel

Q = CostSimAlertQueueModel
T0 = datetime(2026, 6, 1, tzinfo=UTC)
INTERVAL = 60.0
FIRE_BATCH = 500


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def labels(i: int) -> dict[str, str]:
    return {"alertname": "BenchManaged", "n": str(i), "service": f"svc{i % 50}"}


async def deliver(factory: async_sessionmaker[AsyncSession], now: datetime | None) -> int:
    """Stand-in for the delivery worker: every pending row is sent ``now`` (None: when it
    was enqueued, as a worker keeping up would have sent it)."""
    sent_at: Any = Q.created_at if now is None else now
    async with transaction(factory) as s:
        result = await s.execute(
            update(Q)
            .where(Q.status == AlertStatus.PENDING.value)
            .values(status=AlertStatus.SENT.value, sent_at=sent_at, last_attempt_at=sent_at)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0))


async def fire_all(
    service: ManagedAlerts, factory: async_sessionmaker[AsyncSession], clock: Clock, n: int
) -> float:
    started = time.perf_counter()
    for first in range(0, n, FIRE_BATCH):
        async with transaction(factory) as s:
            for i in range(first, min(n, first + FIRE_BATCH)):
                clock.now = T0 + timedelta(seconds=INTERVAL * i / n)
                await service.fire(labels(i), {"summary": f"bench alert {i}"}, session=s)
    return time.perf_counter() - started


async def add_history(factory: async_sessionmaker[AsyncSession], n: int) -> None:
    """Managed alerts resolved a day before T0: keep-alive never looks at them again."""
    old = T0 - timedelta(days=1)
    rows = [
        {
            "fingerprint": label_fingerprint({"alertname": "Old", "n": str(i)}),
            "labels": {"alertname": "Old", "n": str(i)},
            "annotations": {},
            "state": "resolved",
            "starts_at": old,
            "resolved_at": old,
            "keepalive_at": None,
            "firing_type": "managed_firing",
            "resolving_type": "managed_resolving",
            "created_at": old,
            "updated_at": old,
        }
        for i in range(n)
    ]
    for first in range(0, n, 5000):
        async with transaction(factory) as s:
            await s.execute(insert(ManagedAlertModel), rows[first : first + 5000])


async def run_backend(backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    if True:
        settings = Settings(database_url=url, resend_interval=INTERVAL, resolved_retention=900)
        engine = create_engine(settings)
        factory = create_session_factory(engine)
        clock = Clock(T0)
        service = ManagedAlerts(settings, factory, clock=clock)
        keepalive = ManagedKeepalive(settings, factory, clock=clock)
        try:
            fire_seconds = await fire_all(service, factory, clock, args.alerts)
            if args.history:
                await add_history(factory, args.history)
            await deliver(factory, None)
            tick = keepalive_tick(INTERVAL)
            walls: list[float] = []
            cpus: list[float] = []
            handled: list[int] = []
            steps = int(args.minutes * 60 / tick)
            for _ in range(steps):
                clock.now += timedelta(seconds=tick)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                result = await keepalive.run_once()
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.process_time() - cpu0)
                handled.append(result.rearmed)
                await deliver(factory, clock.now)
            # The rest of the day in one-hour steps, with churn.
            for hour in range(1, 25):
                if hour == 6:
                    n = args.alerts
                    for i in range(0, n // 10):
                        await service.resolve(labels(i))
                    for i in range(0, n // 20):
                        await service.fire(labels(i))
                    for i in range(n // 2, n // 2 + n // 20):
                        await service.fire(labels(i), {"summary": "changed"})
                clock.now = T0 + timedelta(hours=hour)
                await keepalive.run_once()
                await deliver(factory, clock.now)
            async with factory() as s:
                per_alert = (
                    select(Q.fingerprint, func.count().label("n"))
                    .group_by(Q.fingerprint)
                    .subquery()
                )
                most = await s.scalar(select(func.max(per_alert.c.n)))
                rows = await s.scalar(select(func.count()).select_from(Q))
            return {
                "backend": backend,
                "alerts": args.alerts,
                "history": args.history,
                "fire_seconds": fire_seconds,
                "ticks": steps,
                "rearmed_per_tick_median": median([float(h) for h in handled]),
                "wall_ms_median": median(walls) * 1000,
                "wall_ms_p95": percentile(walls, 95) * 1000,
                "cpu_ms_median": median(cpus) * 1000,
                "db_wait_ms_median": median([w - c for w, c in zip(walls, cpus, strict=True)])
                * 1000,
                "queue_rows_after_day": int(rows or 0),
                "max_rows_per_alert": int(most or 0),
            }
        finally:
            await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--history", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--backends", default="postgres,sqlite")
    add_common_args(parser, runs=1)
    args = parser.parse_args()
    report = Report("keepalive", command_line(), out_dir(args.out))
    results = []
    for backend in args.backends.split(","):
        with database(backend) as url:  # created and dropped outside the event loop
            results.append(asyncio.run(run_backend(backend, url, args)))
        print(results[-1], flush=True)  # a long run's first backend is not lost
    report.data["results"] = results
    report.table(
        f"Keep-alive pass, {args.alerts:,} open managed alerts, interval 60 s, tick 5 s "
        f"({args.history:,} resolved in history)",
        [
            "backend",
            "re-armed per tick",
            "wall ms (median)",
            "wall ms (p95)",
            "client CPU ms (median)",
            "waiting on the db ms (median)",
            "rows after 24 h",
            "max rows per alert",
        ],
        [
            [
                r["backend"],
                fmt(r["rearmed_per_tick_median"], 0),
                fmt(r["wall_ms_median"]),
                fmt(r["wall_ms_p95"]),
                fmt(r["cpu_ms_median"]),
                fmt(r["db_wait_ms_median"]),
                r["queue_rows_after_day"],
                r["max_rows_per_alert"],
            ]
            for r in results
        ],
    )
    report.save()


if __name__ == "__main__":
    main()
