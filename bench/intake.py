#!/usr/bin/env python
"""Relay intake (issue 11): ``POST /api/v2/alerts`` to ``alertq run`` on PostgreSQL, durable
(200 only after the commit), against a real Alertmanager 0.25's in-memory intake of the same
batches, in the same run.

    python bench/intake.py [--runs 3] [--parts throughput,latency,parse,sqlite] [--two-servers]
                           [--quick] [--profile FILE]

Four parts:

* **throughput**: ``--senders`` (4) concurrent senders, each posting ``--batches`` bodies of
  ``--batch-size`` (256) distinct alerts back to back over one keep-alive connection, to
  ``alertq run`` (delivering to the no-op stub as it takes them in) and to a real
  Alertmanager (``/usr/bin/prometheus-alertmanager`` on a free port). The two alternate
  which goes first, each run; alerts/s = alerts answered 200 / wall time, the ratio is taken
  within each run. Before the Alertmanager's turn, alertq has delivered its backlog, so
  its worker does not steal the Alertmanager's CPU. ``--two-servers`` adds two
  ``alertq run`` on the same database, the senders split between them (HA, scaling out).
  Each server's own CPU per body (``/proc/PID/stat``, all threads) is reported while the
  senders run and, for alertq, until its worker has delivered everything: unlike alerts/s,
  the machine's other load hardly moves it.
* **latency**: an open loop at ``--latency-rate`` (1,000) alerts/s, ``--latency-batch`` (10)
  alerts per POST spread over the senders, for ``--latency-seconds``. Intake POST latency is
  measured at the sender from the moment the POST was due (so falling behind the schedule
  counts); end to end runs from that same moment to
  the alert's ``updatedAt`` in a real Alertmanager behind ``alertq run`` (set on receipt,
  millisecond precision), read back from its API. The same open loop straight into an
  Alertmanager gives its own POST latency, for scale.
* **parse**: the client CPU of one body's decoding and validation, step by step: the fast
  path and its parts, the exact path, and the exact path with the old per-alert
  ``check_storable``.
* **sqlite**: what ``synchronous=FULL`` (alertq's default) costs a producer against
  ``NORMAL``, alternating in the same run: one-alert ``enqueue_alert`` transactions, and
  256-alert relay batches (``IntakeDriver.alerts_insert_many``).

During the throughput and latency parts the bench ANALYZEs the claim's columns of the
queue table every 2 s, standing in for an autovacuum that keeps up (see
:func:`keep_analyzed` for why).

The senders are a minimal asyncio HTTP/1.1 client (pre-encoded bodies, keep-alive,
Content-Length), so the client's own CPU stays small next to either server's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import event

from _common import (
    Alertmanager,
    Report,
    Stub,
    add_common_args,
    asyncpg_dsn,
    command_line,
    fmt,
    free_port,
    median,
    out_dir,
    percentile,
    pg_database,
    reset_queue,
    scalar,
    worker_env,
)
from alertq.alerts import label_fingerprint, label_fingerprints
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver.intake import IntakeDriver, IntakeRow
from alertq.enqueue import enqueue_alert
from alertq.intake import check_storable, parse_alerts_body, parse_exact
from alertq.migrate import upgrade

ALERTS_PATH = "/api/v2/alerts"


# --------------------------------------------------------------------------- bodies


def make_alerts(run: str, first: int, count: int, now: datetime) -> list[dict[str, Any]]:
    """``count`` distinct alerts shaped like Prometheus's (labels, annotations, times, URL)."""
    starts = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    ends = (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return [
        {
            "labels": {
                "alertname": "RelayBench",
                "instance": f"node-{seq % 97}:9100",
                "job": "node",
                "severity": "warning",
                "run": run,
                "seq": str(seq),
            },
            "annotations": {
                "summary": f"relay benchmark alert {seq}",
                "description": "an alert as Prometheus posts it, for the intake benchmark",
            },
            "startsAt": starts,
            "endsAt": ends,
            "generatorURL": f"http://prometheus.example:9090/graph?g0.expr=up%3D%3D0&seq={seq}",
        }
        for seq in range(first, first + count)
    ]


def bodies(run: str, senders: int, batches: int, size: int) -> list[list[bytes]]:
    """``senders`` lists of ``batches`` encoded bodies, every alert distinct."""
    now = datetime.now(UTC)
    out: list[list[bytes]] = []
    seq = 0
    for _ in range(senders):
        mine = []
        for _ in range(batches):
            mine.append(json.dumps(make_alerts(run, seq, size, now)).encode())
            seq += size
        out.append(mine)
    return out


# --------------------------------------------------------------------------- raw client


class Conn:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, body: bytes) -> int:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {ALERTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            "User-Agent: alertq-bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked answers are not supported by this client")
        answer = await self.reader.readexactly(length) if length else b""
        status = int(status_line.split()[1])
        if status != 200:
            raise RuntimeError(f"POST answered {status}: {answer[:300]!r}")
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def closed_loop(ports: list[int], work: list[list[bytes]]) -> tuple[float, list[float]]:
    """Sender i posts its bodies back to back to ``ports[i]``; returns (wall seconds, POST
    latencies)."""
    conns = [Conn(port) for port in ports]
    for conn in conns:
        await conn.open()
        await conn.post(b"[]")  # the connection is up and the server warm
    latencies: list[float] = []

    async def sender(conn: Conn, mine: list[bytes]) -> None:
        for body in mine:
            began = time.perf_counter()
            await conn.post(body)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(sender(c, m) for c, m in zip(conns, work, strict=True)))
    elapsed = time.perf_counter() - began
    for conn in conns:
        await conn.close()
    return elapsed, latencies


