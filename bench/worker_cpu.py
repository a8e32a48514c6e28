"""CPU per 256 rows of ``alertq worker --drain``: the worker's and its PostgreSQL backends'.

On a shared machine wall-clock rates swing with other people's load; CPU per row does not.
For each variant (``--variant NAME:ENV=VALUE[,ENV=VALUE]``, e.g.
``old:PYTHONPATH=/path/to/old/checkout/src``; the checkout running this script is
``new``), each round loads ``--rows`` due rows, runs one ``alertq worker --drain`` with the
default settings against the no-op stub, and measures

- **worker**: the child's user + system CPU (``wait4``), minus that of a drain of an empty
  queue by the same variant (start-up and shutdown), per 256 rows;
- **postgres**: user + system CPU of every backend connected to the database
  (``/proc/PID/stat``, sampled every 10 ms while the worker runs; this script's own
  sampling backend excluded), per 256 rows;
- **steady rows/s**: rows / (last ``sent_at`` − first ``last_attempt_at``).

With ``--lean N`` the floor's *lean cycle* (``bench/floor.py``: claim, POST, record over
bare asyncpg, N loops in this process) runs in the same rounds, measured the same way (its
client CPU is this process's). On a machine whose cores are all busy, the sum of the two
columns is what bounds the rate: it says how far alertq's own work per row is from the
least that a design writing each row twice can do.

Variants alternate within each round, in rotating order; medians over ``--rounds``.

    python bench/worker_cpu.py [--rows 30000] [--rounds 3] [--variant old:PYTHONPATH=…]
                               [--lean 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

from _common import (
    Stub,
    asyncpg_dsn,
    command_line,
    fmt,
    pg_database,
    pg_load,
    worker_env,
)
from floor import lean, reset, sent_count

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far, or None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


async def backend_sampler(dsn: str, done: asyncio.Event) -> float:
    """CPU seconds used by the database's other backends until ``done``."""
    conn = await asyncpg.connect(dsn)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    try:
        name = await conn.fetchval("SELECT current_database()")
        while True:
            pids = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            for (pid,) in pids:
                cpu = proc_cpu(pid)
                if cpu is None:
                    continue
                # A backend first seen mid-run started at 0 (it is the worker's).
                first.setdefault(pid, 0.0)
                last[pid] = cpu
            if done.is_set():
                break
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return sum(last[p] - first[p] for p in last)


def run_worker(url: str, stub: Stub, env: dict[str, str]) -> float:
    """Run ``alertq worker --drain`` to the end; its CPU seconds (``wait4``)."""
    args = [sys.executable, "-m", "alertq", "worker", "--drain"]
    proc = subprocess.Popen(
        args,
        env=worker_env(url, stub.url, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with {proc.returncode}")
    return float(usage.ru_utime + usage.ru_stime)


async def measured(url: str, stub: Stub, env: dict[str, str]) -> tuple[float, float]:
    done = asyncio.Event()
    sampler = asyncio.create_task(backend_sampler(asyncpg_dsn(url), done))
    await asyncio.sleep(0.05)
    worker = await asyncio.to_thread(run_worker, url, stub, env)
    done.set()
    return worker, await sampler


async def lean_measured(url: str, stub: Stub, loops: int) -> tuple[float, float, float]:
    """The lean cycle's client CPU (this process), its backends' CPU, and its rows/s."""
    dsn = asyncpg_dsn(url)
    await reset(dsn)
    done = asyncio.Event()
    sampler = asyncio.create_task(backend_sampler(dsn, done))
    await asyncio.sleep(0.05)
    started = time.process_time()
    seconds = await lean(dsn, stub.url, loops, 256)
    client = time.process_time() - started
    done.set()
    rows = await sent_count(dsn)
    return client, await sampler, rows / seconds


async def steady(url: str) -> float:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        first, last, sent = await conn.fetchrow(
            "SELECT extract(epoch FROM min(last_attempt_at))::float8,"
            " extract(epoch FROM max(sent_at))::float8, count(sent_at)"
            " FROM costsim_alert_queue"
        )
        return float(sent / (last - first))
    finally:
        await conn.close()


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    env = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--lean", type=int, default=0, help="also the lean cycle, N loops")
    args = parser.parse_args()
    print(f"`{command_line()}`")
    variants = [("new", {}), *(parse_variant(v) for v in args.variant)]
    lean_name = f"lean cycle, {args.lean} loops"
    if args.lean:
        variants.append((lean_name, {}))
    results: dict[str, dict[str, list[float]]] = {
        name: {"worker": [], "postgres": [], "steady": []} for name, _ in variants
    }
    with Stub() as stub, pg_database("alertq_bench_cpu") as url:
        idle: dict[str, float] = {}
        for name, env in variants:
            if name == lean_name:
                idle[name] = 0.0  # measured from its first claim to its last record
                continue
            asyncio.run(pg_load(url, 0))
            idle[name] = statistics.median(
                asyncio.run(measured(url, stub, env))[0] for _ in range(3)
            )
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for name, env in order:
                asyncio.run(pg_load(url, args.rows))
                stub.reset()
                if name == lean_name:
                    worker, pg, rate = asyncio.run(lean_measured(url, stub, args.lean))
                else:
                    worker, pg = asyncio.run(measured(url, stub, env))
                    rate = asyncio.run(steady(url))
                per = 256 / args.rows * 1000
                got: dict[str, Any] = results[name]
                got["worker"].append((worker - idle[name]) * per)
                got["postgres"].append(pg * per)
                got["steady"].append(rate)
                print(
                    f"round {r + 1} {name}: worker {(worker - idle[name]) * per:.2f} ms, "
                    f"postgres {pg * per:.2f} ms per 256 rows, {rate:,.0f} rows/s "
                    f"(load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
    startup = ", ".join(f"{k} {v:.2f} s" for k, v in idle.items())
    print(f"\nstart-up + shutdown CPU (empty drain): {startup}")
    print("\n| variant | worker ms / 256 rows | postgres ms / 256 rows | sum | steady rows/s |")
    print("|---|---|---|---|---|")
    for name, got in results.items():
        sums = [w + p for w, p in zip(got["worker"], got["postgres"], strict=True)]
        cells = [
            f"{fmt(statistics.median(v), 2)} ({fmt(min(v), 2)}–{fmt(max(v), 2)})"
            for v in (got["worker"], got["postgres"], sums)
        ]
        print(
            f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {fmt(statistics.median(got['steady']))} |"
        )


if __name__ == "__main__":
    main()
