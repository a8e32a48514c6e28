"""Queue statistics and the claim query on a PostgreSQL queue of 1,000,000 rows.

Creates a throw-away database, migrates it with ``alertq.migrate.upgrade``, bulk-loads
rows (mostly ``sent``, a few thousand ``pending`` and ``failed``) with INSERT … SELECT
generate_series, and times, through alertq's own driver:

- ``AlertDriver.fetch_queue_stats()`` (what ``alertq stats`` and the ops API run);
- ``AlertDriver.alerts_counts()`` (what an idle or draining worker runs);
- ``AlertDriver.alerts_claim()`` for a batch of 256, in a transaction that is rolled back
  so every run sees the same rows;

first on a small queue (10,000 rows), then on the full one, so "flat" can be judged.
Finally it prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the exact claim statement the driver
sends (captured from SQLAlchemy) and checks that it walks ``ix_costsim_alert_queue_due``.

    python bench/stats_1m.py [--rows 1000000] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from _common import (
    Report,
    add_common_args,
    command_line,
    fmt,
    median,
    out_dir,
    pg_database,
    pg_fill,
)
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.driver import get_alert_driver

INDEX = "ix_costsim_alert_queue_due"
BATCH = 256


async def timed(
    factory: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[Any]],
    runs: int,
) -> list[float]:
    """Milliseconds of ``work`` in a fresh transaction that is rolled back, ``runs`` times
    after one warm-up."""
    out: list[float] = []
    for i in range(runs + 1):
        async with factory() as session:
            await session.begin()
            start = time.perf_counter()
            await work(session)
            elapsed = (time.perf_counter() - start) * 1000
            await session.rollback()
        if i:
            out.append(elapsed)
    return out


def claim(session: AsyncSession) -> Awaitable[Any]:
    now = datetime.now(UTC)
    return get_alert_driver(session).alerts_claim(
        now, BATCH, now + timedelta(seconds=30), secrets.randbits(62) or 1, "bench"
    )


async def measure(url: str, runs: int) -> tuple[dict[str, list[float]], tuple[int, int]]:
    """Latencies by operation, and the claim's (generic, custom) plan counts.

    One pooled connection, so every run reuses the driver's prepared statements, as a
    worker does: PostgreSQL may switch a prepared statement to a generic plan after five
    executions, and a generic plan cannot prove ``status = 'pending'`` for the partial
    index.
    """
    engine = create_engine(Settings(database_url=url), pool_size=1, max_overflow=0)
    factory = create_session_factory(engine)
    try:
        latencies = {
            "fetch_queue_stats": await timed(
                factory, lambda s: get_alert_driver(s).fetch_queue_stats(), runs
            ),
            "alerts_counts": await timed(
                factory, lambda s: get_alert_driver(s).alerts_counts(datetime.now(UTC)), runs
            ),
            "alerts_claim(256)": await timed(factory, claim, runs),
        }
        async with factory() as session:
            plans = (
                await session.execute(
                    text(
                        "SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
                        " FROM pg_prepared_statements"
                        " WHERE statement LIKE 'UPDATE costsim_alert_queue SET attempts%'"
                    )
                )
            ).one()
        return latencies, (int(plans[0]), int(plans[1]))
    finally:
        await engine.dispose()


async def explain_claim(url: str) -> tuple[str, str]:
    """The driver's claim statement and its EXPLAIN (ANALYZE, BUFFERS), rolled back."""
    engine = create_engine(Settings(database_url=url))
    captured: list[tuple[str, Any]] = []

    def hook(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE"):
            captured.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", hook)
    try:
        async with create_session_factory(engine)() as session:
            await session.begin()
            rows = await claim(session)
            assert rows, "no due rows to claim"
            statement, params = captured[0]
            conn = await session.connection()
            result = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
            plan = "\n".join(r[0] for r in result.all())
            await session.rollback()
        return statement, plan
    finally:
        await engine.dispose()


async def load(url: str, total: int, pending: int, failed: int) -> float:
    start = time.perf_counter()
    await pg_fill(url, pending=pending, failed=failed, sent=total - pending - failed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description="fetch_queue_stats and claim latency on a 1M-row PostgreSQL queue",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="total rows (default 1M)")
    parser.add_argument("--pending", type=int, default=5000, help="pending rows (default 5000)")
    parser.add_argument("--failed", type=int, default=5000, help="failed rows (default 5000)")
    parser.add_argument(
        "--small", type=int, default=10_000, help="rows of the first, small measurement"
    )
    add_common_args(parser, runs=7)
    args = parser.parse_args()
    report = Report("stats_1m", command_line(), out_dir(args.out))

    with pg_database() as url:
        # Small queue first: the same pending/failed counts, fewer sent rows.
        small_sent = max(0, args.small - args.pending - args.failed)
        asyncio.run(pg_fill(url, pending=args.pending, failed=args.failed, sent=small_sent))
        small, _ = asyncio.run(measure(url, args.runs))
        load_s = asyncio.run(load(url, args.rows - args.small, 0, 0))
        big, (generic, custom) = asyncio.run(measure(url, args.runs))
        statement, plan = asyncio.run(explain_claim(url))

    uses_index = INDEX in plan
    rows = [
        [
            name,
            fmt(median(small[name]), 2),
            fmt(median(big[name]), 2),
            fmt(min(big[name]), 2),
            fmt(max(big[name]), 2),
        ]
        for name in small
    ]
    report.table(
        f"Latency in ms, median of {args.runs} runs (after one warm-up); "
        f"{args.pending:,} pending + {args.failed:,} failed rows, the rest sent",
        [
            "operation",
            f"{args.small:,} rows",
            f"{args.rows:,} rows",
            f"min ({args.rows:,})",
            f"max ({args.rows:,})",
        ],
        rows,
    )
    report.add(
        f"Bulk load of {args.rows - args.small:,} sent rows (INSERT … SELECT generate_series, "
        f"then VACUUM ANALYZE): {load_s:.1f} s"
    )
    report.add(
        "### The driver's claim statement\n\n```sql\n"
        + statement.strip()
        + "\n```\n\n### EXPLAIN (ANALYZE, BUFFERS) on "
        + f"{args.rows:,} rows\n\n```\n"
        + plan
        + "\n```\n\n"
        + f"Claim uses the partial index {INDEX}: **{'yes' if uses_index else 'NO'}**. "
        + f"Plan cache of the claim's prepared statement after {args.runs + 1} "
        + f"executions on one connection: {custom} custom plans, {generic} generic plans "
        + "(a generic plan could not use the partial index)."
    )
    report.data = {
        "rows": args.rows,
        "pending": args.pending,
        "failed": args.failed,
        "runs": args.runs,
        "small_rows": args.small,
        "latency_ms_small": small,
        "latency_ms_full": big,
        "median_ms_small": {k: median(v) for k, v in small.items()},
        "median_ms_full": {k: median(v) for k, v in big.items()},
        "load_seconds": load_s,
        "claim_uses_partial_index": uses_index,
        "claim_plan": plan,
        "claim_plan_cache": {"generic": generic, "custom": custom},
    }
    report.save()
    if not uses_index:
        raise SystemExit(f"the claim did not use {INDEX}")


if __name__ == "__main__":
    main()
