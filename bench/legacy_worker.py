"""The original design's delivery loop, reproduced for comparison (a benchmark, not alertq).

As the system alertq replaces did it (``shared/seed/legacy-schema.md``):

- every 5 s, open a transaction and fetch up to 10 due rows ``FOR UPDATE SKIP LOCKED``
  (SQLite ignores the lock clause; its writers are serialised anyway);
- POST each row's payload on its own, one at a time, to one Alertmanager URL, while that
  transaction (and its row locks) stays open;
- on success mark the row ``sent``; on failure count the attempt and back off
  ``2^attempts`` seconds (capped at 300 s, no jitter), ``failed`` after ``max_attempts``;
- commit, sleep 5 s, repeat.

One instrumentation difference: it stores ``sent_at`` (the original lost the send time),
so the benchmarks can measure its latency the same way as alertq's.

    python bench/legacy_worker.py --database-url URL --alertmanager-url URL --duration 10

Runs for ``--duration`` seconds (or until SIGTERM/SIGINT, finishing the current batch),
then prints one JSON line: ``{"sent", "failed", "retried", "cycles", "elapsed"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import select

from alertq.config import Settings
from alertq.db import create_engine, create_session_factory
from alertq.models import CostSimAlertQueueModel as Q

POLL_SECONDS = 5.0
BATCH = 10
BACKOFF_CAP = 300.0


async def run(database_url: str, alertmanager_url: str, duration: float) -> dict[str, float]:
    engine = create_engine(Settings(database_url=database_url))
    factory = create_session_factory(engine)
    client = httpx.AsyncClient(timeout=10.0, trust_env=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    counts = {"sent": 0, "failed": 0, "retried": 0, "cycles": 0}
    url = alertmanager_url.rstrip("/") + "/api/v2/alerts"
    start = time.monotonic()
    try:
        while not stop.is_set() and time.monotonic() - start < duration:
            counts["cycles"] += 1
            async with factory() as session, session.begin():
                now = datetime.now(UTC)
                rows = (
                    await session.scalars(
                        select(Q)
                        .where(Q.status == "pending", Q.next_attempt_at <= now)
                        .order_by(Q.next_attempt_at)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for alert in rows:  # one POST per row, the transaction held open
                    error: str | None = None
                    try:
                        response = await client.post(url, json=alert.payload)
                        if response.status_code >= 300:
                            error = f"HTTP {response.status_code}: {response.text[:200]}"
                    except httpx.HTTPError as exc:
                        error = f"{type(exc).__name__}: {exc}"
                    attempt_at = datetime.now(UTC)
                    alert.last_attempt_at = attempt_at
                    if error is None:
                        alert.status = "sent"
                        alert.sent_at = attempt_at  # instrumentation: the original lost this
                        counts["sent"] += 1
                    else:
                        alert.attempts += 1
                        alert.last_error = error
                        if alert.attempts >= alert.max_attempts:
                            alert.status = "failed"
                            counts["failed"] += 1
                        else:
                            delay = min(BACKOFF_CAP, 2.0**alert.attempts)
                            alert.next_attempt_at = attempt_at + timedelta(seconds=delay)
                            counts["retried"] += 1
                    await session.flush()  # the driver flushed after each update
            remaining = duration - (time.monotonic() - start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, min(POLL_SECONDS, remaining)))
    finally:
        await client.aclose()
        await engine.dispose()
    return {**counts, "elapsed": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The original delivery loop (10 rows per 5 s poll, one POST per row, "
        "transaction held open), for comparison benchmarks.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--alertmanager-url", required=True, help="one URL")
    parser.add_argument(
        "--duration", type=float, default=3600.0, help="seconds to run (default 3600)"
    )
    args = parser.parse_args()
    result = asyncio.run(run(args.database_url, args.alertmanager_url, args.duration))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
