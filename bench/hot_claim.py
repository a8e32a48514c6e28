"""Would a claim that PostgreSQL can write as a HOT update raise the floor target's ceiling?

A design question for issue 10's floor target, measured without alertq's code. Every
claim → POST → record design writes each row twice. alertq's claim, like the lean cycle
of ``bench/floor.py``, changes ``next_attempt_at`` (the lease's end, so that an expired
lease makes the row due again), a column of the due index: each claim writes a new
entry in every index the row is in. A claim that changes only columns no index names can
be a heap-only-tuple (HOT) update, which writes no index entry, if the row's page has
room for the new version (a table ``fillfactor`` below 100 leaves it).

On one throw-away PostgreSQL database loaded with ``--rows`` due rows of alertq's schema
(plus one unindexed column, ``hot_lease``), each round drains the same rows three ways
with 1 and with 4 asyncpg connections, no HTTP, B = 256:

- **lean**: claim ``SET next_attempt_at = now() + 30 s`` (an indexed column), then
  record ``SET status = 'sent'``; the lean cycle's two statements;
- **hot**: claim ``SET hot_lease = now() + 30 s`` (unindexed; the candidates skip rows
  whose ``hot_lease`` has not run out), then the same record;
- **floor**: ``bench/floor.py``'s one statement that claims and finishes a batch.

It prints rows/s per variant (median of ``--runs``), hot ÷ lean, and the share of updates
PostgreSQL made HOT (``pg_stat_user_tables``). Run it with the default ``fillfactor``
(100) and with room on the page (``--fillfactor 50``).

    python bench/hot_claim.py [--rows 50000] [--runs 3] [--fillfactor 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import asyncpg

from _common import (
    Report,
    add_common_args,
    asyncpg_dsn,
    command_line,
    median,
    out_dir,
    pg_database,
    pg_load,
)

B = 256
CANDIDATES = """SELECT id FROM costsim_alert_queue
 WHERE status = 'pending' AND next_attempt_at <= now() {extra}
 ORDER BY next_attempt_at, id FOR UPDATE SKIP LOCKED LIMIT $1"""
CLAIMS = {
    "lean": "UPDATE costsim_alert_queue SET next_attempt_at = now() + interval '30 seconds',"
    " attempts = attempts + 1, last_attempt_at = now()"
    f" WHERE id IN ({CANDIDATES.format(extra='')}) RETURNING id, payload",
    "hot": "UPDATE costsim_alert_queue SET hot_lease = now() + interval '30 seconds',"
    " attempts = attempts + 1, last_attempt_at = now()"
    f" WHERE id IN ({CANDIDATES.format(extra='AND (hot_lease IS NULL OR hot_lease <= now())')})"
    " RETURNING id, payload",
    "floor": "UPDATE costsim_alert_queue SET status = 'sent', sent_at = now(),"
    " attempts = attempts + 1"
    f" WHERE id IN ({CANDIDATES.format(extra='')}) RETURNING id, payload",
}
RECORD = "UPDATE costsim_alert_queue SET status = 'sent', sent_at = now() WHERE id = ANY($1)"
RESET = """UPDATE costsim_alert_queue SET status = 'pending', next_attempt_at = created_at,
 sent_at = NULL, attempts = 0, last_attempt_at = NULL, hot_lease = NULL"""
STATS = """SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
 WHERE relname = 'costsim_alert_queue'"""


async def consumer(dsn: str, variant: str) -> int:
    conn = await asyncpg.connect(dsn)
    drained = 0
    try:
        while rows := await conn.fetch(CLAIMS[variant], B):
            if variant != "floor":
                await conn.execute(RECORD, [r[0] for r in rows])
            drained += len(rows)
    finally:
        await conn.close()
    return drained


async def drain(dsn: str, variant: str, consumers: int) -> tuple[float, float]:
    """Reset, repack (at the table's fillfactor), drain; rows/s and the HOT share."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(RESET)
        await conn.execute("VACUUM FULL costsim_alert_queue")
        await conn.execute("VACUUM ANALYZE costsim_alert_queue")
        before = await conn.fetchrow(STATS)
        start = time.perf_counter()
        done = await asyncio.gather(*(consumer(dsn, variant) for _ in range(consumers)))
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.6)  # the statistics collector's flush interval (500 ms)
        after = await conn.fetchrow(STATS)
    finally:
        await conn.close()
    updates = after[0] - before[0]
    hot = (after[1] - before[1]) / updates if updates else 0.0
    return sum(done) / elapsed, hot


async def measure(url: str, args: argparse.Namespace) -> dict[str, Any]:
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE costsim_alert_queue ADD COLUMN hot_lease timestamptz")
        await conn.execute(f"ALTER TABLE costsim_alert_queue SET (fillfactor = {args.fillfactor})")
    finally:
        await conn.close()
    await pg_load(url, args.rows)
    results: dict[str, Any] = {}
    for run in range(args.runs):
        for consumers in (1, 4):
            for variant in CLAIMS:
                rate, hot = await drain(dsn, variant, consumers)
                results.setdefault(f"{variant}/{consumers}", []).append((rate, hot))
                print(f"run {run + 1} {variant} x{consumers}: {rate:,.0f} rows/s, HOT {hot:.0%}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument(
        "--fillfactor", type=int, default=50, choices=range(10, 101), metavar="10-100"
    )
    add_common_args(parser)
    args = parser.parse_args()
    report = Report(f"hot_claim_ff{args.fillfactor}", command_line(), out_dir(args.out))
    with pg_database("alertq_hot_claim") as url:
        results = asyncio.run(measure(url, args))
    rows = []
    for consumers in (1, 4):
        rate = {v: median([r for r, _ in results[f"{v}/{consumers}"]]) for v in CLAIMS}
        ratios = [
            h[0] / lean[0]
            for h, lean in zip(
                results[f"hot/{consumers}"], results[f"lean/{consumers}"], strict=True
            )
        ]
        for variant in CLAIMS:
            hot = median([h for _, h in results[f"{variant}/{consumers}"]])
            extra = (
                f"{median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
                if variant == "hot"
                else "–"
            )
            rows.append(
                [
                    consumers,
                    variant,
                    f"{rate[variant]:,.0f}",
                    f"{rate[variant] / rate['floor']:.0%}",
                    extra,
                    f"{hot:.0%}",
                ]
            )
    report.table(
        f"Draining {args.rows:,} rows, B = {B}, fillfactor {args.fillfactor}, "
        f"median of {args.runs}",
        [
            "consumers",
            "variant",
            "rows/s",
            "÷ floor",
            "hot ÷ lean, same run (min–max)",
            "HOT updates",
        ],
        rows,
    )
    report.data["results"] = {k: [list(x) for x in v] for k, v in results.items()}
    report.save()


if __name__ == "__main__":
    main()
