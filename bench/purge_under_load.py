"""``alertq purge`` of 900,000 old rows while workers keep delivering.

For each run, on a throw-away PostgreSQL database:

1. bulk-load 1,000,000 ``sent`` rows (INSERT … SELECT generate_series): 900,000 two days
   old, 100,000 an hour old;
2. start ``--workers`` worker processes delivering to the no-op stub
   (``bench/stub_server.py --record``), and a producer in this process enqueuing
   ``--rate`` alerts/s, one per transaction, with ``alertq.enqueue_alert``;
3. after ``--warmup`` seconds of steady load, run ``alertq purge --older-than 1d`` (its
   batches of ``PURGE_BATCH`` rows, each its own transaction), and keep the load on for
   ``--after`` seconds once it is done.

The workers are ``alertq worker`` (same command, same defaults) with one addition: every
claim transaction is timed, from taking a pooled connection to its COMMIT, and the claim
statement alone too (``AlertDriver.alerts_claim``). Lateness is each alert's
enqueue → arrival at the stub. Both are split into before, during and after the purge.
The target is that no claim stalls for more than a second while the purge runs.

    python bench/purge_under_load.py [--rows 1000000] [--old 900000] [--workers 2]
                                     [--rate 200] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from _common import (
    Report,
    Stub,
    add_common_args,
    command_line,
    fmt,
    median,
    out_dir,
    percentile,
    pg_database,
    pg_fill,
    stop_workers,
    wait_workers_ready,
    worker_env,
)
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import PURGE_BATCH
from alertq.enqueue import enqueue_alert

DAY = 86_400.0
STALL = 1.0  # seconds: the target says no claim may take longer while the purge runs
PHASES = ("before", "during", "after")


# --------------------------------------------------------------------------- worker child


def child_worker(claim_log: Path) -> None:
    """Run ``alertq worker`` with each claim transaction timed; write the timings on exit.

    A record is ``[wall start, transaction seconds, statement seconds, rows claimed]``.
    """
    import alertq.engine as engine_module
    from alertq.cli import app
    from alertq.driver import AlertDriver

    records: list[list[float]] = []
    current: ContextVar[dict[str, float] | None] = ContextVar("claim", default=None)
    claim = AlertDriver.alerts_claim
    begin = engine_module.transaction

    async def timed_claim(self: AlertDriver, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        rows = await claim(self, *args, **kwargs)
        info = current.get()
        if info is not None:
            info["statement"] = time.perf_counter() - start
            info["rows"] = len(rows)
        return rows

    @asynccontextmanager
    async def timed_transaction(
        factory: async_sessionmaker[AsyncSession],
    ) -> AsyncIterator[AsyncSession]:
        info: dict[str, float] = {}
        current.set(info)  # this task's innermost transaction
        wall, start = time.time(), time.perf_counter()
        async with begin(factory) as session:
            yield session
        if "rows" in info:
            records.append([wall, time.perf_counter() - start, info["statement"], info["rows"]])

    AlertDriver.alerts_claim = timed_claim  # type: ignore[method-assign]
    engine_module.transaction = timed_transaction  # type: ignore[assignment]
    try:
        app(["worker"], standalone_mode=False)
    finally:
        claim_log.write_text(json.dumps(records))


def spawn_child(url: str, stub_url: str, claim_log: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child-worker", str(claim_log)],
        env=worker_env(url, stub_url),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


# --------------------------------------------------------------------------- one run


def payload(run: str, seq: int) -> list[dict[str, Any]]:
    return [
        {
            "labels": {"alertname": "AlertqPurgeBench", "run": run, "seq": f"{run}-{seq}"},
            "annotations": {"summary": f"delivered while a purge runs ({seq})"},
        }
    ]


async def produce(
    url: str, run: str, rate: float, producers: int, stop: asyncio.Event
) -> tuple[dict[str, float], dict[str, float]]:
    """Enqueue alert ``i`` at ``t0 + i / rate`` until ``stop``, spread over ``producers``
    concurrent tasks (each its own transaction per alert), so one slow commit does not hold
    back the schedule. Returns each alert's transaction start (wall clock, as the stub
    records arrivals) and how long its enqueue transaction took, COMMIT included."""
    engine = create_engine(Settings(database_url=url), pool_size=producers)
    factory = create_session_factory(engine)
    started: dict[str, float] = {}
    took: dict[str, float] = {}
    try:
        async with transaction(factory) as session:  # warm the pool
            await session.execute(text("SELECT 1"))
        t0 = time.monotonic()

        async def producer(k: int) -> None:
            i = k
            while not stop.is_set():
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the producer's schedule
                seq = f"{run}-{i}"
                started[seq], begin = time.time(), time.perf_counter()
                async with transaction(factory) as session:
                    await enqueue_alert(session, payload(run, i), "disable")
                took[seq] = time.perf_counter() - begin
                i += producers

        await asyncio.gather(*(producer(k) for k in range(producers)))
    finally:
        await engine.dispose()
    return started, took


async def purge(url: str, stub_url: str) -> tuple[float, float, int]:
    """``alertq purge --older-than 1d``; returns (start, end, rows deleted)."""
    start = time.time()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alertq",
        "purge",
        "--older-than",
        "1d",
        env=worker_env(url, stub_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await process.communicate()
    end = time.time()
    if process.returncode != 0:
        raise RuntimeError(f"alertq purge exited with {process.returncode}: {out.decode()}")
    match = re.search(rb"purged (\d+) rows", out)
    if match is None:
        raise RuntimeError(f"unexpected purge output: {out.decode()!r}")
    return start, end, int(match.group(1))


async def load_and_purge(
    url: str, stub: Stub, procs: Sequence[subprocess.Popen[bytes]], args: argparse.Namespace
) -> dict[str, Any]:
    await wait_workers_ready(url, procs)
    run = uuid.uuid4().hex[:8]
    stop = asyncio.Event()
    producer = asyncio.create_task(produce(url, run, args.rate, args.producers, stop))
    produce_start = time.time()
    await asyncio.sleep(args.warmup)  # the baseline window: steady load, no purge
    purge_start, purge_end, deleted = await purge(url, stub.url)
    await asyncio.sleep(args.after)  # the recovery window
    stop.set()
    started, took = await producer
    produce_end = time.time()
    deadline = time.monotonic() + 120
    while True:
        records: dict[str, float] = (await asyncio.to_thread(stub.stats))["records"]
        arrived = {s: t for s, t in records.items() if s in started}
        if len(arrived) == len(started) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)  # poll interval of the completion check
    return {
        "started": started,
        "took": took,
        "arrived": arrived,
        "purge_start": purge_start,
        "purge_end": purge_end,
        "deleted": deleted,
        "produce_start": produce_start,
        "produce_end": produce_end,
    }


async def remaining(url: str) -> dict[str, int]:
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:
            old, recent, pending = (
                await conn.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE created_at < now() - interval '1 day'),"
                        " count(*) FILTER (WHERE created_at >= now() - interval '1 day'"
                        "   AND payload -> 0 -> 'labels' ->> 'alertname' = 'BenchAlert'),"
                        " count(*) FILTER (WHERE status = 'pending')"
                        " FROM costsim_alert_queue"
                    )
                )
            ).one()
    finally:
        await engine.dispose()
    return {"old": int(old), "recent_loaded": int(recent), "pending": int(pending)}


def phase(t: float, start: float, end: float) -> str:
    return "before" if t < start else "during" if t < end else "after"


def summarise(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": (max(values) if values else math.nan) * 1000,
    }


def one_run(args: argparse.Namespace, logs: Path, index: int) -> dict[str, Any]:
    with pg_database() as url:
        fill_start = time.perf_counter()
        asyncio.run(pg_fill(url, sent=args.old, age_seconds=2 * DAY, vacuum=False))
        asyncio.run(pg_fill(url, sent=args.rows - args.old, age_seconds=3600.0))
        fill_seconds = time.perf_counter() - fill_start
        claim_logs = [logs / f"claims-{index}-{w}.json" for w in range(args.workers)]
        with Stub(record=True) as stub, (logs / f"workers-{index}.log").open("ab") as log:
            procs = [spawn_child(url, stub.url, path, log) for path in claim_logs]
            try:
                result = asyncio.run(load_and_purge(url, stub, procs, args))
            finally:
                stop_workers(procs)
        left = asyncio.run(remaining(url))

    start, end = result["purge_start"], result["purge_end"]
    claims: dict[str, list[float]] = {p: [] for p in PHASES}
    statements: dict[str, list[float]] = {p: [] for p in PHASES}
    for path in claim_logs:
        for wall, seconds, statement, _rows in json.loads(path.read_text()):
            claims[phase(wall, start, end)].append(seconds)
            statements[phase(wall, start, end)].append(statement)
    lateness: dict[str, list[float]] = {p: [] for p in PHASES}
    enqueues: dict[str, list[float]] = {p: [] for p in PHASES}
    for seq, t in result["started"].items():
        enqueues[phase(t, start, end)].append(result["took"][seq])
        if seq in result["arrived"]:
            lateness[phase(t, start, end)].append(result["arrived"][seq] - t)
    duration = end - start
    seconds = {
        "before": start - result["produce_start"],
        "during": duration,
        "after": result["produce_end"] - end,
    }
    return {
        "fill_seconds": fill_seconds,
        "purge_seconds": duration,
        "deleted": result["deleted"],
        "rows_per_second": result["deleted"] / duration,
        "batches": math.ceil(result["deleted"] / PURGE_BATCH),
        "claims": {p: summarise(v) for p, v in claims.items()},
        "claim_statements": {p: summarise(v) for p, v in statements.items()},
        "stalled_claims_during": sum(s > STALL for s in claims["during"]),
        "lateness": {p: summarise(v) for p, v in lateness.items()},
        "enqueue": {p: summarise(v) for p, v in enqueues.items()},
        "produced": len(result["started"]),
        "achieved_rate": len(result["started"]) / (result["produce_end"] - result["produce_start"]),
        "rate": {p: len(enqueues[p]) / seconds[p] for p in PHASES},
        "delivered": len(result["arrived"]),
        "lost": len(result["started"]) - len(result["arrived"]),
        "left": left,
    }


# --------------------------------------------------------------------------- report


def report_runs(report: Report, runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def ms(value: float) -> str:
        return fmt(value, 1)

    purge_rows = [
        [
            i + 1,
            f"{r['deleted']:,}",
            fmt(r["purge_seconds"], 1),
            fmt(r["rows_per_second"]),
            r["batches"],
            fmt(r["purge_seconds"] / max(1, r["batches"]) * 1000, 0),
            f"{r['left']['old']:,}",
            f"{r['left']['recent_loaded']:,}",
        ]
        for i, r in enumerate(runs)
    ]
    purge_rows.append(
        [
            "median",
            f"{median([r['deleted'] for r in runs]):,.0f}",
            fmt(median([r["purge_seconds"] for r in runs]), 1),
            fmt(median([r["rows_per_second"] for r in runs])),
            "",
            fmt(median([r["purge_seconds"] / max(1, r["batches"]) * 1000 for r in runs]), 0),
            "",
            "",
        ]
    )
    report.table(
        f"Purge of {args.old:,} two-day-old sent rows out of {args.rows:,} "
        f"(batches of {PURGE_BATCH:,}), under {args.rate:g} alerts/s with "
        f"{args.workers} worker processes",
        [
            "run",
            "deleted",
            "seconds",
            "rows/s",
            "batches",
            "ms per batch",
            "old rows left",
            "recent loaded rows kept",
        ],
        purge_rows,
    )

    claim_rows = []
    for i, r in enumerate(runs):
        for p in PHASES:
            c, s, late = r["claims"][p], r["claim_statements"][p], r["lateness"][p]
            enq = r["enqueue"][p]
            claim_rows.append(
                [
                    i + 1,
                    p,
                    c["n"],
                    ms(c["p50_ms"]),
                    ms(c["p99_ms"]),
                    ms(c["max_ms"]),
                    ms(s["max_ms"]),
                    fmt(r["rate"][p], 0),
                    ms(late["p50_ms"]),
                    ms(late["p99_ms"]),
                    ms(late["max_ms"]),
                    ms(enq["p50_ms"]),
                    ms(enq["p99_ms"]),
                ]
            )
    report.table(
        "Claim transactions (pool checkout → COMMIT), enqueue → arrival lateness and the "
        "producer's enqueue transactions, before, during and after the purge (ms)",
        [
            "run",
            "phase",
            "claims",
            "claim p50",
            "claim p99",
            "claim max",
            "statement max",
            "alerts/s",
            "lateness p50",
            "lateness p99",
            "lateness max",
            "enqueue p50",
            "enqueue p99",
        ],
        claim_rows,
    )
    worst_claim = max(r["claims"]["during"]["max_ms"] for r in runs)
    worst_late = max(r["lateness"]["during"]["max_ms"] for r in runs)
    stalled = sum(r["stalled_claims_during"] for r in runs)
    lost = sum(r["lost"] for r in runs)
    verdict = "met" if stalled == 0 else "MISSED"
    report.add(
        f"Longest claim while the purge ran: {worst_claim:,.0f} ms over {len(runs)} runs; "
        f"claims over {STALL:g} s: {stalled} (target: none, **{verdict}**). "
        f"Longest enqueue → arrival during the purge: {worst_late:,.0f} ms. "
        f"Alerts produced {sum(r['produced'] for r in runs):,} (achieved "
        f"{median([r['achieved_rate'] for r in runs]):.0f}/s, median), lost {lost}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="purge 900k old rows while workers deliver; claim stalls and lateness",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--child-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows loaded (default 1M)")
    parser.add_argument("--old", type=int, default=900_000, help="of which old (default 900k)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rate", type=float, default=200.0, help="alerts/s (default 200)")
    parser.add_argument(
        "--producers", type=int, default=8, help="concurrent producer tasks (default 8)"
    )
    parser.add_argument("--warmup", type=float, default=10.0, help="load before the purge (s)")
    parser.add_argument("--after", type=float, default=5.0, help="load after the purge (s)")
    add_common_args(parser, runs=3)
    args = parser.parse_args()
    if args.child_worker is not None:
        child_worker(args.child_worker)
        return

    report = Report("purge_under_load", command_line(), out_dir(args.out))
    runs = []
    with tempfile.TemporaryDirectory(prefix="alertq-purge-bench-") as tmp:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            runs.append(one_run(args, Path(tmp), i))
            r = runs[-1]
            print(
                f"  purged {r['deleted']:,} rows in {r['purge_seconds']:.1f} s; longest claim "
                f"during it {r['claims']['during']['max_ms']:.0f} ms; lost {r['lost']}",
                flush=True,
            )
    report_runs(report, runs, args)
    report.data = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs}
    report.data["args"]["child_worker"] = None
    report.save()
    if any(r["lost"] for r in runs):
        raise SystemExit("alerts were lost")


if __name__ == "__main__":
    main()
