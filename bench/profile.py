"""Where the time goes: per-phase timings of alertq's hot paths, optionally with a profile.

Two targets, both in-process on a throw-away PostgreSQL database:

- ``worker``: an ``AlertWorker`` (``--concurrency``, default 1) drains ``--rows`` rows to
  the no-op stub; it reports, per claim → deliver → record cycle, the wall and CPU
  milliseconds of each phase (``AlertDriver.alerts_claim``, ``AlertWorker._deliver_all``,
  ``AlertWorker._record``). CPU per phase is exact only with one loop.
- ``enqueue``: ``--samples`` caller transactions each calling ``enqueue_alert``; it
  reports the wall and CPU milliseconds of validation and of each driver call
  (``alerts_insert``, ``alerts_supersede_older``, ``alerts_notify``).

The timings wrap those methods in this process only (nothing in ``src/`` changes).
``--pyinstrument FILE`` also writes a pyinstrument profile of the measured part
(``pip install pyinstrument`` into the venv first).

    python bench/profile.py worker [--rows 30000] [--concurrency 1] [--pyinstrument F]
    python bench/profile.py enqueue [--samples 1000] [--pyinstrument F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text

from _common import (
    RESULTS_DIR,
    Stub,
    command_line,
    fmt,
    pg_database,
    pg_fill,
)
from alertq import driver, engine, enqueue
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from producer import payload

WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed_async(owner: Any, name: str, label: str) -> None:
    """Replace the coroutine method ``owner.name`` by one that adds up its time."""
    original = getattr(owner, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return await original(*args, **kwargs)
        finally:
            WALL[label] += time.perf_counter() - w0
            CPU[label] += time.process_time() - c0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


def timed_sync(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            WALL[label] += time.perf_counter() - w0
            CPU[label] += time.process_time() - c0
            CALLS[label] += 1

    setattr(owner, name, wrapper)


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        print(f"profile: {path}")


def reset_counters() -> None:
    WALL.clear()
    CPU.clear()
    CALLS.clear()


def print_table(title: str, per: int, unit: str, order: list[str]) -> None:
    print(f"\n### {title}\n")
    print(f"| phase | calls | wall ms per {unit} | CPU ms per {unit} |")
    print("|---|---|---|---|")
    for label in order:
        if CALLS[label]:
            print(
                f"| {label} | {CALLS[label]:,} | {fmt(WALL[label] / per * 1000, 3)} |"
                f" {fmt(CPU[label] / per * 1000, 3)} |"
            )


async def run_worker(url: str, stub_url: str, concurrency: int) -> tuple[float, float]:
    settings = Settings(database_url=url, alertmanager_urls=[stub_url], concurrency=concurrency)
    db = create_engine(settings)
    try:
        async with db.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        worker = engine.AlertWorker(settings, create_session_factory(db))
        w0, c0 = time.perf_counter(), time.process_time()
        await worker.run(asyncio.Event(), drain=True)
        return time.perf_counter() - w0, time.process_time() - c0
    finally:
        await db.dispose()


def profile_worker(args: argparse.Namespace) -> None:
    timed_async(driver.QueueDriver, "alerts_claim", "claim (alerts_claim)")
    timed_async(engine.AlertWorker, "_deliver_all", "deliver (_deliver_all)")
    timed_async(engine.AlertWorker, "_record", "record (_record)")
    with Stub() as stub, pg_database() as url:
        asyncio.run(pg_fill(url, pending=args.rows))
        reset_counters()
        with profiled(args.pyinstrument):
            wall, cpu = asyncio.run(run_worker(url, stub.url, args.concurrency))
    cycles = max(1, CALLS["record (_record)"])
    print(
        f"\n{args.rows:,} rows in {wall:.2f} s = {args.rows / wall:,.0f} rows/s; "
        f"{cycles} cycles; per cycle: {wall / cycles * 1000:.1f} ms wall, "
        f"{cpu / cycles * 1000:.1f} ms CPU of this process (concurrency {args.concurrency})"
    )
    print_table(
        "Per claim → deliver → record cycle",
        cycles,
        "cycle",
        ["claim (alerts_claim)", "deliver (_deliver_all)", "record (_record)"],
    )


async def run_enqueue(url: str, samples: int, warmup: int) -> float:
    db = create_engine(Settings(database_url=url))
    factory = create_session_factory(db)
    total = 0.0
    try:
        for i in range(warmup + samples):
            if i == warmup:
                reset_counters()
            body = payload(i)
            async with factory() as session, session.begin():
                await session.execute(text("SELECT 1"))
                t0 = time.perf_counter()
                await enqueue.enqueue_alert(session, body, "disable")
                if i >= warmup:
                    total += time.perf_counter() - t0
    finally:
        await db.dispose()
    return total


def profile_enqueue(args: argparse.Namespace) -> None:
    timed_sync(enqueue, "validate_payload", "validate_payload")
    timed_sync(enqueue, "payload_fingerprint", "payload_fingerprint")
    timed_async(driver.QueueDriver, "alerts_insert", "alerts_insert")
    timed_async(driver.QueueDriver, "alerts_supersede_older", "alerts_supersede_older")
    timed_async(driver.QueueDriver, "alerts_notify", "alerts_notify")
    with pg_database() as url, profiled(args.pyinstrument):
        total = asyncio.run(run_enqueue(url, args.samples, 100))
    print(f"\nenqueue_alert: {total / args.samples * 1000:.3f} ms mean wall per call")
    print_table(
        "Per enqueue_alert call (NOTIFY is throttled, so it runs on only some calls)",
        args.samples,
        "enqueue",
        [
            "validate_payload",
            "payload_fingerprint",
            "alerts_insert",
            "alerts_supersede_older",
            "alerts_notify",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description="per-phase timings (and optional pyinstrument profile) of alertq",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="target", required=True)
    w = sub.add_parser("worker", help="claim → deliver → record, in-process")
    w.add_argument("--rows", type=int, default=30_000)
    w.add_argument("--concurrency", type=int, default=1)
    e = sub.add_parser("enqueue", help="enqueue_alert in a caller's transaction")
    e.add_argument("--samples", type=int, default=1000)
    for p in (w, e):
        p.add_argument(
            "--pyinstrument",
            type=Path,
            default=None,
            help=f"write a pyinstrument text profile here (e.g. {RESULTS_DIR}/profile.txt)",
        )
    args = parser.parse_args()
    print(f"`{command_line()}`")
    if args.target == "worker":
        profile_worker(args)
    else:
        profile_enqueue(args)


if __name__ == "__main__":
    main()