async def open_loop(
    port: int, run: str, senders: int, rate: float, batch: int, seconds: float
) -> tuple[list[float], dict[str, float]]:
    """POST ``batch`` alerts at a steady total ``rate`` alerts/s from ``senders``; returns
    (POST latencies in s, the wall time each alert's POST was due, by seq)."""
    posts = int(rate * seconds / batch)
    interval = senders * batch / rate  # per sender
    now = datetime.now(UTC)
    plans = [
        [
            (k, json.dumps(make_alerts(run, k * batch, batch, now)).encode())
            for k in range(s, posts, senders)
        ]
        for s in range(senders)
    ]
    conns = [Conn(port) for _ in range(senders)]
    for conn in conns:
        await conn.open()
        await conn.post(b"[]")
    latencies: list[float] = []
    began_at: dict[str, float] = {}
    start = time.perf_counter() + 0.1

    async def sender(s: int, conn: Conn) -> None:
        for i, (k, body) in enumerate(plans[s]):
            due = start + (s / senders) * interval + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing of the open loop, not synchronisation
            # Timed from the scheduled moment, not the actual send: a server that falls
            # behind the schedule is charged for it (no coordinated omission).
            wall = time.time() - max(0.0, time.perf_counter() - due)
            await conn.post(body)
            latencies.append(time.perf_counter() - due)
            for seq in range(k * batch, (k + 1) * batch):
                began_at[str(seq)] = wall

    await asyncio.gather(*(sender(s, c) for s, c in enumerate(conns)))
    for conn in conns:
        await conn.close()
    return latencies, began_at


# --------------------------------------------------------------------------- alertq run


