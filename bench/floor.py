"""Queue-mechanics floor (issue 6): alertq's claim → deliver → record vs a plain SQL loop.

On one throw-away PostgreSQL database loaded with N due rows, each run drains the *same*
rows (reset to due, VACUUM ANALYZE between variants) three ways, with ``c`` consumers:

- **floor**: ``c`` asyncpg connections looping one statement that claims and finishes a
  batch: ``UPDATE … SET status = 'sent' WHERE id IN (SELECT id … FOR UPDATE SKIP LOCKED
  LIMIT B) RETURNING id, payload``, B = the engine's batch size (256); no HTTP at all;
- **lean**: ``c`` loops of a minimal hand-written delivery cycle: claim (UPDATE … RETURNING
  id, payload), one httpx POST of the batch to the no-op stub, record (``UPDATE … WHERE id
  = ANY($1)``), over asyncpg. It shows what the HTTP round trip alone costs;
- **alertq**: an in-process ``AlertWorker`` with ``concurrency = c`` draining to the same
  no-op stub (``bench/stub_server.py``, its own process), with alertq's defaults otherwise;
- **alertq procs**: ``c`` real ``alertq worker --concurrency 1`` processes (so alertq, like
  the floor's ``c`` PostgreSQL backends, can use every core), started while the rows are
  not yet due; the rows are then made due in one transaction with the enqueue NOTIFY, and
  the time runs from that commit to the last ``sent_at``.

The order of the variants rotates from run to run; the ratio alertq / floor is computed
within each run, and the table shows medians. Target: alertq ≥ 50% of the floor.

    python bench/floor.py [--rows 50000] [--consumers 1,4] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from _common import (
    Report,
    SentCounter,
    Stub,
    add_common_args,
    asyncpg_dsn,
    command_line,
    fmt,
    median,
    out_dir,
    pg_database,
    pg_load,
    spawn_worker,
    stop_workers,
    wait_workers_ready,
)
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.engine import AlertWorker

FLOOR_SQL = """
UPDATE costsim_alert_queue
   SET status = 'sent', sent_at = now(), attempts = attempts + 1, last_attempt_at = now()
 WHERE id IN (SELECT id FROM costsim_alert_queue
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at, id
               FOR UPDATE SKIP LOCKED LIMIT $1)
RETURNING id, payload
"""
LEAN_CLAIM_SQL = """
UPDATE costsim_alert_queue
   SET next_attempt_at = now() + interval '30 seconds', attempts = attempts + 1,
       last_attempt_at = now()
 WHERE id IN (SELECT id FROM costsim_alert_queue
               WHERE status = 'pending' AND next_attempt_at <= now()
               ORDER BY next_attempt_at, id
               FOR UPDATE SKIP LOCKED LIMIT $1)
RETURNING id, payload
"""
LEAN_RECORD_SQL = (
    "UPDATE costsim_alert_queue SET status = 'sent', sent_at = now() WHERE id = ANY($1)"
)
RESET_SQL = """
UPDATE costsim_alert_queue
   SET status = 'pending', next_attempt_at = created_at, sent_at = NULL, attempts = 0,
       last_attempt_at = NULL, leased_until = NULL, lease_token = 0, leased_by = NULL,
       last_error = NULL, delivered_to = '[]'
"""


async def hold(dsn: str) -> None:
    """Make every row due only tomorrow (workers can start without taking any)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE costsim_alert_queue SET next_attempt_at = now() + interval '1 day'"
        )
    finally:
        await conn.close()


