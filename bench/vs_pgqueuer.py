"""alertq vs pgqueuer on the same PostgreSQL, in the same run (issue 10, point 1).

Both drain a full queue of N rows (default 50,000) with no work per job:

- **alertq**: one ``alertq worker --drain`` process with alertq's **default settings**
  (batch 256; 3 delivery loops, a dedicated worker's default on PostgreSQL), delivering to
  the no-op stub (``bench/stub_server.py``, its own process), one POST of up to 256 alerts
  per claim;
- **pgqueuer** (the version pinned in ``bench/requirements.txt``): ``P`` processes, each a
  ``QueueManager`` in drain mode with batch size ``B`` and a no-op async entrypoint, on
  pgqueuer's own tables (installed with its defaults, ``durable``) in the same database.
  Its jobs carry the same payload bytes as alertq's rows.

First a small sweep (``--sweep-batch`` × ``--sweep-procs``, one run each of
``--sweep-rows``) finds pgqueuer's best configuration on this machine today. Then
``--runs`` rounds alternate, in rotating order: alertq, pgqueuer at its best (and, with
``--with-defaults``, at its defaults: B = 10, 1 process), and the raw SKIP LOCKED floor of
``bench/floor.py`` (one statement that claims and finishes 256 rows) with 1 and 4
consumers, on the same rows, and the floor's *lean cycle* (claim, POST, record over bare
asyncpg: the least any design that writes each row twice can do) with ``--lean-loops``
loops. Every variant gets a freshly loaded, ``VACUUM ANALYZE``d table.

Two rates per variant:

- **steady** (the headline): N / (last completion − first claim), from the database's own
  timestamps (alertq: ``last_attempt_at`` and ``sent_at``; pgqueuer: its log's
  ``picked`` and ``successful`` rows); process start-up is excluded for both;
- **wall**: N / (spawn → every process exited), start-up included.

Ratios are taken within each round and the table shows medians (min–max).

    python bench/vs_pgqueuer.py [--rows 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from _common import (
    PAYLOAD_TEMPLATE,
    Report,
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
    wait_all,
)
from floor import floor, lean, reset, sent_count

PGQ_ENTRYPOINT = "noop"


# --------------------------------------------------------------------------- pgqueuer


def pgqueuer_version() -> str:
    from importlib.metadata import version

    return version("pgqueuer")


async def pgq_install(dsn: str) -> None:
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def pgq_load(dsn: str, rows: int) -> None:
    """Empty pgqueuer's queue and log, enqueue ``rows`` jobs through its API, VACUUM."""
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
        queries = Queries(AsyncpgDriver(conn))
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            await queries.enqueue(
                [PGQ_ENTRYPOINT] * n,
                [PAYLOAD_TEMPLATE.replace("__SEQ__", str(start + i)).encode() for i in range(n)],
                [0] * n,
            )
        await conn.execute("VACUUM ANALYZE pgqueuer")
        await conn.execute("VACUUM ANALYZE pgqueuer_log")
    finally:
        await conn.close()


async def pgq_span(dsn: str) -> tuple[int, float]:
    """(jobs finished successfully, seconds from the first pick to the last completion)."""
    conn = await asyncpg.connect(dsn)
    try:
        done, first, last = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'successful'),"
            " extract(epoch FROM min(created) FILTER (WHERE status = 'picked'))::float8,"
            " extract(epoch FROM max(created) FILTER (WHERE status = 'successful'))::float8"
            " FROM pgqueuer_log"
        )
        left = await conn.fetchval("SELECT count(*) FROM pgqueuer")
        if left:
            raise RuntimeError(f"pgqueuer left {left} jobs in its queue")
        return int(done), float(last - first)
    finally:
        await conn.close()


def pgq_run(dsn: str, rows: int, batch: int, procs: int, log: Any) -> dict[str, float]:
    asyncio.run(pgq_load(dsn, rows))
    start = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", dsn, "--child-batch", str(batch)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for _ in range(procs)
    ]
    wait_all(children, 600)
    wall = time.perf_counter() - start
    done, steady = asyncio.run(pgq_span(dsn))
    if done != rows:
        raise RuntimeError(f"pgqueuer B={batch} P={procs}: {done} of {rows} jobs done")
    return {"steady": rows / steady, "wall": rows / wall}


async def pgq_child(dsn: str, batch: int) -> None:
    """One pgqueuer consumer process: a no-op entrypoint, drain mode."""
    from pgqueuer import AsyncpgDriver, PgQueuer
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint(PGQ_ENTRYPOINT)
    async def noop(job: Any) -> None:
        return None

    await pgq.run(batch_size=batch, mode=QueueExecutionMode.drain)