class AlertqRun:
    """``alertq run`` as a child process, on a free port, delivering to ``target``."""

    def __init__(
        self, db_url: str, target: str, workdir: Path, profile: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"alertq-run-{self.port}.log"
        env = worker_env(
            db_url,
            target,
            ALERTQ_HTTP_ADDR=f"127.0.0.1:{self.port}",
            ALERTQ_LOG_LEVEL="WARNING",
        )
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, *pyinstrument(profile), "-m", "alertq", "run"],
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"alertq run exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)  # readiness poll
        self.stop()
        raise RuntimeError("alertq run not ready after 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_delivered(db_url: str, deadline_s: float = 300) -> float:
    """Poll until no row is pending; returns the seconds it took."""
    began = time.monotonic()
    while True:
        pending = await scalar(
            db_url, "SELECT count(*) FROM costsim_alert_queue WHERE status = 'pending'"
        )
        if pending == 0:
            return time.monotonic() - began
        if time.monotonic() - began > deadline_s:
            raise RuntimeError(f"{pending} rows still pending after {deadline_s:.0f} s")
        await asyncio.sleep(0.2)  # poll interval of the completion check


@contextlib.contextmanager
def keep_analyzed(db_url: str, every: float = 2.0) -> Iterator[None]:
    """ANALYZE the queue table every ``every`` seconds while the block runs.

    A stand-in for an autovacuum that keeps up. Without it the worker's claim statement is
    planned from statistics that say "no pending rows" (a fresh or drained queue) and,
    when a burst then arrives, runs in time quadratic in the pending rows: one claim of
    20,000 pending rows took 92-181 s here (docs/benchmarks.md, "Found while measuring").
    """
    stop = threading.Event()

    async def loop() -> None:
        # Named, so that pg_backend_ticks leaves its CPU out.
        conn = await asyncpg.connect(
            asyncpg_dsn(db_url), server_settings={"application_name": ANALYZE_APP}
        )
        try:
            while not stop.is_set():
                # Only the columns the claim plans with: the payload's statistics are costly.
                await conn.execute(
                    "ANALYZE costsim_alert_queue (status, fingerprint, next_attempt_at)"
                )
                await asyncio.sleep(every)  # the period of the stand-in autovacuum
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(loop()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


ANALYZE_APP = "alertq-bench-analyze"


async def _pg_backends(db_url: str) -> list[int]:
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name <> $1",
            ANALYZE_APP,
        )
    finally:
        await conn.close()
    return [int(pid) for (pid,) in rows]


def pg_backend_ticks(db_url: str) -> dict[int, int]:
    """User + system CPU ticks of each PostgreSQL backend of the bench database so far
    (``/proc/PID/stat``), but the stand-in autovacuum's and the query's own."""
    ticks = {}
    for pid in asyncio.run(_pg_backends(db_url)):
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def pg_cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU of the backends between two readings; one that started in between counts whole."""
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items())
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(processes: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU of the processes so far, all threads (``/proc/PID/stat``)."""
    ticks = 0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pyinstrument(profile: Path | None) -> list[str]:
    """Arguments that run the child under pyinstrument, writing a text profile on exit."""
    if profile is None:
        return []
    return ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile)]


# --------------------------------------------------------------------------- parts


@dataclass
class Args:
    runs: int
    senders: int
    batches: int
    batch_size: int
    latency_rate: float
    latency_batch: int
    latency_seconds: float
    sqlite_enqueues: int
    sqlite_batches: int
    profile: Path | None = None
    two_servers: bool = False


SYSTEM_NAMES = {
    "alertq": "alertq run, PostgreSQL, durable (200 after COMMIT)",
    "alertq x2": "2 × alertq run on one PostgreSQL (senders split), durable",
    "alertmanager": "Alertmanager 0.25, in memory",
}


