"""The claim's PostgreSQL CPU over consecutive bursts on one table that nobody VACUUMs.

    python bench/claim_bursts.py [--bursts 3] [--rows 61440] [--vacuum]

Each burst inserts ``--rows`` pending rows (one alert each, as the relay stores them),
ANALYZEs (as autovacuum or bench/intake.py's stand-in would), then drains them the way a
worker does: the driver's own claim of 256 rows, then its record of the batch as sent, each
in its own transaction, on one connection whose backend CPU (``/proc/PID/stat``) is read
around every statement. Two ways of recording a sent row alternate, each on its own
database: ``lease-end`` leaves ``next_attempt_at`` where the claim put it (the lease end,
in the future), as the worker did before; ``outcome-time`` sets it to the send time, as
the worker does now. Autovacuum is off on the table, so dead row versions pile up as they
do between autovacuum passes; ``--vacuum`` VACUUMs after each burst instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from _common import asyncpg_dsn, pg_database
from alertq.driver.sql import PG_CLAIM, PG_RECORD_SAME

BATCH = 256
TICK = os.sysconf("SC_CLK_TCK")
PAYLOAD = json.dumps(
    [
        {
            "labels": {"alertname": "RelayBench", "job": "node", "run": "RUN", "seq": "SEQ"},
            "annotations": {"summary": "relay benchmark alert SEQ"},
            "startsAt": "2026-12-01T00:00:00.000Z",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up&seq=SEQ",
        }
    ]
)
# Bench SQL: the fastest way to a burst of relayed rows, each with its own fingerprint.
INSERT = """\
INSERT INTO costsim_alert_queue
    (payload, alert_type, circuit_breaker_name, fingerprint, max_attempts, next_attempt_at,
     created_at, status, attempts, lease_token, delivered_to)
SELECT replace(replace($1::text, 'SEQ', g::text), 'RUN', $2)::jsonb, 'relay', 'relay',
       md5($2 || g::text), 5, clock_timestamp(), clock_timestamp(), 'pending', 0, 0,
       '[]'::jsonb
  FROM generate_series($3::int, $4::int) AS g"""


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def bursts(url: str, mode: str, n_bursts: int, rows: int, vacuum: bool) -> list[float]:
    """Claim CPU (ms of the backend per 256-row claim) of each burst."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("ALTER TABLE costsim_alert_queue SET (autovacuum_enabled = false)")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        token, out = 0, []
        for b in range(n_bursts):
            for first in range(0, rows, BATCH):
                await conn.execute(INSERT, PAYLOAD, f"{mode}{b}", first, first + BATCH - 1)
            await conn.execute("ANALYZE costsim_alert_queue")
            cpu, claims = 0, 0
            while True:
                now, token = datetime.now(UTC), token + 1
                before = ticks(pid)
                claimed = await conn.fetch(
                    PG_CLAIM, now, BATCH, now + timedelta(seconds=60), token, "bench", "pending"
                )
                cpu += ticks(pid) - before
                if not claimed:
                    break
                claims += 1
                ids = "{" + ",".join(str(r[0]) for r in claimed) + "}"
                due = now if mode == "outcome-time" else None
                await conn.fetch(PG_RECORD_SAME, ids, "sent", now, due, None, '["am"]', token)
            out.append(cpu * 1000 / TICK / claims)
            if vacuum:
                await conn.execute("VACUUM costsim_alert_queue")
        return out
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--rows", type=int, default=61_440)
    parser.add_argument("--repeats", type=int, default=2, help="databases per mode, alternated")
    parser.add_argument("--vacuum", action="store_true")
    a = parser.parse_args()
    results: dict[str, list[list[float]]] = {"lease-end": [], "outcome-time": []}
    for _ in range(a.repeats):
        for mode, runs in results.items():
            with pg_database("alertq_bench_bursts") as url:
                runs.append(asyncio.run(bursts(url, mode, a.bursts, a.rows, a.vacuum)))
            print(mode, " ".join(f"{x:.1f}" for x in runs[-1]), flush=True)
    print(f"\nclaim CPU, ms of PostgreSQL per 256-row claim, median of {a.repeats}:")
    print("| burst | " + " | ".join(results) + " | ratio |")
    print("|---|---|---|---|")
    for b in range(a.bursts):
        old, new = (statistics.median(r[b] for r in runs) for runs in results.values())
        print(f"| {b + 1} | {old:.1f} | {new:.1f} | {old / new:.1f}x |")


if __name__ == "__main__":
    main()
