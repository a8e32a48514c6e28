"""The claim's PostgreSQL CPU with a retry backlog: after an Alertmanager outage, the rows
that failed wait out their backoff, pending and not due, while the first ones come due.

    python bench/claim_backlog.py [--backlogs 0,10000,30000,100000] [--runs 3]

For each backlog size, one throw-away database holds 2,560 due rows and ``backlog`` pending
rows due over the next 10 s to 5 min (none leased, each its own fingerprint, as relayed
alerts are), VACUUM ANALYZEd. One connection then runs the driver's own claim of 256 rows
ten times (each in its own transaction, nothing recorded, so the leased rows stay in
flight as they would while their POST runs), reading its backend's CPU (``/proc/PID/stat``)
around the ten. The claim's in-flight lookup (``PG_CLAIM``'s ``inflight`` CTE) reads every
pending row that is not yet due to find the leased ones among them, so its cost grows with
the backlog. Prints the median over the runs of the backend CPU per claim, per backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from _common import (
    Report,
    add_common_args,
    asyncpg_dsn,
    command_line,
    out_dir,
    pg_database,
    pg_fill,
    reset_queue,
)
from alertq.driver.sql import PG_CLAIM

BATCH = 256
DUE = 10 * BATCH
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
# Bench SQL: turn all but the first DUE rows into a retry backlog spread over 5 minutes.
BACKLOG = """\
UPDATE costsim_alert_queue
   SET attempts = 1, last_error = 'HTTP 503',
       next_attempt_at = now() + interval '10 seconds' + (id % 290) * interval '1 second'
 WHERE id > $1"""


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


async def claim_cpu(url: str, backlog: int) -> float:
    """Backend CPU per claim, ms: the total over the claims (the clock ticks 10 ms)."""
    await reset_queue(url)
    await pg_fill(url, pending=DUE + backlog, vacuum=False)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(BACKLOG, DUE)
        await conn.execute("VACUUM ANALYZE costsim_alert_queue")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        count = DUE // BATCH
        before = cpu_ms(pid)
        for token in range(1, count + 1):
            now = datetime.now(UTC)
            async with conn.transaction():
                rows = await conn.fetch(
                    PG_CLAIM, now, BATCH, now + timedelta(seconds=30), token, "bench", "pending"
                )
            assert len(rows) == BATCH, len(rows)
        return (cpu_ms(pid) - before) / count
    finally:
        await conn.close()


async def measure(url: str, backlogs: list[int], runs: int) -> dict[int, list[float]]:
    result: dict[int, list[float]] = {b: [] for b in backlogs}
    for r in range(runs):
        for backlog in backlogs:
            ms = await claim_cpu(url, backlog)
            result[backlog].append(ms)
            print(f"run {r + 1}: backlog {backlog:>7,}: {ms:.1f} ms per claim", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlogs", default="0,10000,30000,100000")
    add_common_args(parser)
    args = parser.parse_args()
    backlogs = [int(b) for b in args.backlogs.split(",")]
    report = Report("claim_backlog", command_line(), out_dir(args.out))
    with pg_database("alertq_backlog") as db:  # created and dropped outside the event loop
        result = asyncio.run(measure(db, backlogs, args.runs))
    report.data["cpu_ms_per_claim"] = {str(b): v for b, v in result.items()}
    base = statistics.median(result[backlogs[0]])
    report.table(
        f"The claim's PostgreSQL CPU with a retry backlog (256-row claims, median of {args.runs})",
        ["retry backlog (pending, not due)", "ms per claim", "÷ the first", "runs"],
        [
            [
                f"{b:,}",
                f"{statistics.median(v):.1f}",
                f"{statistics.median(v) / base:.2f}",
                " / ".join(f"{x:.1f}" for x in v),
            ]
            for b, v in result.items()
        ],
    )
    report.save()


if __name__ == "__main__":
    main()