def part_throughput(a: Args, report: Report, db_url: str, workdir: Path) -> None:
    runs: list[dict[str, Any]] = []
    systems = ["alertq"] + (["alertq x2"] if a.two_servers else []) + ["alertmanager"]
    with Stub() as stub, Alertmanager() as am, keep_analyzed(db_url):
        servers = [AlertqRun(db_url, stub.url, workdir, a.profile)]
        if a.two_servers:
            servers.append(AlertqRun(db_url, stub.url, workdir))
        try:
            for r in range(a.runs):
                order = systems[r % len(systems) :] + systems[: r % len(systems)]
                result: dict[str, Any] = {"order": order}
                for system in order:
                    work = bodies(
                        f"{system[:6]}{r}{uuid.uuid4().hex[:6]}", a.senders, a.batches, a.batch_size
                    )
                    if system == "alertmanager":
                        ports = [am.port] * a.senders
                        procs = [am.process]
                    else:
                        used = servers[: 2 if system == "alertq x2" else 1]
                        ports = [used[i % len(used)].port for i in range(a.senders)]
                        procs = [x.process for x in used]
                    pg_before = pg_backend_ticks(db_url) if system != "alertmanager" else {}
                    cpu_before = cpu_seconds(procs)
                    elapsed, lat = asyncio.run(closed_loop(ports, work))
                    cpu_sent = cpu_seconds(procs) - cpu_before
                    n = a.senders * a.batches * a.batch_size
                    result[system] = {
                        "alerts": n,
                        "seconds": elapsed,
                        "alerts_per_s": n / elapsed,
                        "post_p50_ms": percentile(lat, 50) * 1000,
                        "post_p99_ms": percentile(lat, 99) * 1000,
                        # The server's own CPU per body while the senders ran: a figure
                        # the machine's other load hardly moves.
                        "cpu_ms_per_body": cpu_sent * 1000 / (a.senders * a.batches),
                    }
                    if system != "alertmanager":
                        # Delivered before the next system's turn: no backlog steals its CPU.
                        result[system]["delivered_after_s"] = asyncio.run(wait_delivered(db_url))
                        result[system]["cpu_ms_per_body_delivered"] = (
                            (cpu_seconds(procs) - cpu_before) * 1000 / (a.senders * a.batches)
                        )
                        # PostgreSQL's side of the same bodies: the intake's inserts and
                        # the worker's claims and records, until everything is delivered.
                        pg_after = pg_backend_ticks(db_url)
                        result[system]["pg_cpu_ms_per_body_delivered"] = (
                            pg_cpu_seconds(pg_before, pg_after) * 1000 / (a.senders * a.batches)
                        )
                    print(
                        f"run {r + 1} {system}: {n / elapsed:,.0f} alerts/s "
                        f"(POST p50 {result[system]['post_p50_ms']:.1f} ms, "
                        f"server CPU {result[system]['cpu_ms_per_body']:.1f} ms per body)",
                        flush=True,
                    )
                for system in systems[:-1]:
                    result[f"ratio {system}"] = (
                        result[system]["alerts_per_s"] / result["alertmanager"]["alerts_per_s"]
                    )
                runs.append(result)
        finally:
            for server in servers:
                server.stop()
    report.data["throughput"] = runs

    def col(system: str, key: str) -> list[float]:
        return [x[system][key] for x in runs]

    rows = []
    for system in systems:
        v = col(system, "alerts_per_s")
        target = ""
        if system == "alertq":
            target = "≥ 20,000: " + ("met" if median(v) >= 20_000 else "MISSED")
        rows.append(
            [
                SYSTEM_NAMES[system],
                fmt(median(v)),
                f"{fmt(min(v))}–{fmt(max(v))}",
                fmt(median(col(system, "post_p50_ms"))),
                fmt(median(col(system, "post_p99_ms"))),
                fmt(median(col(system, "cpu_ms_per_body")), 1),
                (
                    fmt(median(col(system, "cpu_ms_per_body_delivered")), 1)
                    if system != "alertmanager"
                    else ""
                ),
                (
                    fmt(median(col(system, "pg_cpu_ms_per_body_delivered")), 1)
                    if system != "alertmanager"
                    else ""
                ),
                target,
            ]
        )
    for system in systems[:-1]:
        ratios = [x[f"ratio {system}"] for x in runs]
        rows.append(
            [
                f"ratio {system} / Alertmanager",
                f"{median(ratios):.2f}",
                f"{min(ratios):.2f}–{max(ratios):.2f}",
                "",
                "",
                "",
                "",
                "",
                "≥ 0.5: " + ("met" if median(ratios) >= 0.5 else "MISSED"),
            ]
        )
    report.table(
        f"Intake of {a.batch_size}-alert batches from {a.senders} concurrent senders, "
        f"{a.senders * a.batches * a.batch_size:,} alerts per system per run, "
        f"median of {a.runs} runs (order rotated each run; ratio taken within each run)",
        [
            "system",
            "alerts/s",
            "min–max",
            "POST p50 ms",
            "POST p99 ms",
            "server CPU ms per body",
            "… until delivered",
            "PostgreSQL CPU ms per body until delivered",
            "target",
        ],
        rows,
    )