# --------------------------------------------------------------------------- alertq


async def alertq_span(dsn: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        first, last = await conn.fetchrow(
            "SELECT extract(epoch FROM min(last_attempt_at))::float8,"
            " extract(epoch FROM max(sent_at))::float8 FROM costsim_alert_queue"
        )
        return float(last - first)
    finally:
        await conn.close()


def alertq_run(
    url: str, stub: Stub, rows: int, log: Any, env: dict[str, str] | None = None
) -> dict[str, float]:
    dsn = asyncpg_dsn(url)
    asyncio.run(pg_load(url, rows))
    stub.reset()
    start = time.perf_counter()
    wait_all([spawn_worker(url, stub.url, drain=True, log=log, **(env or {}))], 600)
    wall = time.perf_counter() - start
    sent = asyncio.run(sent_count(dsn))
    if sent != rows or stub.stats()["alerts"] != rows:
        raise RuntimeError(f"alertq: {sent} rows sent, the stub got {stub.stats()['alerts']}")
    return {"steady": rows / asyncio.run(alertq_span(dsn)), "wall": rows / wall}


def floor_run(url: str, rows: int, consumers: int) -> dict[str, float]:
    dsn = asyncpg_dsn(url)
    asyncio.run(pg_load(url, rows))
    asyncio.run(reset(dsn))
    rate = rows / asyncio.run(floor(dsn, consumers, 256))
    if asyncio.run(sent_count(dsn)) != rows:
        raise RuntimeError("floor did not finish every row")
    return {"steady": rate, "wall": rate}


def lean_run(url: str, stub: Stub, rows: int, loops: int) -> dict[str, float]:
    """``bench/floor.py``'s lean cycle: claim, POST, record over bare asyncpg, no framework."""
    dsn = asyncpg_dsn(url)
    asyncio.run(pg_load(url, rows))
    asyncio.run(reset(dsn))
    rate = rows / asyncio.run(lean(dsn, stub.url, loops, 256))
    if asyncio.run(sent_count(dsn)) != rows:
        raise RuntimeError("the lean cycle did not finish every row")
    return {"steady": rate, "wall": rate}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description="alertq worker --drain vs pgqueuer's best no-op configuration",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--sweep-rows", type=int, default=20_000)
    parser.add_argument("--sweep-batch", default="10,50,100,250")
    parser.add_argument("--sweep-procs", default="1,2,4")
    parser.add_argument("--best", default="", help="skip the sweep: pgqueuer's B,P")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument(
        "--lean-loops",
        default="1,2,4",
        help="loop counts of the lean cycle (claim, POST, record over bare asyncpg) to run "
        "beside the floor: what any design that writes each row twice can reach ('' for none)",
    )
    parser.add_argument(
        "--with-defaults",
        action="store_true",
        help="also run pgqueuer at its defaults (B=10, P=1: slow, about 10x the best's time)",
    )
    parser.add_argument(
        "--alertq-variant",
        action="append",
        default=[],
        metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
        help="another alertq worker in every round, with these environment variables (e.g. "
        "'c4:ALERTQ_CONCURRENCY=4', or 'old:PYTHONPATH=<checkout>/src' for an A/B)",
    )
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-batch", type=int, default=10, help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args()
    if args.child:
        asyncio.run(pgq_child(args.child, args.child_batch))
        return

    report = Report("vs_pgqueuer", command_line(), out_dir(args.out))
    logs = Path(tempfile.mkdtemp(prefix="alertq-bench-vs-pgqueuer-"))
    sweep: dict[str, float] = {}
    rounds: list[dict[str, dict[str, float]]] = []
    with Stub() as stub, pg_database() as url, (logs / "children.log").open("ab") as log:
        dsn = asyncpg_dsn(url)
        asyncio.run(pgq_install(dsn))
        if args.best:
            best_b, best_p = (int(x) for x in args.best.split(","))
        else:
            for b in (int(x) for x in args.sweep_batch.split(",")):
                for p in (int(x) for x in args.sweep_procs.split(",")):
                    r = pgq_run(dsn, args.sweep_rows, b, p, log)
                    sweep[f"{b},{p}"] = r["steady"]
                    print(f"sweep pgqueuer B={b} P={p}: {r['steady']:,.0f} jobs/s", flush=True)
            best_b, best_p = (int(x) for x in max(sweep, key=lambda k: sweep[k]).split(","))
        variants: dict[str, Any] = {
            "alertq": lambda: alertq_run(url, stub, args.rows, log),
            f"pgqueuer best (B={best_b}, P={best_p})": lambda: pgq_run(
                dsn, args.rows, best_b, best_p, log
            ),
        }
        for spec in args.alertq_variant:
            label, _, assigns = spec.partition(":")
            env = dict(a.split("=", 1) for a in assigns.split(",") if a)
            variants[f"alertq {label}"] = lambda env=env: alertq_run(url, stub, args.rows, log, env)
        if args.with_defaults:
            variants["pgqueuer defaults (B=10, P=1)"] = lambda: pgq_run(dsn, args.rows, 10, 1, log)
        if not args.no_floor:
            variants["floor, 1 consumer"] = lambda: floor_run(url, args.rows, 1)
            variants["floor, 4 consumers"] = lambda: floor_run(url, args.rows, 4)
            for n in (int(x) for x in args.lean_loops.split(",") if x):
                label = f"lean cycle, {n} loop{'s' * (n > 1)}"
                variants[label] = lambda n=n: lean_run(url, stub, args.rows, n)
        names = list(variants)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            out: dict[str, dict[str, float]] = {}
            for name in order:
                out[name] = variants[name]()
                print(
                    f"run {run + 1} {name}: steady {out[name]['steady']:,.0f}/s,"
                    f" wall {out[name]['wall']:,.0f}/s",
                    flush=True,
                )
            rounds.append(out)

    best_name = names[1]

    def ratios(a: str, b: str, key: str = "steady") -> list[float]:
        return [r[a][key] / r[b][key] for r in rounds]

    def span(values: list[float], pct: bool = False) -> str:
        if pct:
            return f"{median(values) * 100:.0f}% ({min(values) * 100:.0f}–{max(values) * 100:.0f}%)"
        return f"{median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    if sweep:
        report.table(
            f"pgqueuer {pgqueuer_version()} sweep: jobs/s (steady), {args.sweep_rows:,} jobs, "
            "one run each",
            ["batch size B", *[f"P={p}" for p in args.sweep_procs.split(",")]],
            [
                [b, *[fmt(sweep[f"{b},{p}"]) for p in args.sweep_procs.split(",")]]
                for b in args.sweep_batch.split(",")
            ],
        )
    table = []
    for name in names:
        steady = [r[name]["steady"] for r in rounds]
        wall = [r[name]["wall"] for r in rounds]
        row = [
            name,
            fmt(median(steady)),
            f"{fmt(min(steady))}–{fmt(max(steady))}",
            fmt(median(wall)),
        ]
        row.append(span(ratios("alertq", name)) if name != "alertq" else "–")
        table.append(row)
    report.table(
        f"Draining {args.rows:,} rows, median of {args.runs} rounds (each round runs every "
        "variant, rotating order); alertq = `alertq worker --drain`, default settings",
        ["variant", "steady rows/s", "min–max", "wall rows/s (start-up incl.)", "alertq ÷ this"],
        table,
    )
    summary = {
        "alertq / pgqueuer best (steady)": span(ratios("alertq", best_name)),
        "alertq / pgqueuer best (wall)": span(ratios("alertq", best_name, "wall")),
        "target": "≥ 1.2",
    }
    for name in names:
        if name.startswith("alertq "):
            summary[f"{name} / pgqueuer best (steady)"] = span(ratios(name, best_name))
    if not args.no_floor:
        summary["alertq / floor 1 consumer"] = span(ratios("alertq", "floor, 1 consumer"), True)
        summary["alertq / floor 4 consumers"] = span(ratios("alertq", "floor, 4 consumers"), True)
        leans = [n for n in names if n.startswith("lean cycle")]
        if leans:
            best = [max(r[n]["steady"] for n in leans) for r in rounds]
            for floor_name in ("floor, 1 consumer", "floor, 4 consumers"):
                floors = [r[floor_name]["steady"] for r in rounds]
                summary[f"best lean cycle / {floor_name.replace(',', '')}"] = span(
                    [b / f for b, f in zip(best, floors, strict=True)], True
                )
            summary["alertq / best lean cycle"] = span(
                [r["alertq"]["steady"] / b for r, b in zip(rounds, best, strict=True)]
            )
    report.add("\n".join(f"- {k}: **{v}**" for k, v in summary.items()))
    report.data = {
        "rows": args.rows,
        "pgqueuer": pgqueuer_version(),
        "sweep": sweep,
        "best": [best_b, best_p],
        "rounds": rounds,
        "summary": summary,
        "logs": str(logs),
    }
    report.save()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
