"""Queue throughput: alerts per second from a full queue to a local no-op receiver.

For each backend (PostgreSQL, SQLite) and each worker count, it starts that many real
``alertq worker`` processes (alertq's default settings: batch 256, 2 delivery loops per
process, 1 s poll) against ``bench/stub_server.py`` (a no-op Alertmanager in its own
process), waits until each has its database open, then bulk-loads N due rows (one alert
each) and, on PostgreSQL, sends the enqueue NOTIFY. When all N are ``sent`` the workers
get SIGTERM and must exit 0. Two rates, both without process start-up:

- **steady**: N / (last ``sent_at`` − first claim), from the rows themselves;
- **load→all sent**: N / (last ``sent_at`` − end of the load), pickup included (NOTIFY on
  PostgreSQL, up to one 1 s poll on SQLite).

In the same run, the original design (``bench/legacy_worker.py``: 10 rows per 5 s poll,
one POST per row, transaction held open) runs for ``--legacy-seconds`` with 1 and 4
processes, and the ratio alertq / original is reported per worker count.

Before that it measures the receiver's ceiling (a raw asyncio keep-alive client) and the
ceiling of one httpx client, with the same 256-alert body, so you can see what bounds what.

    python bench/throughput.py [--runs 3] [--workers 1,2,4] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from _common import (
    BENCH_DIR,
    PAYLOAD_TEMPLATE,
    Report,
    SentCounter,
    Stub,
    add_common_args,
    command_line,
    database,
    fill_pending,
    fmt,
    median,
    notify_workers,
    out_dir,
    reset_queue,
    row,
    sent_span_sql,
    spawn_worker,
    stop_workers,
    wait_workers_ready,
)

BATCH_BODY = json.dumps(
    [json.loads(PAYLOAD_TEMPLATE.replace("__SEQ__", str(i)))[0] for i in range(256)],
    separators=(",", ":"),
).encode()


# --------------------------------------------------------------------------- ceilings


async def raw_posts_per_second(url: str, connections: int, seconds: float) -> float:
    """POSTs/s of minimal asyncio keep-alive clients: the receiver's ceiling."""
    parts = urlsplit(url)
    request = (
        b"POST /api/v2/alerts HTTP/1.1\r\nHost: stub\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(BATCH_BODY)).encode() + b"\r\n\r\n" + BATCH_BODY
    )
    end = time.monotonic() + seconds

    async def one() -> int:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        n = 0
        while time.monotonic() < end:
            writer.write(request)
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # the stub answers Content-Length: 0
            n += 1
        writer.close()
        await writer.wait_closed()
        return n

    start = time.monotonic()
    total = sum(await asyncio.gather(*(one() for _ in range(connections))))
    return total / (time.monotonic() - start)


async def httpx_posts_per_second(url: str, seconds: float) -> float:
    """POSTs/s of one httpx.AsyncClient posting one after another (one delivery loop)."""
    async with httpx.AsyncClient(trust_env=False) as client:
        end = time.monotonic() + seconds
        start = time.monotonic()
        n = 0
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < end:
            response = await client.post(
                url + "/api/v2/alerts", content=BATCH_BODY, headers=headers
            )
            response.raise_for_status()
            n += 1
        return n / (time.monotonic() - start)


def ceilings(stub: Stub, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"raw x1": [], "raw x4": [], "httpx x1": []}
    for _ in range(runs):
        out["raw x1"].append(asyncio.run(raw_posts_per_second(stub.url, 1, 2.0)))
        out["raw x4"].append(asyncio.run(raw_posts_per_second(stub.url, 4, 2.0)))
        out["httpx x1"].append(asyncio.run(httpx_posts_per_second(stub.url, 2.0)))
    return out


# --------------------------------------------------------------------------- runs


def run_alertq(
    url: str, stub: Stub, workers: int, rows: int, loops: int | None, logs: Path
) -> dict[str, Any]:
    """Start ``workers`` idle worker processes, load ``rows`` due rows, time their delivery."""
    asyncio.run(reset_queue(url))
    stub.reset()
    with (logs / f"alertq-{workers}.log").open("ab") as log:
        procs = [
            spawn_worker(url, stub.url, drain=False, log=log, concurrency=loops)
            for _ in range(workers)
        ]
        try:
            asyncio.run(wait_workers_ready(url, procs))
            loaded = asyncio.run(fill_pending(url, rows, vacuum=False))
            asyncio.run(notify_workers(url))

            async def wait() -> None:
                async with SentCounter(url) as counter:
                    await counter.wait_for(rows, 600)

            asyncio.run(wait())
        finally:
            stop_workers(procs)
    sent, first_claim, last_sent = asyncio.run(row(url, sent_span_sql(url)))
    if sent != rows:
        raise RuntimeError(f"{sent} of {rows} rows sent; see {logs}")
    posted = stub.stats()
    steady = float(last_sent) - float(first_claim)
    end_to_end = float(last_sent) - loaded
    return {
        "steady_s": steady,
        "load_to_all_sent_s": end_to_end,
        "steady_rate": rows / steady,
        "load_to_all_sent_rate": rows / end_to_end,
        "posts": posted["requests"],
        "alerts_posted": posted["alerts"],
    }