def _am_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def part_latency(a: Args, report: Report, db_url: str, workdir: Path) -> None:
    runs: list[dict[str, Any]] = []
    with Alertmanager() as sink, Alertmanager() as direct, keep_analyzed(db_url):
        asyncio.run(reset_queue(db_url))
        server = AlertqRun(db_url, sink.url, workdir)
        try:
            for r in range(a.runs):
                result: dict[str, Any] = {}
                order = ["alertq", "alertmanager"] if r % 2 == 0 else ["alertmanager", "alertq"]
                for system in order:
                    run_id = f"lat{system[:2]}{r}{uuid.uuid4().hex[:6]}"
                    port = server.port if system == "alertq" else direct.port
                    lat, began_at = asyncio.run(
                        open_loop(
                            port,
                            run_id,
                            a.senders,
                            a.latency_rate,
                            a.latency_batch,
                            a.latency_seconds,
                        )
                    )
                    entry: dict[str, Any] = {
                        "posts": len(lat),
                        "post_p50_ms": percentile(lat, 50) * 1000,
                        "post_p99_ms": percentile(lat, 99) * 1000,
                        "post_max_ms": max(lat) * 1000,
                    }
                    if system == "alertq":
                        deadline = time.monotonic() + 120
                        while True:
                            listed = sink.alerts(f'run="{run_id}"')
                            if len(listed) >= len(began_at) or time.monotonic() > deadline:
                                break
                            time.sleep(0.5)  # poll until the sink lists every alert
                        e2e = [
                            _am_time(x["updatedAt"]) - began_at[x["labels"]["seq"]] for x in listed
                        ]
                        entry.update(
                            alerts=len(began_at),
                            listed=len(listed),
                            e2e_p50_ms=percentile(e2e, 50) * 1000,
                            e2e_p99_ms=percentile(e2e, 99) * 1000,
                            e2e_max_ms=max(e2e) * 1000,
                        )
                    result[system] = entry
                    print(f"run {r + 1} {system}: {json.dumps(entry)}", flush=True)
                runs.append(result)
        finally:
            server.stop()
    report.data["latency"] = runs

    def med(system: str, key: str) -> float:
        return median([x[system][key] for x in runs])

    lost = sum(x["alertq"]["alerts"] - x["alertq"]["listed"] for x in runs)
    report.table(
        f"Latency at {a.latency_rate:,.0f} alerts/s ({a.latency_batch} alerts per POST, "
        f"{a.senders} senders, {a.latency_seconds:.0f} s), ms; median over {a.runs} runs of "
        "each run's percentile",
        ["what", "p50", "p99", "max", "target"],
        [
            [
                "alertq intake POST (200 after COMMIT)",
                fmt(med("alertq", "post_p50_ms"), 2),
                fmt(med("alertq", "post_p99_ms"), 2),
                fmt(med("alertq", "post_max_ms"), 2),
                "p99 < 50: " + ("met" if med("alertq", "post_p99_ms") < 50 else "MISSED"),
            ],
            [
                "end to end: POST due → updatedAt in Alertmanager behind alertq",
                fmt(med("alertq", "e2e_p50_ms"), 2),
                fmt(med("alertq", "e2e_p99_ms"), 2),
                fmt(med("alertq", "e2e_max_ms"), 2),
                "p99 < 100: " + ("met" if med("alertq", "e2e_p99_ms") < 100 else "MISSED"),
            ],
            [
                "Alertmanager 0.25's own POST, same load (for scale)",
                fmt(med("alertmanager", "post_p50_ms"), 2),
                fmt(med("alertmanager", "post_p99_ms"), 2),
                fmt(med("alertmanager", "post_max_ms"), 2),
                "",
            ],
        ],
    )
    report.add(f"Alerts answered 200 by alertq but not listed by its Alertmanager: {lost}.")


