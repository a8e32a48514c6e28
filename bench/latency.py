"""Enqueue → delivered latency at a steady rate (default 200 alerts/s for 30 s).

Producers in this process (``--producers`` concurrent tasks) enqueue one alert per
transaction with ``alertq.enqueue_alert`` + commit, on a fixed schedule (alert ``i`` at
``t0 + i / rate``; the achieved rate is reported), while one real
``alertq worker`` process (alertq's defaults: LISTEN/NOTIFY wake-up on PostgreSQL, 1 s
polling on SQLite) delivers to a receiver:

- ``stub``: ``bench/stub_server.py --record`` stores each alert's arrival time (by its
  ``seq`` label) on the wall clock the producer also uses;
- ``alertmanager``: a real ``prometheus-alertmanager``; the arrival time is the alert's
  ``updatedAt`` (set on receipt, millisecond precision), read back from its API.

Latency = arrival − the moment the producer began the alert's transaction. The table also
gives ``sent_at − created_at`` from the rows (alertq records ``sent_at`` after the POST
returns), split at ``last_attempt_at`` (the claim that delivered the row) into *pickup*
(waiting to be claimed: wake-up or poll, and a busy worker's current cycle) and
*claim→recorded* (claim, POST, recording).

The original design (``bench/legacy_worker.py``, PostgreSQL only, as the original system
was) gets the same producer. It cannot keep up with 200/s (10 rows per 5 s), so its
percentiles are over *all* enqueued rows, counting the undelivered ones as later than the
end of the run (shown as "> N s"); a low-rate run (``--legacy-low-rate``, default 1/s)
shows its latency when it does keep up.

Before the producer runs, each backend also gets the idle worker's CPU: one ``alertq
worker`` (defaults) on an empty queue, its user + system CPU (``/proc/<pid>/stat``) over
``--idle-seconds`` (default 30), as a percentage of one core.

    python bench/latency.py [--rate 200] [--seconds 30] [--runs 3] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text

from _common import (
    BENCH_DIR,
    Alertmanager,
    Report,
    Stub,
    add_common_args,
    command_line,
    database,
    fmt,
    median,
    out_dir,
    percentile,
    reset_queue,
    spawn_worker,
    stop_workers,
    wait_workers_ready,
)
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.enqueue import enqueue_alert


def payload(run_id: str, seq: int) -> list[dict[str, Any]]:
    return [
        {
            "labels": {
                "alertname": "AlertqLatencyBench",
                "run": run_id,
                "seq": str(seq),
                "severity": "warning",
            },
            "annotations": {"summary": f"latency benchmark alert {seq}"},
            "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
    ]


async def produce(
    url: str, run_id: str, rate: float, seconds: float, producers: int
) -> dict[str, Any]:
    """Enqueue ``rate × seconds`` alerts, alert ``i`` due at ``t0 + i / rate``, spread over
    ``producers`` concurrent tasks (each its own transaction per alert), so one slow commit
    does not hold back the schedule. Returns the start time of each alert's transaction."""
    engine = create_engine(Settings(database_url=url))
    factory = create_session_factory(engine)
    n = int(rate * seconds)
    started: dict[str, float] = {}
    try:
        async with transaction(factory) as session:  # warm the pool
            await session.execute(text("SELECT 1"))
        t0 = time.monotonic()

        async def producer(k: int) -> None:
            for i in range(k, n, producers):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # the producer's schedule
                started[str(i)] = time.time()
                async with transaction(factory) as session:
                    await enqueue_alert(session, payload(run_id, i), "disable")

        await asyncio.gather(*(producer(k) for k in range(producers)))
        elapsed = time.monotonic() - t0
    finally:
        await engine.dispose()
    return {"started": started, "achieved_rate": n / elapsed, "produce_seconds": elapsed}


async def db_latencies(url: str) -> dict[str, list[float]]:
    """From the sent rows, in seconds: ``sent_at − created_at`` (``total``), split into
    ``pickup`` (``last_attempt_at`` − ``created_at``: until the claim that delivered it)
    and ``deliver`` (``sent_at − last_attempt_at``: claim, POST and the recording)."""
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT created_at, last_attempt_at, sent_at FROM costsim_alert_queue"
                        " WHERE status = 'sent'"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    out: dict[str, list[float]] = {"total": [], "pickup": [], "deliver": []}
    for created, claimed, sent in rows:
        created, claimed, sent = _parse(created), _parse(claimed), _parse(sent)
        out["total"].append((sent - created).total_seconds())
        out["pickup"].append((claimed - created).total_seconds())
        out["deliver"].append((sent - claimed).total_seconds())
    return out