def run_legacy(url: str, stub: Stub, workers: int, seconds: float, logs: Path) -> dict[str, Any]:
    asyncio.run(reset_queue(url))
    # Enough rows that the loop never runs dry: 10 per poll per process, plus slack.
    asyncio.run(fill_pending(url, workers * 10 * (int(seconds // 5) + 2)))
    stub.reset()
    with (logs / f"legacy-{workers}.log").open("ab") as log:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH_DIR / "legacy_worker.py"),
                    "--database-url",
                    url,
                    "--alertmanager-url",
                    stub.url,
                    "--duration",
                    str(seconds),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
            )
            for _ in range(workers)
        ]
        outputs = [p.communicate(timeout=seconds + 120)[0] for p in procs]
    results = [json.loads(o.decode().strip().splitlines()[-1]) for o in outputs]
    sent = sum(r["sent"] for r in results)
    return {"sent": sent, "rate": sent / seconds, "posts": stub.stats()["requests"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="alertq queue throughput vs the original design, PostgreSQL and SQLite",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--rows-postgres", type=int, default=20_000)
    parser.add_argument("--rows-sqlite", type=int, default=20_000)
    parser.add_argument(
        "--loops", type=int, default=None, help="delivery loops per process (default: alertq's)"
    )
    parser.add_argument(
        "--legacy-seconds",
        type=float,
        default=10.0,
        help="window of the original design, rounded up to its 5 s poll (default 10)",
    )
    parser.add_argument("--legacy-workers", default="1,4")
    parser.add_argument("--no-legacy", action="store_true")
    add_common_args(parser)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    worker_counts = [int(w) for w in args.workers.split(",")]
    legacy_counts = [] if args.no_legacy else [int(w) for w in args.legacy_workers.split(",")]
    legacy_s = max(5.0, math.ceil(args.legacy_seconds / 5) * 5)
    report = Report("throughput", command_line(), out_dir(args.out))
    logs = Path(tempfile.mkdtemp(prefix="alertq-bench-throughput-"))

    with Stub() as stub:
        ceiling = ceilings(stub, args.runs)
        report.table(
            f"Receiver and client ceilings: POSTs of 256 alerts ({len(BATCH_BODY):,} bytes), "
            f"median of {args.runs} runs of 2 s",
            ["client", "POST/s", "alerts/s"],
            [
                ["raw asyncio, 1 connection (stub ceiling)", *_rate(ceiling["raw x1"])],
                ["raw asyncio, 4 connections (stub ceiling)", *_rate(ceiling["raw x4"])],
                ["one httpx.AsyncClient, sequential", *_rate(ceiling["httpx x1"])],
            ],
        )
        results: dict[str, Any] = {"ceilings_posts_per_second": ceiling}
        table: list[list[str]] = []
        for backend in backends:
            rows = args.rows_postgres if backend == "postgres" else args.rows_sqlite
            alertq: dict[int, list[dict[str, Any]]] = {w: [] for w in worker_counts}
            legacy: dict[int, list[dict[str, Any]]] = {w: [] for w in legacy_counts}
            with database(backend) as url:
                for run in range(args.runs):
                    order = (
                        worker_counts[run % len(worker_counts) :]
                        + worker_counts[: run % len(worker_counts)]
                    )
                    for w in order:
                        r = run_alertq(url, stub, w, rows, args.loops, logs)
                        alertq[w].append(r)
                        print(f"{backend} alertq workers={w} run={run + 1}: {r}", flush=True)
                    for w in legacy_counts:
                        r = run_legacy(url, stub, w, legacy_s, logs)
                        legacy[w].append(r)
                        print(f"{backend} legacy workers={w} run={run + 1}: {r}", flush=True)
            for w in worker_counts:
                steady = [r["steady_rate"] for r in alertq[w]]
                wall = [r["load_to_all_sent_rate"] for r in alertq[w]]
                ratio = "–"
                if w in legacy:
                    pairs = zip(alertq[w], legacy[w], strict=True)
                    ratios = [a["steady_rate"] / b["rate"] for a, b in pairs]
                    ratio = f"{median(ratios):,.0f}×"
                posts = median([r["posts"] for r in alertq[w]])
                table.append(
                    [
                        backend,
                        "alertq",
                        str(w),
                        f"{rows:,}",
                        fmt(median(steady)),
                        f"{fmt(min(steady))}–{fmt(max(steady))}",
                        fmt(median(wall)),
                        fmt(rows / posts if posts else float("nan")),
                        ratio,
                    ]
                )
            for w in legacy_counts:
                rates = [r["rate"] for r in legacy[w]]
                table.append(
                    [
                        backend,
                        "original",
                        str(w),
                        f"{median([r['sent'] for r in legacy[w]]):,.0f} in {legacy_s:g}s",
                        fmt(median(rates), 2),
                        f"{fmt(min(rates), 2)}–{fmt(max(rates), 2)}",
                        "–",
                        "1",
                        "1×",
                    ]
                )
            results[backend] = {
                "rows": rows,
                "alertq": {str(k): v for k, v in alertq.items()},
                "legacy": {str(k): v for k, v in legacy.items()},
            }
        report.table(
            f"Throughput in alerts/s, median of {args.runs} runs (rows drained per run; "
            "ratio = alertq steady / original, same run, same worker count)",
            [
                "backend",
                "design",
                "workers",
                "rows",
                "steady alerts/s",
                "min–max",
                "load→all sent alerts/s",
                "alerts/POST",
                "vs original",
            ],
            table,
        )
    report.data = results
    report.save()


def _rate(values: list[float]) -> list[str]:
    return [fmt(median(values)), fmt(median(values) * 256)]


if __name__ == "__main__":
    main()
