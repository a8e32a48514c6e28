"""The claim's PostgreSQL CPU with a retry backlog, now and before migration 0007.

    python bench/claim_backlog.py [--backlogs 0,10000,30000,100000] [--drain-rows 40000] [--runs 3]

After an Alertmanager outage the rows that failed wait out their backoff, pending and not
due, while the first ones come due. Two throw-away databases: **now** (the schema and the
driver's ``PG_CLAIM``) and **before** (migration 0007's index of leased rows dropped, and
the claim's in-flight lookup as it was: the pending rows whose ``next_attempt_at`` is in
the future, read from the due index, then filtered on ``leased_until``). In each run,
alternating which goes first:

- **backlog**: for each size, 2,560 due rows and ``backlog`` pending rows due over the
  next 10 s to 5 min (none leased, each its own fingerprint, as relayed alerts are),
  VACUUM ANALYZEd; one connection runs ten 256-row claims, each in its own transaction,
  nothing recorded (the leased rows stay in flight as they would while their POST runs),
  and reads its backend's CPU (``/proc/PID/stat``, 10 ms ticks) around the ten;
- **drain**: ``--drain-rows`` due rows, claimed and recorded as sent (``PG_RECORD_SAME``)
  256 at a time on one connection, as the worker does without the POST: the cost of the
  index on the steady path (one entry per claimed row).

Prints medians over the runs of the backend CPU per claim (backlog) and per 256 rows
(drain), and the ratio now ÷ before within each run.
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
from alertq.driver.sql import PG_CLAIM, PG_RECORD_SAME

BATCH = 256
DUE = 10 * BATCH
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
# Bench SQL: turn all but the first DUE rows into a retry backlog spread over 5 minutes.
BACKLOG = """\
UPDATE costsim_alert_queue
   SET attempts = 1, last_error = 'HTTP 503',
       next_attempt_at = now() + interval '10 seconds' + (id % 290) * interval '1 second'
 WHERE id > $1"""
NOW_LOOKUP = "f.status = $6 AND f.leased_until > $1 AND f.next_attempt_at > $1"
BEFORE_CLAIM = PG_CLAIM.replace(
    NOW_LOOKUP, "f.status = $6 AND f.next_attempt_at > $1 AND f.leased_until > $1"
)
assert NOW_LOOKUP in PG_CLAIM and BEFORE_CLAIM != PG_CLAIM, "PG_CLAIM changed: update the bench"


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS


async def claim(conn: asyncpg.Connection, sql: str, token: int) -> list[asyncpg.Record]:
    now = datetime.now(UTC)
    async with conn.transaction():
        return await conn.fetch(sql, now, BATCH, now + timedelta(seconds=30), token, "b", "pending")


async def backlog_cpu(url: str, sql: str, backlog: int) -> float:
    """Backend CPU per claim, ms: the total over ten claims (the clock ticks 10 ms)."""
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
            assert len(await claim(conn, sql, token)) == BATCH
        return (cpu_ms(pid) - before) / count
    finally:
        await conn.close()


async def drain_cpu(url: str, sql: str, rows: int) -> float:
    """Backend CPU per 256 rows claimed and recorded as sent, ms."""
    await reset_queue(url)
    await pg_fill(url, pending=rows)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        before, done, token = cpu_ms(pid), 0, 0
        while True:
            token += 1
            claimed = await claim(conn, sql, token)
            if not claimed:
                break
            ids = "{" + ",".join(str(r[0]) for r in claimed) + "}"
            async with conn.transaction():
                sent = datetime.now(UTC)
                await conn.execute(PG_RECORD_SAME, ids, "sent", sent, None, None, None, token)
            done += len(claimed)
        assert done == rows, done
        return (cpu_ms(pid) - before) / (rows / BATCH)
    finally:
        await conn.close()


async def measure(
    now_url: str, before_url: str, backlogs: list[int], drain_rows: int, runs: int
) -> dict[str, dict[str, list[float]]]:
    conn = await asyncpg.connect(asyncpg_dsn(before_url))
    await conn.execute("DROP INDEX ix_costsim_alert_queue_leased")
    await conn.close()
    variants = [("now", now_url, PG_CLAIM), ("before", before_url, BEFORE_CLAIM)]
    result: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in variants}
    for r in range(runs):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, url, sql in order:
            for backlog in backlogs:
                ms = await backlog_cpu(url, sql, backlog)
                result[name].setdefault(f"backlog {backlog}", []).append(ms)
                print(f"run {r + 1} {name}: backlog {backlog:,}: {ms:.1f} ms/claim", flush=True)
            if drain_rows:
                ms = await drain_cpu(url, sql, drain_rows)
                result[name].setdefault("drain", []).append(ms)
                print(f"run {r + 1} {name}: drain: {ms:.2f} ms/256 rows", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlogs", default="0,10000,30000,100000")
    parser.add_argument("--drain-rows", type=int, default=40_000, help="0: no drain")
    add_common_args(parser)
    args = parser.parse_args()
    backlogs = [int(b) for b in args.backlogs.split(",")]
    report = Report("claim_backlog", command_line(), out_dir(args.out))
    # Created and dropped outside the event loop.
    with pg_database("alertq_backlog") as now_url, pg_database("alertq_backlog") as before_url:
        result = asyncio.run(measure(now_url, before_url, backlogs, args.drain_rows, args.runs))
    report.data["cpu_ms"] = result
    rows = []
    for key in result["now"]:
        now, before = result["now"][key], result["before"][key]
        ratios = [n / b for n, b in zip(now, before, strict=True) if b]
        rows.append(
            [
                key,
                f"{statistics.median(before):.2f}",
                f"{statistics.median(now):.2f}",
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})",
            ]
        )
    report.table(
        f"The claim's PostgreSQL CPU, ms per 256-row claim (backlog) or per 256 rows claimed "
        f"and recorded (drain), median of {args.runs}",
        ["case", "before 0007", "now", "now ÷ before, per run (min–max)"],
        rows,
    )
    report.save()


if __name__ == "__main__":
    main()
