"""Worker peak memory while draining a large queue (target: < 150 MB RSS).

Loads ``--rows`` due rows (default 100,000), then runs ``/usr/bin/time -v python -m alertq
worker --drain`` (alertq's defaults) against the no-op stub (``bench/stub_server.py``) and
reads "Maximum resident set size" from GNU time. The same command on an empty queue gives
the baseline: what importing and starting the worker costs before any row.

    python bench/memory.py [--rows 100000] [--backends postgres,sqlite] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    Report,
    Stub,
    add_common_args,
    command_line,
    database,
    fill_pending,
    fmt,
    median,
    out_dir,
    reset_queue,
    row,
    spawn_worker,
    wait_all,
)

TIME = "/usr/bin/time"
TARGET_MB = 150


def drain(url: str, stub: Stub, logs: Path, rows: int) -> dict[str, float]:
    """Run one ``alertq worker --drain`` under GNU time; peak RSS (MB) and rows/s."""
    stats_file = Path(tempfile.mkstemp(prefix="alertq-time-", dir=logs)[1])
    with (logs / "worker.log").open("ab") as log:
        start = time.monotonic()
        proc = spawn_worker(
            url, stub.url, drain=True, log=log, wrap=(TIME, "-v", "-o", str(stats_file))
        )
        wait_all([proc], timeout=900)
        wall = time.monotonic() - start
    text = stats_file.read_text()
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if match is None:
        raise RuntimeError(f"no RSS in GNU time's output:\n{text}")
    sent = asyncio.run(row(url, "SELECT count(*) FROM costsim_alert_queue WHERE status='sent'"))
    if sent[0] != rows:
        raise RuntimeError(f"{sent[0]} of {rows} rows sent")
    return {"peak_rss_mb": int(match.group(1)) / 1024, "wall_s": wall, "rows_per_s": rows / wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="worker peak RSS while draining 100,000 rows, with /usr/bin/time -v",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--backends", default="postgres,sqlite")
    add_common_args(parser)
    args = parser.parse_args()
    report = Report("memory", command_line(), out_dir(args.out))
    logs = Path(tempfile.mkdtemp(prefix="alertq-bench-memory-"))
    results: dict[str, Any] = {}
    table = []
    with Stub() as stub:
        for backend in [b for b in args.backends.split(",") if b]:
            base: list[dict[str, float]] = []
            full: list[dict[str, float]] = []
            with database(backend) as url:
                for run in range(args.runs):
                    asyncio.run(reset_queue(url))
                    base.append(drain(url, stub, logs, 0))
                    asyncio.run(fill_pending(url, args.rows))
                    full.append(drain(url, stub, logs, args.rows))
                    print(f"{backend} run {run + 1}: empty {base[-1]}, full {full[-1]}")
            peak = median([r["peak_rss_mb"] for r in full])
            table.append(
                [
                    backend,
                    fmt(median([r["peak_rss_mb"] for r in base])),
                    fmt(peak),
                    f"{fmt(min(r['peak_rss_mb'] for r in full))}–"
                    f"{fmt(max(r['peak_rss_mb'] for r in full))}",
                    fmt(median([r["rows_per_s"] for r in full])),
                    "met" if peak < TARGET_MB else "MISSED",
                ]
            )
            results[backend] = {"empty": base, "full": full}
    report.table(
        f"Peak RSS of `alertq worker --drain` in MB (GNU time), median of {args.runs} runs",
        [
            "backend",
            "empty queue",
            f"draining {args.rows:,} rows",
            "min–max",
            "drain rows/s (start-up included)",
            f"target < {TARGET_MB} MB",
        ],
        table,
    )
    report.data = {"rows": args.rows, **results}
    report.save()


if __name__ == "__main__":
    main()