def part_parse(a: Args, report: Report) -> None:
    """Client CPU (``time.process_time``) of what the relay does with one body before SQL,
    best of 3 rounds of 30 calls per step, for each run: the profile's first suspect."""
    raw = json.dumps(make_alerts("parse", 0, a.batch_size, datetime.now(UTC))).encode()
    now = datetime.now(UTC)
    parsed = parse_alerts_body(raw, received_at=now)
    labels = [x["labels"] for x in parsed.alerts]
    steps: dict[str, Callable[[], object]] = {
        "parse_alerts_body (the fast path, as the relay runs it)": lambda: parse_alerts_body(
            raw, received_at=now
        ),
        "  of which label_fingerprints (the body's alerts at once)": lambda: label_fingerprints(
            labels
        ),
        "  of which orjson.loads of the body": lambda: orjson.loads(raw),
        "parse_exact (Go's decoding rules: bodies the fast path leaves)": lambda: parse_exact(
            raw, received_at=now
        ),
        "parse_exact + check_storable per alert (the old rules)": lambda: parse_exact(
            raw, received_at=now, check=check_storable
        ),
        "label_fingerprint one alert at a time (before)": lambda: [
            label_fingerprint(x) for x in labels
        ],
        "driver: orjson.dumps of each row's payload": lambda: [
            orjson.dumps([x]).decode() for x in parsed.alerts
        ],
        "driver before: json.dumps of each row's payload": lambda: [
            json.dumps([x], ensure_ascii=False) for x in parsed.alerts
        ],
        "for scale: plain json.loads of the body": lambda: json.loads(raw),
    }
    runs: list[dict[str, float]] = []
    for _ in range(a.runs):
        result: dict[str, float] = {}
        for name, step in steps.items():
            best = float("inf")
            for _ in range(3):
                began = time.process_time()
                for _ in range(30):
                    step()
                best = min(best, (time.process_time() - began) / 30)
            result[name] = best * 1000
        runs.append(result)
    report.data["parse"] = runs
    report.table(
        f"CPU per {a.batch_size}-alert body before any SQL, ms (median over {a.runs} runs of "
        "the best of 3 rounds)",
        ["step", "ms", "µs per alert"],
        [
            [
                name,
                fmt(median([x[name] for x in runs]), 2),
                fmt(median([x[name] for x in runs]) * 1000 / a.batch_size, 1),
            ]
            for name in steps
        ],
    )


