"""Producer cost on PostgreSQL: ``enqueue_alert`` inside the caller's own transaction.

Each sample is one caller transaction: it does its own work first (``SELECT 1``, which
opens the transaction), then calls ``alertq.enqueue_alert`` with a one-alert payload
(distinct labels each time), then commits. Three figures, p50 and p99:

- **enqueue alone**: the ``enqueue_alert`` call (validation, fingerprint, INSERT, the
  supersede check and, throttled, NOTIFY), the part alertq adds to the caller's work;
- **enqueue + commit**: from the call to the end of COMMIT;
- **commit floor**: a bare ``BEGIN; INSERT one row into a scratch table; COMMIT`` over
  asyncpg, i.e. what any durable write costs on this machine (``fsync`` is on).

Measured on an empty queue and on one holding ``--background-rows`` sent rows, so a
dependence on the table's size would show. Validation alone (no database) is timed too.

    python bench/producer.py [--samples 2000] [--runs 3] [--background-rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy import text

from _common import (
    Report,
    add_common_args,
    asyncpg_dsn,
    command_line,
    fmt,
    median,
    out_dir,
    percentile,
    pg_database,
    pg_fill,
    reset_queue,
)
from alertq.alerts import payload_fingerprint, validate_payload
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.enqueue import enqueue_alert


def payload(seq: int) -> list[dict[str, Any]]:
    return [
        {
            "labels": {
                "alertname": "CostSimV2Disabled",
                "severity": "critical",
                "component": "costsim",
                "circuit_breaker": "costsim_v2",
                "instance": "bench",
                "incident_id": f"inc{seq:08d}",
            },
            "annotations": {
                "summary": "CostSim V2 disabled by the circuit breaker",
                "description": f"drift 0.42 over threshold (sample {seq})",
                "runbook_url": "https://runbooks.example.com/alertq/circuit-breaker",
            },
            "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "generatorURL": "https://costsim.example.com/breaker",
        }
    ]


async def enqueue_samples(url: str, samples: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of enqueue alone and of enqueue + commit, per caller transaction."""
    engine = create_engine(Settings(database_url=url))
    factory = create_session_factory(engine)
    alone: list[float] = []
    with_commit: list[float] = []
    try:
        for i in range(warmup + samples):
            body = payload(i)
            async with factory() as session:
                async with session.begin():
                    await session.execute(text("SELECT 1"))  # the caller's own work
                    t0 = time.perf_counter()
                    await enqueue_alert(session, body, "disable")
                    t1 = time.perf_counter()
                t2 = time.perf_counter()
            if i >= warmup:
                alone.append((t1 - t0) * 1000)
                with_commit.append((t2 - t0) * 1000)
    finally:
        await engine.dispose()
    return {"enqueue alone": alone, "enqueue + commit": with_commit}


async def commit_floor(url: str, samples: int) -> list[float]:
    """Milliseconds of BEGIN; INSERT one row; COMMIT on a scratch table (asyncpg)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    out: list[float] = []
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id serial, x text)")
        for i in range(samples + 50):
            t0 = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_commit_probe (x) VALUES ($1)", str(i))
            if i >= 50:
                out.append((time.perf_counter() - t0) * 1000)
        await conn.execute("DROP TABLE bench_commit_probe")
    finally:
        await conn.close()
    return out


def validation_us(samples: int) -> float:
    """Median microseconds of validate_payload + payload_fingerprint (no database)."""
    out = []
    for i in range(samples):
        body = payload(i)
        t0 = time.perf_counter()
        payload_fingerprint(validate_payload(body))
        out.append((time.perf_counter() - t0) * 1e6)
    return median(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="enqueue_alert cost inside a caller's PostgreSQL transaction",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=2000, help="per run (default 2000)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--background-rows",
        type=int,
        default=100_000,
        help="sent rows in the queue for the second measurement (0 = skip; default 100000)",
    )
    add_common_args(parser)
    args = parser.parse_args()
    report = Report("producer", command_line(), out_dir(args.out))
    scenarios = ["empty queue"]
    if args.background_rows:
        scenarios.append(f"{args.background_rows:,} sent rows")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        s: {"enqueue alone": [], "enqueue + commit": [], "commit floor": []} for s in scenarios
    }

    with pg_database() as url:
        for scenario in scenarios:
            asyncio.run(reset_queue(url))
            if scenario != "empty queue":
                asyncio.run(pg_fill(url, sent=args.background_rows))
            for run in range(args.runs):
                measured = asyncio.run(enqueue_samples(url, args.samples, args.warmup))
                measured["commit floor"] = asyncio.run(commit_floor(url, args.samples // 2))
                for key, values in measured.items():
                    stats = {"p50": percentile(values, 50), "p99": percentile(values, 99)}
                    runs[scenario][key].append(stats)
                    print(f"{scenario} run {run + 1} {key}: {stats}", flush=True)
                if scenario == "empty queue":
                    asyncio.run(reset_queue(url))
    validation = validation_us(5000)

    rows = []
    for scenario in scenarios:
        for key, values in runs[scenario].items():
            p50 = median([v["p50"] for v in values])
            p99 = median([v["p99"] for v in values])
            target = ""
            if key == "enqueue alone":
                target = "met" if p50 < 1.0 else "MISSED"
            rows.append([scenario, key, fmt(p50, 3), fmt(p99, 3), target])
    report.table(
        f"Producer latency in ms on PostgreSQL, median over {args.runs} runs of each run's "
        f"percentile ({args.samples:,} samples per run)",
        ["queue", "what", "p50", "p99", "target p50 < 1 ms"],
        rows,
    )
    report.add(
        f"validate_payload + payload_fingerprint alone (no database): {validation:.0f} µs "
        "median per one-alert payload"
    )
    report.data = {"samples": args.samples, "runs": runs, "validation_us": validation}
    report.save()


if __name__ == "__main__":
    main()