def _parse(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite via a raw text() query
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _am_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Receiver:
    """The stub (recording arrivals) or a real Alertmanager, as one interface."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.stub: Stub | None = None
        self.am: Alertmanager | None = None
        if kind == "stub":
            self.stub = Stub(record=True)
            self.url = self.stub.url
        else:
            self.am = Alertmanager()
            self.url = self.am.url

    def arrivals(self, run_id: str) -> dict[str, float]:
        if self.stub is not None:
            records: dict[str, float] = self.stub.stats()["records"]
            return records
        assert self.am is not None
        return {
            a["labels"]["seq"]: _am_time(a["updatedAt"]) for a in self.am.alerts(f'run="{run_id}"')
        }

    def close(self) -> None:
        if self.stub is not None:
            self.stub.stop()
        if self.am is not None:
            self.am.stop()


def spawn_legacy(url: str, receiver_url: str, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(BENCH_DIR / "legacy_worker.py"),
            "--database-url",
            url,
            "--alertmanager-url",
            receiver_url,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(url: str, seconds: float, logs: Path) -> float:
    """Percent of one core an idle ``alertq worker`` (empty queue, defaults) uses."""
    asyncio.run(reset_queue(url))
    with Stub() as stub, (logs / "idle.log").open("ab") as log:
        procs = [spawn_worker(url, stub.url, drain=False, log=log)]
        try:
            asyncio.run(wait_workers_ready(url, procs))
            time.sleep(2.0)  # let start-up work (imports, first pass) finish first
            c0, t0 = cpu_seconds(procs[0].pid), time.monotonic()
            time.sleep(seconds)  # the measurement window itself
            c1, t1 = cpu_seconds(procs[0].pid), time.monotonic()
        finally:
            stop_workers(procs)
    return (c1 - c0) / (t1 - t0) * 100


def one_run(
    url: str,
    receiver_kind: str,
    design: str,
    rate: float,
    seconds: float,
    grace: float,
    producers: int,
    logs: Path,
) -> dict[str, Any]:
    """One producer run against one fresh worker and receiver."""
    asyncio.run(reset_queue(url))
    receiver = Receiver(receiver_kind)
    run_id = uuid.uuid4().hex[:8]
    try:
        with (logs / f"{design}-{receiver_kind}.log").open("ab") as log:
            if design == "alertq":
                procs = [spawn_worker(url, receiver.url, drain=False, log=log)]
            else:
                procs = [spawn_legacy(url, receiver.url, log)]
            try:
                asyncio.run(
                    wait_workers_ready(url, procs, per_worker=2 if design == "alertq" else 1)
                )
                produced = asyncio.run(produce(url, run_id, rate, seconds, producers))
                n = len(produced["started"])
                deadline = time.monotonic() + grace
                arrivals = receiver.arrivals(run_id)
                while len(arrivals) < n and time.monotonic() < deadline:
                    time.sleep(0.5)  # poll interval of the completion check
                    arrivals = receiver.arrivals(run_id)
            finally:
                stop_workers(procs)
        run_end = time.time()
    finally:
        receiver.close()
    started: dict[str, float] = produced["started"]
    delivered = [arrivals[s] - t for s, t in started.items() if s in arrivals]
    # Undelivered rows count as later than the end of the run (censored).
    censored = [math.inf for s in started if s not in arrivals]
    everything = delivered + censored
    db = asyncio.run(db_latencies(url))
    return {
        "n": len(started),
        "delivered": len(delivered),
        "achieved_rate": produced["achieved_rate"],
        "p50_ms": percentile(everything, 50) * 1000,
        "p99_ms": percentile(everything, 99) * 1000,
        "max_ms": max(everything) * 1000,
        "db_p50_ms": percentile(db["total"], 50) * 1000,
        "db_p99_ms": percentile(db["total"], 99) * 1000,
        "pickup_p50_ms": percentile(db["pickup"], 50) * 1000,
        "pickup_p99_ms": percentile(db["pickup"], 99) * 1000,
        "deliver_p50_ms": percentile(db["deliver"], 50) * 1000,
        "deliver_p99_ms": percentile(db["deliver"], 99) * 1000,
        "censored_after_s": run_end - min(started.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description="enqueue→delivered latency p50/p99 at a steady rate, alertq vs original",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="alerts/s (default 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="producer run (default 30)")
    parser.add_argument(
        "--producers", type=int, default=4, help="concurrent producer tasks (default 4)"
    )
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--receivers", default="stub,alertmanager")
    parser.add_argument(
        "--grace", type=float, default=15.0, help="seconds to wait for stragglers (default 15)"
    )
    parser.add_argument("--no-legacy", action="store_true")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="also measure an idle worker's CPU over this window, per backend (0 = skip)",
    )
    parser.add_argument(
        "--legacy-low-rate",
        type=float,
        default=1.0,
        help="also run the original design at this rate, stub only (0 = skip; default 1)",
    )
    add_common_args(parser)
    args = parser.parse_args()
    report = Report("latency", command_line(), out_dir(args.out))
    logs = Path(tempfile.mkdtemp(prefix="alertq-bench-latency-"))
    backends = [b for b in args.backends.split(",") if b]
    receivers = [r for r in args.receivers.split(",") if r]

    plan: list[tuple[str, str, str, float, float, int]] = []
    for backend in backends:
        for receiver in receivers:
            plan.append((backend, receiver, "alertq", args.rate, args.seconds, args.runs))
            if backend == "postgres" and not args.no_legacy:
                plan.append((backend, receiver, "original", args.rate, args.seconds, 1))
        if backend == "postgres" and not args.no_legacy and args.legacy_low_rate > 0:
            plan.append(
                (backend, "stub", "original", args.legacy_low_rate, max(args.seconds, 20.0), 1)
            )

    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    idle: dict[str, list[float]] = {}
    for backend in backends:
        with database(backend) as url:
            for run in range(args.runs if args.idle_seconds > 0 else 0):
                idle.setdefault(backend, []).append(idle_cpu(url, args.idle_seconds, logs))
                print(f"{backend} idle worker run {run + 1}: {idle[backend][-1]:.2f}% of a core")
            for b, receiver, design, rate, seconds, runs in plan:
                if b != backend:
                    continue
                grace = args.grace if design == "alertq" else 6.0
                runs_out = []
                for run in range(runs):
                    r = one_run(url, receiver, design, rate, seconds, grace, args.producers, logs)
                    runs_out.append(r)
                    print(f"{backend} {receiver} {design} {rate:g}/s run {run + 1}: {r}")
                results.append(
                    {
                        "backend": backend,
                        "receiver": receiver,
                        "design": design,
                        "rate": rate,
                        "seconds": seconds,
                        "runs": runs_out,
                    }
                )
                rows.append(_row(backend, receiver, design, rate, runs_out))
    report.table(
        f"Enqueue → delivered latency in ms; alertq: median over {args.runs} runs of each "
        "run's percentile; original: one run ('> N s': not delivered by the end of the run)",
        [
            "backend",
            "receiver",
            "design",
            "rate/s (achieved)",
            "delivered",
            "p50",
            "p99",
            "max",
            "sent_at−created_at p50 / p99",
            "of which pickup",
            "of which claim→recorded",
        ],
        rows,
    )
    if idle:
        report.table(
            f"Idle worker CPU, % of one core over {args.idle_seconds:g} s on an empty queue "
            f"(alertq's defaults), median of {args.runs} runs",
            ["backend", "% of one core", "min–max", "target < 2%"],
            [
                [
                    b,
                    f"{median(v):.2f}",
                    f"{min(v):.2f}–{max(v):.2f}",
                    "met" if median(v) < 2 else "MISSED",
                ]
                for b, v in idle.items()
            ],
        )
    report.data = {"results": results, "idle_cpu_percent": idle, "logs": str(logs)}
    report.save()


def _row(
    backend: str, receiver: str, design: str, rate: float, runs: list[dict[str, Any]]
) -> list[str]:
    def med(key: str) -> float:
        return median([r[key] for r in runs])

    def ms(key: str) -> str:
        value = med(key)
        if math.isinf(value):
            return f"> {median([r['censored_after_s'] for r in runs]):.0f} s"
        return fmt(value)

    db = f"{fmt(med('db_p50_ms'))} / {fmt(med('db_p99_ms'))}"
    pickup = f"{fmt(med('pickup_p50_ms'))} / {fmt(med('pickup_p99_ms'))}"
    deliver = f"{fmt(med('deliver_p50_ms'))} / {fmt(med('deliver_p99_ms'))}"
    if any(r["delivered"] < r["n"] for r in runs):
        db = f"{db} (delivered rows only)"
    return [
        backend,
        receiver,
        design,
        f"{rate:g} ({med('achieved_rate'):.0f})",
        f"{median([r['delivered'] for r in runs]):,.0f} of {median([r['n'] for r in runs]):,.0f}",
        ms("p50_ms"),
        ms("p99_ms"),
        ms("max_ms"),
        db,
        pickup,
        deliver,
    ]


if __name__ == "__main__":
    main()