async def _sqlite_once(url: str, synchronous: str, a: Args) -> dict[str, float]:
    engine = create_engine(Settings(database_url=url))

    def pragma(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    event.listen(engine.sync_engine, "connect", pragma)  # after alertq's own listener
    factory = create_session_factory(engine)
    run = uuid.uuid4().hex[:8]
    try:
        lat: list[float] = []
        for seq in range(a.sqlite_enqueues):
            payload = make_alerts(run, seq, 1, datetime.now(UTC))
            began = time.perf_counter()
            async with transaction(factory) as session:
                await enqueue_alert(session, payload, "bench")
            lat.append(time.perf_counter() - began)
        batches = []
        first = a.sqlite_enqueues
        for k in range(a.sqlite_batches):
            raw = json.dumps(make_alerts(run, first + k * 256, 256, datetime.now(UTC))).encode()
            batches.append(parse_alerts_body(raw, received_at=datetime.now(UTC)))
        began = time.perf_counter()
        for parsed in batches:
            async with transaction(factory) as session:
                await IntakeDriver(session).alerts_insert_many(
                    [
                        IntakeRow([x], f)
                        for x, f in zip(parsed.alerts, parsed.fingerprints, strict=True)
                    ],
                    alert_type="relay",
                    now=datetime.now(UTC),
                    max_attempts=10,
                    source_addr="127.0.0.1",
                    source_agent="bench",
                )
        batch_s = time.perf_counter() - began
        return {
            "enqueue_p50_ms": percentile(lat, 50) * 1000,
            "enqueue_p99_ms": percentile(lat, 99) * 1000,
            "batch_alerts_per_s": a.sqlite_batches * 256 / batch_s,
            "batch_ms": batch_s / a.sqlite_batches * 1000,
        }
    finally:
        await engine.dispose()


def part_sqlite(a: Args, report: Report) -> None:
    runs: list[dict[str, Any]] = []
    for r in range(a.runs):
        result: dict[str, Any] = {}
        for mode in ["FULL", "NORMAL"] if r % 2 == 0 else ["NORMAL", "FULL"]:
            tmp = Path(tempfile.mkdtemp(prefix="alertq-bench-sync-"))
            try:
                url = f"sqlite+aiosqlite:///{tmp / 'alertq.db'}"
                upgrade(url)
                result[mode] = asyncio.run(_sqlite_once(url, mode, a))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"run {r + 1} sqlite {mode}: {json.dumps(result[mode])}", flush=True)
        runs.append(result)
    report.data["sqlite"] = runs

    def med(mode: str, key: str) -> float:
        return median([x[mode][key] for x in runs])

    def ratio(key: str) -> float:
        return median([x["FULL"][key] / x["NORMAL"][key] for x in runs])

    report.table(
        f"SQLite producer cost, synchronous=FULL (alertq's default) vs NORMAL, WAL, median of "
        f"{a.runs} runs alternating ({a.sqlite_enqueues} one-alert enqueues, "
        f"{a.sqlite_batches} relay batches of 256)",
        ["what", "FULL", "NORMAL", "FULL / NORMAL (same run)"],
        [
            [
                "enqueue_alert + COMMIT p50, ms",
                fmt(med("FULL", "enqueue_p50_ms"), 3),
                fmt(med("NORMAL", "enqueue_p50_ms"), 3),
                f"{ratio('enqueue_p50_ms'):.2f}",
            ],
            [
                "enqueue_alert + COMMIT p99, ms",
                fmt(med("FULL", "enqueue_p99_ms"), 3),
                fmt(med("NORMAL", "enqueue_p99_ms"), 3),
                f"{ratio('enqueue_p99_ms'):.2f}",
            ],
            [
                "256-alert relay batch + COMMIT, ms",
                fmt(med("FULL", "batch_ms"), 2),
                fmt(med("NORMAL", "batch_ms"), 2),
                f"{ratio('batch_ms'):.2f}",
            ],
            [
                "relay batches, alerts/s",
                fmt(med("FULL", "batch_alerts_per_s")),
                fmt(med("NORMAL", "batch_alerts_per_s")),
                f"{ratio('batch_alerts_per_s'):.2f}",
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_common_args(parser)
    parser.add_argument(
        "--parts", default="throughput,latency,parse,sqlite", help="comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--batches", type=int, default=60, help="bodies per sender per run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="alerts/s")
    parser.add_argument("--latency-batch", type=int, default=10, help="alerts per POST")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--sqlite-enqueues", type=int, default=500)
    parser.add_argument("--sqlite-batches", type=int, default=40)
    parser.add_argument(
        "--two-servers",
        action="store_true",
        help="throughput: also 2 alertq run on the same database, the senders split",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a pyinstrument text profile of the throughput part's alertq run here "
        "(pip install pyinstrument)",
    )
    ns = parser.parse_args()
    if ns.quick:
        ns.runs, ns.batches, ns.latency_seconds = 1, 10, 5.0
        ns.sqlite_enqueues, ns.sqlite_batches = 100, 10
    a = Args(
        ns.runs,
        ns.senders,
        ns.batches,
        ns.batch_size,
        ns.latency_rate,
        ns.latency_batch,
        ns.latency_seconds,
        ns.sqlite_enqueues,
        ns.sqlite_batches,
        ns.profile,
        ns.two_servers,
    )
    parts = set(ns.parts.split(","))
    report = Report("intake", command_line(), out_dir(ns.out))
    workdir = Path(tempfile.mkdtemp(prefix="alertq-bench-intake-"))
    try:
        if parts & {"throughput", "latency"}:
            with pg_database() as db_url:
                if "throughput" in parts:
                    part_throughput(a, report, db_url, workdir)
                if "latency" in parts:
                    part_latency(a, report, db_url, workdir)
        if "parse" in parts:
            part_parse(a, report)
        if "sqlite" in parts:
            part_sqlite(a, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report.save()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