async def release(dsn: str) -> float:
    """Make every held row due and NOTIFY, in one transaction; returns the commit time."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("UPDATE costsim_alert_queue SET next_attempt_at = created_at")
            await conn.execute("SELECT pg_notify('alertq_enqueued', '')")
        return time.time()
    finally:
        await conn.close()


async def last_sent(dsn: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        return float(
            await conn.fetchval(
                "SELECT extract(epoch FROM max(sent_at))::float8 FROM costsim_alert_queue"
            )
        )
    finally:
        await conn.close()


async def reset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(RESET_SQL)
        await conn.execute("VACUUM ANALYZE costsim_alert_queue")
    finally:
        await conn.close()


async def sent_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM costsim_alert_queue WHERE status = 'sent'")
        )
    finally:
        await conn.close()


async def floor(dsn: str, consumers: int, batch: int) -> float:
    """Seconds for ``consumers`` connections to drain the queue with FLOOR_SQL."""
    conns = [await asyncpg.connect(dsn) for _ in range(consumers)]

    async def consume(conn: Any) -> None:
        while await conn.fetch(FLOOR_SQL, batch):
            pass

    try:
        start = time.perf_counter()
        await asyncio.gather(*(consume(c) for c in conns))
        return time.perf_counter() - start
    finally:
        for c in conns:
            await c.close()


async def lean(dsn: str, stub_url: str, consumers: int, batch: int) -> float:
    """Seconds for ``consumers`` minimal claim → POST → record loops to drain the queue."""
    conns = [await asyncpg.connect(dsn) for _ in range(consumers)]
    clients = [httpx.AsyncClient(trust_env=False, timeout=10) for _ in range(consumers)]
    headers = {"Content-Type": "application/json"}

    async def consume(conn: Any, client: httpx.AsyncClient) -> None:
        while rows := await conn.fetch(LEAN_CLAIM_SQL, batch):
            body = "[" + ",".join(r["payload"][1:-1] for r in rows) + "]"  # jsonb text
            response = await client.post(
                stub_url + "/api/v2/alerts", content=body.encode(), headers=headers
            )
            response.raise_for_status()
            await conn.execute(LEAN_RECORD_SQL, [r["id"] for r in rows])

    try:
        start = time.perf_counter()
        await asyncio.gather(*(consume(c, h) for c, h in zip(conns, clients, strict=True)))
        return time.perf_counter() - start
    finally:
        for c in conns:
            await c.close()
        for h in clients:
            await h.aclose()


async def alertq(url: str, stub_url: str, consumers: int) -> float:
    """Seconds for an in-process AlertWorker (``concurrency = consumers``) to drain."""
    settings = Settings(database_url=url, alertmanager_urls=[stub_url], concurrency=consumers)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:  # open the pool outside the timing
            await conn.exec_driver_sql("SELECT 1")
        worker = AlertWorker(settings, create_session_factory(engine))
        start = time.perf_counter()
        await worker.run(asyncio.Event(), drain=True)
        return time.perf_counter() - start
    finally:
        await engine.dispose()


def alertq_processes(url: str, stub_url: str, consumers: int, rows: int, logs: Path) -> float:
    """Seconds from making the rows due to the last ``sent_at``, with ``consumers`` worker
    processes (one delivery loop each) started beforehand."""
    dsn = asyncpg_dsn(url)
    asyncio.run(hold(dsn))
    with (logs / "workers.log").open("ab") as log:
        procs = [
            spawn_worker(url, stub_url, drain=False, log=log, concurrency=1)
            for _ in range(consumers)
        ]
        try:
            asyncio.run(wait_workers_ready(url, procs))
            released = asyncio.run(release(dsn))

            async def wait() -> None:
                async with SentCounter(url) as counter:
                    await counter.wait_for(rows, 600)

            asyncio.run(wait())
        finally:
            stop_workers(procs)
    return asyncio.run(last_sent(dsn)) - released


def main() -> None:
    parser = argparse.ArgumentParser(
        description="alertq's claim→deliver→record vs a plain asyncpg SKIP LOCKED loop",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256, help="B (default 256, the engine's)")
    parser.add_argument("--consumers", default="1,4", help="consumer counts (default 1,4)")
    parser.add_argument("--no-lean", action="store_true", help="skip the lean variant")
    add_common_args(parser)
    args = parser.parse_args()
    consumers = [int(c) for c in args.consumers.split(",")]
    variants = ["floor", "lean", "alertq", "alertq procs"]
    if args.no_lean:
        variants.remove("lean")
    report = Report("floor", command_line(), out_dir(args.out))
    logs = Path(tempfile.mkdtemp(prefix="alertq-bench-floor-"))
    results: dict[int, dict[str, list[float]]] = {c: {v: [] for v in variants} for c in consumers}

    with Stub() as stub, pg_database() as url:
        dsn = asyncpg_dsn(url)
        asyncio.run(pg_load(url, args.rows))
        for run in range(args.runs):
            order = variants[run % len(variants) :] + variants[: run % len(variants)]
            for c in consumers:
                for variant in order:
                    asyncio.run(reset(dsn))
                    stub.reset()
                    if variant == "floor":
                        seconds = asyncio.run(floor(dsn, c, args.batch))
                    elif variant == "lean":
                        seconds = asyncio.run(lean(dsn, stub.url, c, args.batch))
                    elif variant == "alertq":
                        seconds = asyncio.run(alertq(url, stub.url, c))
                    else:
                        seconds = alertq_processes(url, stub.url, c, args.rows, logs)
                    sent = asyncio.run(sent_count(dsn))
                    if sent != args.rows:
                        raise RuntimeError(f"{variant}: {sent} of {args.rows} rows sent")
                    if variant != "floor" and stub.stats()["alerts"] != args.rows:
                        raise RuntimeError(f"{variant}: the stub got {stub.stats()['alerts']}")
                    rate = args.rows / seconds
                    results[c][variant].append(rate)
                    print(f"run {run + 1} consumers={c} {variant}: {rate:,.0f} rows/s", flush=True)

    rows = []
    summary: dict[str, Any] = {}
    for c in consumers:
        r = results[c]
        ratios = {
            v: [a / f for a, f in zip(r[v], r["floor"], strict=True)]
            for v in ("alertq", "alertq procs")
        }
        entry = [str(c), fmt(median(r["floor"]))]
        if "lean" in r:
            entry.append(fmt(median(r["lean"])))
        for v in ("alertq", "alertq procs"):
            q = ratios[v]
            entry += [
                fmt(median(r[v])),
                f"{median(q) * 100:.0f}% ({min(q) * 100:.0f}–{max(q) * 100:.0f}%)",
            ]
        best = max(median(q) for q in ratios.values())
        entry.append("met" if best >= 0.5 else "MISSED")
        rows.append(entry)
        summary[str(c)] = {
            "rates": r,
            "ratios": ratios,
            "median_ratio": {v: median(q) for v, q in ratios.items()},
        }
    headers = ["consumers", "floor rows/s"]
    if "lean" in variants:
        headers.append("lean rows/s")
    headers += [
        "alertq in-process rows/s",
        "÷ floor (min–max)",
        "alertq processes rows/s",
        "÷ floor (min–max)",
        "target ≥ 50%",
    ]
    report.table(
        f"Draining {args.rows:,} rows, B = {args.batch}, median of {args.runs} runs "
        "(ratios within each run; c consumers = c loops in one process, or c processes)",
        headers,
        rows,
    )
    report.data = {"rows": args.rows, "batch": args.batch, "runs": args.runs, **summary}
    report.save()
    print(json.dumps({c: s["median_ratio"] for c, s in summary.items()}))


if __name__ == "__main__":
    main()
