#!/usr/bin/env python
"""Chaos run: prove that alertq loses no alert and leaves none stuck while everything fails.

    python bench/chaos.py [--quick] [--alerts N] [--workers 4] [--seed S]

What it sets up, all throw-away and on free ports (the machine's shared PostgreSQL on 5432
is never touched):

* a PostgreSQL cluster (``initdb`` into a temporary directory, ``pg_ctl`` start), migrated
  with ``alertq db upgrade``;
* two real Alertmanagers (A and B), each behind a small recording reverse proxy that
  counts, per alert, how many POSTs carrying it the Alertmanager accepted (so duplicates
  are measured, not guessed). It refuses, with HTTP 400, any POST holding an alert
  labelled ``chaos_fault="refuse"`` (every ``--poison-every``-th alert: a payload
  Alertmanager rejects). ``--black-hole-every N`` makes it answer 200 for every N-th alert
  without passing it on: a self-test that the check below does catch lost alerts;
* ``--workers`` ``alertq worker`` processes (short lease, short timeout, small backoff
  cap) and ``--producers`` producer processes, each enqueueing its share of the alerts
  with ``enqueue_alert``, one transaction per alert, at a steady total ``--rate``.

While the producers run, the faults:

* every 2-4 s a random worker is ``kill -9``-ed and a new one started in its place;
* Alertmanager B (and its proxy) is stopped and started again on the same port, storage
  kept; Alertmanager keeps alerts only in memory, so B forgets everything it had;
* PostgreSQL is restarted once (``pg_ctl restart -m fast``); workers and producers must
  reconnect by themselves. A worker that exits without being killed is a crash.

Then the faults stop, the workers are stopped with SIGTERM, and ``alertq worker --drain``
runs (again, while rows are still waiting for a retry) until no row is pending. The check:
every alert (a unique ``seq`` label) is either **delivered** (its row is ``sent`` and an
Alertmanager lists it in ``GET /api/v2/alerts``) or ``failed`` with a reason; anything
else is **lost**. **Stuck** rows are pending rows still holding a lease. The last line is
``lost=0 stuck=0 ...``; the exit status is 1 if anything was lost or stuck, a worker
crashed, or a producer gave up.

**Relay mode** (``--relay``, issue 11): the alerts come in through ``POST /api/v2/alerts``
instead of ``enqueue_alert``. The first ``--relay-servers`` worker slots run ``alertq run``
(intake and delivery, each on its own fixed port) and the others ``alertq worker``; every
slot, ``alertq run`` included, is ``kill -9``-ed at random and restarted on its port. The
``--producers`` senders POST batches of ``--relay-batch`` alerts at the total ``--rate``
(200/s by default), each to the next ``alertq run`` in turn; a POST that fails (connection
refused or reset while a server restarts, a 500 while PostgreSQL restarts) is sent again
to the next server until one answers 200, as an HA sender would. **Lost** is then every
alert that got a 200 but has no ``sent`` row listed by an Alertmanager at the end; no alert
is poisoned (a refused alert is never listed). The report also says how many alerts the
restarted Alertmanager B lists again at the end (restart replay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from alertq import ops
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_alert_driver
from alertq.enqueue import InvalidAlertPayload, enqueue_alert

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the test helpers live in tests/support
    sys.path.insert(0, str(ROOT))

from tests.support import free_port  # noqa: E402
from tests.support.alertmanager import AlertmanagerProcess  # noqa: E402
from tests.support.pgcluster import PostgresCluster  # noqa: E402

ALERTNAME = "AlertqChaos"
FAULT_LABEL = "chaos_fault"
REFUSE = "refuse"  # the proxy answers 400: the row must end failed, with the reason
DROP = "drop"  # the proxy answers 200 and forgets it: lost, for --black-hole-every
ALERTS_PATH = "/api/v2/alerts"

# Worker settings: a lease longer than the HTTP timeout, retries that come back fast.
WORKER_ENV = {
    "ALERTQ_LEASE_SECONDS": "5",
    "ALERTQ_ALERTMANAGER_TIMEOUT": "3",
    "ALERTQ_BACKOFF_BASE": "0.25",
    "ALERTQ_BACKOFF_CAP": "2",
    "ALERTQ_POLL_INTERVAL": "0.5",
    "ALERTQ_CONCURRENCY": "2",
    "ALERTQ_DB_POOL_SIZE": "4",
    "ALERTQ_LOG_LEVEL": "WARNING",
}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- recording proxy


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: RecordingProxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker killed mid-request, or stop() cutting connections: expected here.
        self.proxy.count("connection_errors")


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real Alertmanager
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        self.server.proxy.track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.proxy.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        status, body = self.server.proxy.forward("GET", self.path, None)
        self._reply(status, body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        proxy = self.server.proxy
        alerts = _alerts(body) if self.path == ALERTS_PATH else None
        if alerts is None:
            self._reply(*proxy.forward("POST", self.path, body))
            return
        if any(_fault(a) == REFUSE for a in alerts):
            proxy.count("refused")
            self._reply(
                400, f'chaos proxy: refused an alert labelled {FAULT_LABEL}="{REFUSE}"'.encode()
            )
            return
        kept = [a for a in alerts if _fault(a) != DROP]
        if len(kept) < len(alerts):
            proxy.count("black_holed", len(alerts) - len(kept))
            body = json.dumps(kept).encode()
        status, answer = proxy.forward("POST", self.path, body) if kept else (200, b"")
        proxy.count("posts")
        if 200 <= status < 300:
            proxy.accept([a["labels"]["seq"] for a in kept if "seq" in a["labels"]])
        self._reply(status, answer)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _alerts(body: bytes) -> list[dict[str, Any]] | None:
    """A POSTed batch of alerts, or None if it is not one (passed on untouched)."""
    try:
        alerts = json.loads(body)
    except ValueError:
        return None
    ok = isinstance(alerts, list) and all(
        isinstance(a, dict) and isinstance(a.get("labels"), dict) for a in alerts
    )
    return alerts if ok else None


def _fault(alert: dict[str, Any]) -> str | None:
    value = alert["labels"].get(FAULT_LABEL)
    return value if isinstance(value, str) else None


class RecordingProxy:
    """A reverse proxy in front of one Alertmanager that records what it accepted.

    ``accepted[seq]`` counts the POSTs carrying alert ``seq`` that the Alertmanager
    answered with 2xx: above 1 is a duplicate. :meth:`stop` closes the listening socket
    and every open connection, so workers see what they would of a stopped Alertmanager.
    """

    def __init__(self, name: str, upstream: AlertmanagerProcess) -> None:
        self.name = name
        self.upstream = upstream
        self.port = free_port()
        self.accepted: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: _ProxyServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = _ProxyServer(("127.0.0.1", self.port), _ProxyHandler)
        server.proxy = self
        self._server = server
        threading.Thread(
            target=server.serve_forever, name=f"proxy-{self.name}", daemon=True
        ).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def count(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self.counters[counter] += n

    def accept(self, seqs: list[str]) -> None:
        with self._lock:
            self.accepted.update(seqs)

    def forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as exc:
            self.count("upstream_errors")
            return 502, f"chaos proxy: upstream {self.name} unreachable: {exc}".encode()
        finally:
            conn.close()

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.accepted.values() if n > 1)


# --------------------------------------------------------------------------- producers


def chaos_payload(run: str, seq: int, fault: str | None) -> list[dict[str, Any]]:
    """One alert with a unique ``seq`` label, firing for hours so Alertmanager keeps it."""
    now = datetime.now(UTC)
    labels = {"alertname": ALERTNAME, "run": run, "seq": str(seq), "severity": "warning"}
    if fault is not None:
        labels[FAULT_LABEL] = fault
    return [
        {
            "labels": labels,
            "annotations": {"summary": f"chaos alert {seq}"},
            "startsAt": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "endsAt": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    ]


def fault_of(seq: int, poison_every: int, black_hole_every: int) -> str | None:
    """Which alerts the proxies refuse (every Nth) or, for the self-test, drop."""
    if poison_every > 0 and seq % poison_every == poison_every - 1:
        return REFUSE
    if black_hole_every > 0 and seq % black_hole_every == black_hole_every // 2:
        return DROP
    return None


async def produce(
    url: str, run: str, seqs: list[int], rate: float, faults: tuple[int, int]
) -> dict[str, float]:
    """Enqueue ``seqs`` at ``rate`` per second, one transaction each, retrying through
    database outages (a failed commit may have committed: then the alert is enqueued
    twice, and the newer row supersedes the older)."""
    engine = create_engine(Settings(database_url=url, db_pool_size=2))
    factory = create_session_factory(engine)
    retries = 0
    try:
        async with engine.connect():
            pass
        # Start-up (imports, first connection) is slow on a busy machine: the driver waits
        # for every producer to be ready, then starts them all at once.
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        start = time.monotonic()
        for k, seq in enumerate(seqs):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation
            payload = chaos_payload(run, seq, fault_of(seq, *faults))
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with transaction(factory) as session:
                        await enqueue_alert(session, payload, "chaos")
                    break
                except InvalidAlertPayload:
                    raise
                except Exception as exc:  # connection errors while PostgreSQL restarts
                    retries += 1
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"seq {seq}: gave up after 60 s: {exc}") from exc
                await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    return {"enqueued": len(seqs), "retries": retries, "seconds": time.monotonic() - start}


async def relay_produce(
    urls: list[str], run: str, seqs: list[int], rate: float, batch: int, black_hole_every: int
) -> dict[str, float]:
    """POST ``seqs`` in batches of ``batch`` at ``rate`` alerts/s, each batch to the next
    ``alertq run`` in turn, again (to the next) until one answers 200: every alert counted
    here got a 200 from alertq."""
    retries = 0
    clients = [httpx.AsyncClient(base_url=u, timeout=10, trust_env=False) for u in urls]
    try:
        deadline = time.monotonic() + 120
        while not await _any_ready(clients):
            if time.monotonic() > deadline:
                raise RuntimeError("no alertq run became ready in 120 s")
            await asyncio.sleep(0.2)  # polling the servers' /-/ready
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        start = time.monotonic()
        turn = 0
        for k in range(0, len(seqs), batch):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation
            chunk = seqs[k : k + batch]
            body = [
                a
                for seq in chunk
                for a in chaos_payload(run, seq, fault_of(seq, 0, black_hole_every))
            ]
            deadline = time.monotonic() + 60
            while True:
                client = clients[turn % len(clients)]
                turn += 1
                try:
                    response = await client.post(ALERTS_PATH, json=body)
                    if response.status_code == 200:
                        break
                    if response.status_code < 500:
                        raise RuntimeError(
                            f"alertq answered {response.status_code}: {response.text}"
                        )
                    error = f"HTTP {response.status_code}"
                except httpx.TransportError as exc:  # a server killed or restarting
                    error = type(exc).__name__
                retries += 1
                if time.monotonic() > deadline:
                    raise RuntimeError(f"seqs {chunk}: no 200 after 60 s: {error}")
                await asyncio.sleep(0.1)
    finally:
        for client in clients:
            await client.aclose()
    return {"enqueued": len(seqs), "retries": retries, "seconds": time.monotonic() - start}


async def _any_ready(clients: list[httpx.AsyncClient]) -> bool:
    for client in clients:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/-/ready")).status_code == 200:
                return True
    return False


# --------------------------------------------------------------------------- workers


class WorkerPool:
    """``alertq worker`` processes in numbered slots, each logging to its own file."""

    def __init__(self, size: int, env: dict[str, str], workdir: Path) -> None:
        self.size = size
        self.env = env
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.logs: list[Path] = []
        self.current_log: list[Path | None] = [None] * size
        self.kills = 0
        self.crashes: list[str] = []

    def start(self, slot: int, *args: str) -> None:
        path = self.workdir / f"worker-{slot}-{len(self.logs)}.log"
        self.logs.append(path)
        self.current_log[slot] = path
        with path.open("wb") as out:
            self.procs[slot] = subprocess.Popen(
                [sys.executable, "-m", "alertq", "worker", *args],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def start_all(self, *args: str) -> None:
        for slot in range(self.size):
            self.start(slot, *args)

    def kill(self, slot: int) -> None:
        """``kill -9`` the worker in ``slot`` and start a new one in its place."""
        proc = self.procs[slot]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.kills += 1
        self.start(slot)

    def reap(self) -> None:
        """Record (and replace) any worker that exited without being killed."""
        for slot, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                path = self.current_log[slot]
                self.crashes.append(f"worker exited by itself with code {proc.returncode}: {path}")
                tail = path.read_text(errors="replace").splitlines()[-15:] if path else []
                log(f"!! worker slot {slot} crashed (exit {proc.returncode}); log {path}:")
                log("\n".join(tail))
                self.start(slot)

    def stop_all(self, timeout: float = 20.0) -> list[int | None]:
        """SIGTERM every worker and wait; returns their exit codes (None: had to be killed)."""
        codes: list[int | None] = []
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                codes.append(proc.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        self.procs = [None] * self.size
        return codes

    def wait_all(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for proc in self.procs:
            if proc is None:
                continue
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                codes.append(None)
        self.procs = [None] * self.size
        return codes

    def log_counts(self) -> Counter[str]:
        """Events the workers logged: rows reclaimed after a lease expired, rows in POSTs
        that timed out (the Alertmanager may have accepted them), failed cycles, outages."""
        counts: Counter[str] = Counter()
        for path in self.logs:
            text = path.read_text(errors="replace")
            for match in RECLAIMED_RE.finditer(text):
                counts["reclaimed_rows"] += int(match.group(1))
            for match in TIMED_OUT_RE.finditer(text):
                counts["timed_out_rows"] += _count_ids(match.group(1))
            counts["fenced_outcomes"] += sum(int(m) for m in FENCED_RE.findall(text))
            counts["failed_cycles"] += text.count("delivery cycle failed")
            # A database outage is logged once when it starts (and once a minute), not per
            # failed cycle: see alertq.db.DatabaseOutage.
            counts["database_outages"] += text.count("database unreachable at")
            for match in REPLAYED_RE.finditer(text):
                counts["replayed_alerts"] += int(match.group(1) or match.group(2))
        return counts


class RelayPool(WorkerPool):
    """Slots below ``servers`` run ``alertq run`` on a fixed port each (its URL in
    :attr:`urls`), the rest ``alertq worker``. ``--drain`` rounds are plain workers."""

    def __init__(self, size: int, servers: int, env: dict[str, str], workdir: Path) -> None:
        super().__init__(size, env, workdir)
        self.ports = [free_port() for _ in range(servers)]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, slot: int, *args: str) -> None:
        if slot >= len(self.ports) or "--drain" in args:
            super().start(slot, *args)
            return
        path = self.workdir / f"run-{slot}-{len(self.logs)}.log"
        self.logs.append(path)
        self.current_log[slot] = path
        # INFO: the replay service logs how many alerts it re-sent (duplicates by design).
        env = {
            **self.env,
            "ALERTQ_HTTP_ADDR": f"127.0.0.1:{self.ports[slot]}",
            "ALERTQ_LOG_LEVEL": "INFO",
        }
        with path.open("wb") as out:
            self.procs[slot] = subprocess.Popen(
                [sys.executable, "-m", "alertq", "run", *args],
                env=env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )


RECLAIMED_RE = re.compile(r"reclaimed (\d+) rows whose lease had expired")
TIMED_OUT_RE = re.compile(r"delivery failed rows=(\S+) .* error=timeout after")
REPLAYED_RE = re.compile(r"replayed (\d+) live alerts|replay to \S+ stopped after (\d+) of")
FENCED_RE = re.compile(r"(\d+) outcomes not recorded")


def _count_ids(ranges: str) -> int:
    """How many ids ``1-4,9`` (the engine's compact log format) names."""
    total = 0
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        total += int(last or first) - int(first) + 1
    return total


# --------------------------------------------------------------------------- the run


@dataclass
class Plan:
    alerts: int
    workers: int
    producers: int
    rate: float
    seed: int
    poison_every: int
    black_hole_every: int = 0
    relay: bool = False
    relay_servers: int = 2
    relay_batch: int = 4
    kill_interval: tuple[float, float] = (2.0, 4.0)

    @property
    def production_seconds(self) -> float:
        return self.alerts / self.rate


@dataclass
class Report:
    alerts: int = 0
    delivered: int = 0
    failed: int = 0
    failed_poison: int = 0
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0
    duplicates_by_am: dict[str, int] = field(default_factory=dict)
    max_lateness_s: float = 0.0
    p50_lateness_s: float = 0.0
    p99_lateness_s: float = 0.0
    run_time_s: float = 0.0
    produce_time_s: float = 0.0
    drain_time_s: float = 0.0
    drain_rounds: int = 0
    kills: int = 0
    pg_restarts: int = 0
    am_restarts: int = 0
    worker_crashes: int = 0
    producer_retries: int = 0
    producer_seconds: float = 0.0
    producer_errors: int = 0
    rows: int = 0
    superseded_rows: int = 0
    in_am_a: int = 0
    in_am_b: int = 0
    delivered_to_both: int = 0
    delivered_to_a_only: int = 0
    delivered_to_b_only: int = 0
    proxy_counters: dict[str, dict[str, int]] = field(default_factory=dict)
    worker_log: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    relay: bool = False

    @property
    def duplicate_bound(self) -> int:
        """Each reclaim (a kill, a lost outcome) or timed-out POST may re-post a row once to
        each Alertmanager, and so may each row a producer stored twice (a commit, or a
        relay 200, lost with the connection, then sent again); the relay's restart replay
        re-sends each alert it replays once. Nothing else may cause a duplicate."""
        resent = max(0, self.rows - self.alerts)
        return 2 * (
            self.worker_log.get("reclaimed_rows", 0)
            + self.worker_log.get("timed_out_rows", 0)
            + resent
        ) + self.worker_log.get("replayed_alerts", 0)

    def final_line(self) -> str:
        relay = f"listed_a={self.in_am_a} listed_b={self.in_am_b} " if self.relay else ""
        return (
            f"lost={self.lost} stuck={self.stuck} delivered={self.delivered} "
            f"failed={self.failed} duplicates={self.duplicates} "
            f"duplicate_bound={self.duplicate_bound} "
            f"max_lateness={self.max_lateness_s:.2f}s run_time={self.run_time_s:.1f}s "
            f"kills={self.kills} pg_restarts={self.pg_restarts} "
            f"am_restarts={self.am_restarts} worker_crashes={self.worker_crashes} " + relay
        ).strip()

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.stuck == 0
            and self.worker_crashes == 0
            and self.producer_errors == 0
            and self.duplicates <= self.duplicate_bound
            and self.delivered + self.failed == self.alerts
        )


class Chaos:
    """Owns every process of one run and the faults injected into them."""

    def __init__(self, plan: Plan, workdir: Path) -> None:
        self.plan = plan
        self.workdir = workdir
        self.rng = random.Random(plan.seed)
        self.run_id = uuid.uuid4().hex[:8]
        self.report = Report(alerts=plan.alerts, relay=plan.relay)
        self.stack = contextlib.ExitStack()
        self.t0 = time.monotonic()
        self.enqueued = 0
        self.progress = asyncio.Condition()  # notified by watch() every half second
        self.watch_over = False

    # -- set-up

    def setup(self) -> None:
        log(f"chaos: run {self.run_id}, work directory {self.workdir}")
        self.pg = self.stack.enter_context(PostgresCluster())
        log(f"  postgres   {self.pg.url} (throw-away cluster in {self.pg.dir})")
        self.am_a = self.stack.enter_context(AlertmanagerProcess(resolve_timeout="6h"))
        self.am_b = self.stack.enter_context(AlertmanagerProcess(resolve_timeout="6h"))
        self.proxy_a = RecordingProxy("A", self.am_a)
        self.proxy_b = RecordingProxy("B", self.am_b)
        for proxy in (self.proxy_a, self.proxy_b):
            proxy.start()
            self.stack.callback(proxy.stop)
            log(f"  am {proxy.name}       {proxy.upstream.url} behind proxy {proxy.url}")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTQ_")}
        self.env.update(WORKER_ENV)
        self.env.update(
            ALERTQ_DATABASE_URL=self.pg.url,
            ALERTQ_ALERTMANAGER_URLS=f"{self.proxy_a.url},{self.proxy_b.url}",
            ALERTQ_CONFIG_FILE=str(self.workdir / "no-config.toml"),
        )
        subprocess.run(
            [sys.executable, "-m", "alertq", "db", "upgrade"],
            env=self.env,
            cwd=self.workdir,
            check=True,
            capture_output=True,
        )
        if self.plan.relay:
            self.pool = RelayPool(
                self.plan.workers, self.plan.relay_servers, self.env, self.workdir
            )
            log(
                f"  alertq run {', '.join(self.pool.urls)} "
                f"(+ {self.plan.workers - self.plan.relay_servers} alertq worker)"
            )
        else:
            self.pool = WorkerPool(self.plan.workers, self.env, self.workdir)
        self.stack.callback(self.pool.stop_all, 5.0)

    # -- phases

    async def run(self) -> Report:
        started = time.monotonic()
        self.setup()
        self.pool.start_all()
        producers = self.start_producers()
        await self.release_producers(producers)
        self.t0 = time.monotonic()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self.watch(stop))
        faults = asyncio.create_task(self.faults(producers))
        chaos = [
            asyncio.create_task(self.killer(stop, producers)),
            asyncio.create_task(self.reaper(stop)),
        ]
        results = await self.wait_producers(producers)
        await faults  # every fault happens, even if the producers were quick
        self.report.produce_time_s = time.monotonic() - self.t0
        stop.set()
        await asyncio.gather(*chaos, watcher)
        self.report.kills = self.pool.kills
        for result in results:
            self.report.producer_retries += int(result.get("retries", 0))
            self.report.producer_seconds = max(
                self.report.producer_seconds, float(result.get("seconds", 0.0))
            )
        log(f"producers done in {self.report.produce_time_s:.1f}s; faults stopped")

        codes = self.pool.stop_all()
        log(f"workers stopped with SIGTERM, exit codes {codes} (-15: still starting up)")
        if any(code not in (0, -signal.SIGTERM) for code in codes):
            self.pool.crashes.append(f"graceful stop exit codes {codes}")
        drained = time.monotonic()
        await self.drain()
        self.report.drain_time_s = time.monotonic() - drained
        self.report.worker_log = dict(self.pool.log_counts())
        self.report.worker_crashes = len(self.pool.crashes)
        await self.verify()
        self.report.run_time_s = time.monotonic() - started
        return self.report

    def start_producers(self) -> list[subprocess.Popen[bytes]]:
        procs = []
        n = self.plan.producers
        for p in range(n):
            out = (self.workdir / f"producer-{p}.out").open("wb")
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--produce",
                        f"{p}:{n}",
                        "--url",
                        self.pg.url,
                        "--run",
                        self.run_id,
                        "--alerts",
                        str(self.plan.alerts),
                        "--rate",
                        str(self.plan.rate / n),
                        "--poison-every",
                        str(self.plan.poison_every),
                        "--black-hole-every",
                        str(self.plan.black_hole_every),
                        *self.relay_args(),
                    ],
                    env=self.env,
                    cwd=self.workdir,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            out.close()
            self.stack.callback(_kill, procs[-1])
        return procs

    def relay_args(self) -> list[str]:
        if not isinstance(self.pool, RelayPool):
            return []
        return [
            "--relay-urls",
            ",".join(self.pool.urls),
            "--relay-batch",
            str(self.plan.relay_batch),
        ]

    async def release_producers(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """Wait until every producer is connected and ready, then start them together."""
        deadline = time.monotonic() + 120
        outputs = [self.workdir / f"producer-{i}.out" for i in range(len(procs))]
        while not all("ready" in path.read_text(errors="replace") for path in outputs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("producers did not become ready; see producer-*.out")
            await asyncio.sleep(0.1)  # polling the producers' output files
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.close()

    async def wait_producers(self, procs: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
        for proc in procs:
            await asyncio.to_thread(proc.wait)
        results = []
        for i, proc in enumerate(procs):
            text = (self.workdir / f"producer-{i}.out").read_text(errors="replace")
            lines = text.strip().splitlines()
            if proc.returncode != 0 or not lines:
                self.report.producer_errors += 1
                log(f"!! producer {i} failed (exit {proc.returncode}):\n{text[-2000:]}")
                continue
            results.append(json.loads(lines[-1]))
        return results

    def note(self, what: str) -> None:
        log(f"t={time.monotonic() - self.t0:5.1f}s {what}")

    async def watch(self, stop: asyncio.Event) -> None:
        """Keep ``self.enqueued`` (rows in the queue) current; print progress every 5 s."""
        engine = create_engine(Settings(database_url=self.pg.url, db_pool_size=1))
        factory = create_session_factory(engine)
        printed = 0.0
        try:
            while not stop.is_set():
                try:
                    stats = await ops.queue_stats(factory)
                    self.enqueued = int(stats["total"])
                    counts = " ".join(
                        f"{k}={stats.get(k, 0)}" for k in ("pending", "sent", "failed")
                    )
                except Exception as exc:  # the PostgreSQL restart
                    counts = f"database unavailable ({type(exc).__name__})"
                async with self.progress:
                    self.progress.notify_all()
                if time.monotonic() - printed >= 5:
                    printed = time.monotonic()
                    self.note(f"{counts} kills={self.pool.kills} crashes={len(self.pool.crashes)}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            self.watch_over = True  # nothing will notify any more: release every waiter
            async with self.progress:
                self.progress.notify_all()
            await engine.dispose()

    async def progressed(self, alerts: float, producers: list[subprocess.Popen[bytes]]) -> None:
        """Return once ``alerts`` rows are in the queue, or every producer has exited."""
        async with self.progress:
            await self.progress.wait_for(
                lambda: (
                    self.enqueued >= alerts
                    or self.watch_over
                    or all(p.poll() is not None for p in producers)
                )
            )

    async def faults(self, producers: list[subprocess.Popen[bytes]]) -> None:
        """Alertmanager B down at 20 % of the alerts enqueued and up again at 45 %, then
        PostgreSQL restarted at 65 %: set by progress, not time, so a slow machine still
        sees every fault in mid-run."""
        n = self.plan.alerts
        await self.progressed(0.20 * n, producers)
        self.note("FAULT Alertmanager B stopped")
        await asyncio.to_thread(self.proxy_b.stop)
        await asyncio.to_thread(self.am_b.stop)
        await self.progressed(0.45 * n, producers)
        await asyncio.to_thread(self.am_b.start)
        await asyncio.to_thread(self.proxy_b.start)
        self.report.am_restarts += 1
        self.note("FAULT Alertmanager B started again (empty: it keeps alerts in memory only)")
        await self.progressed(0.65 * n, producers)
        began = time.monotonic()
        await asyncio.to_thread(self.pg.restart, "fast")
        self.report.pg_restarts += 1
        self.note(f"FAULT PostgreSQL restarted (-m fast, {time.monotonic() - began:.1f}s)")

    async def killer(self, stop: asyncio.Event, producers: list[subprocess.Popen[bytes]]) -> None:
        """``kill -9`` a random worker every 2-4 s, and every 2-4 s worth of alerts at the
        planned rate: on a machine too busy to keep the rate, kills keep pace with the work
        (each restart costs a second of CPU) rather than with the clock."""
        lo, hi = self.plan.kill_interval
        while not stop.is_set():
            interval = self.rng.uniform(lo, hi)
            target = self.enqueued + interval * self.plan.rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            await self.progressed(target, producers)
            if stop.is_set() or not any(p.poll() is None for p in producers):
                return
            # In the event loop, not a thread: the reaper must never see a kill half done.
            self.pool.kill(self.rng.randrange(self.plan.workers))

    async def reaper(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.pool.reap()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)
        self.pool.reap()

    async def drain(self, budget: float = 180.0) -> None:
        """``alertq worker --drain`` until no row is pending (drain exits while rows wait
        for a retry, so it runs again once they are due)."""
        engine = create_engine(Settings(database_url=self.pg.url, db_pool_size=1))
        factory = create_session_factory(engine)
        deadline = time.monotonic() + budget
        try:
            while time.monotonic() < deadline:
                self.report.drain_rounds += 1
                self.pool.start_all("--drain")
                codes = await asyncio.to_thread(
                    self.pool.wait_all, max(1.0, deadline - time.monotonic())
                )
                if any(code != 0 for code in codes):
                    self.pool.crashes.append(f"drain round exit codes {codes}")
                    log(f"!! drain workers exited with {codes}")
                async with transaction(factory) as session:
                    counts = await get_alert_driver(session).alerts_counts(datetime.now(UTC))
                    pending = (await get_alert_driver(session).fetch_queue_stats())["pending"]
                log(
                    f"drain round {self.report.drain_rounds}: exit codes {codes}, {pending} pending"
                )
                if pending == 0:
                    return
                if counts.next_due_at is not None:
                    wait = (counts.next_due_at - datetime.now(UTC)).total_seconds()
                    await asyncio.sleep(min(max(wait, 0.0), 10.0))  # until the next retry is due
        finally:
            await engine.dispose()

    async def verify(self) -> None:
        """Every seq delivered (sent, and listed by an Alertmanager) or failed with a reason."""
        engine = create_engine(Settings(database_url=self.pg.url))
        factory = create_session_factory(engine)
        try:
            async with transaction(factory) as session:
                rows = await get_alert_driver(session).alerts_list(limit=10 * self.plan.alerts)
        finally:
            await engine.dispose()
        in_a = await asyncio.to_thread(self.listed, self.am_a)
        in_b = await asyncio.to_thread(self.listed, self.am_b)
        r = self.report
        r.rows, r.in_am_a, r.in_am_b = len(rows), len(in_a), len(in_b)
        by_seq: dict[str, list[Any]] = {}
        for row in rows:
            by_seq.setdefault(row.payload[0]["labels"]["seq"], []).append(row)
        a_key, b_key = self.proxy_a.url, self.proxy_b.url
        lateness: list[float] = []
        for seq in map(str, range(self.plan.alerts)):
            seq_rows = by_seq.get(seq, [])
            sent = [x for x in seq_rows if x.status == "sent"]
            failed = [x for x in seq_rows if x.status == "failed" and x.last_error]
            if sent:
                if seq in in_a or seq in in_b:
                    r.delivered += 1
                    row = max(sent, key=lambda x: x.id)
                    lateness.append((row.sent_at - row.created_at).total_seconds())
                    to = set(row.delivered_to)
                    if to == {a_key, b_key}:
                        r.delivered_to_both += 1
                    elif to == {a_key}:
                        r.delivered_to_a_only += 1
                    elif to == {b_key}:
                        r.delivered_to_b_only += 1
                    continue
                why = f"sent to {sorted(sent[-1].delivered_to)} but listed by no Alertmanager"
            elif failed:
                r.failed += 1
                fault = fault_of(int(seq), self.plan.poison_every, self.plan.black_hole_every)
                r.failed_poison += fault == REFUSE
                continue
            elif not seq_rows:
                why = "no row"
            else:
                why = "rows " + ", ".join(f"{x.id}:{x.status}" for x in seq_rows)
            r.lost += 1
            if len(r.lost_examples) < 10:
                r.lost_examples.append(f"seq {seq}: {why}")
        r.stuck = sum(1 for x in rows if x.status == "pending" and x.leased_until is not None)
        r.superseded_rows = sum(1 for x in rows if x.status == "superseded")
        if lateness:
            lateness.sort()
            r.max_lateness_s = lateness[-1]
            r.p50_lateness_s = statistics.median(lateness)
            r.p99_lateness_s = lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))]
        r.duplicates_by_am = {p.name: p.duplicates() for p in (self.proxy_a, self.proxy_b)}
        r.duplicates = sum(r.duplicates_by_am.values())
        r.proxy_counters = {p.name: dict(p.counters) for p in (self.proxy_a, self.proxy_b)}

    def listed(self, am: AlertmanagerProcess) -> set[str]:
        """The seq labels of this run's alerts that ``GET /api/v2/alerts`` lists."""
        response = httpx.get(
            f"{am.url}{ALERTS_PATH}",
            params={"filter": f'run="{self.run_id}"'},
            timeout=60,
            trust_env=False,
        )
        response.raise_for_status()
        return {a["labels"]["seq"] for a in response.json()}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def print_report(plan: Plan, r: Report) -> None:
    log("")
    log(f"alerts enqueued      {r.alerts} by {plan.producers} producers at {plan.rate:.0f}/s")
    log(f"queue rows           {r.rows} ({r.superseded_rows} superseded re-enqueues)")
    log(
        f"delivered            {r.delivered} (accepted by both {r.delivered_to_both}, "
        f"A only {r.delivered_to_a_only}, B only {r.delivered_to_b_only})"
    )
    log(f"listed by AM A / B   {r.in_am_a} / {r.in_am_b} (B restarted empty mid-run)")
    log(f"failed with reason   {r.failed} ({r.failed_poison} poison alerts refused on purpose)")
    log(f"lost                 {r.lost}")
    for example in r.lost_examples:
        log(f"    {example}")
    log(f"stuck in a lease     {r.stuck}")
    log(
        f"duplicates posted    {r.duplicates} (A {r.duplicates_by_am.get('A', 0)}, "
        f"B {r.duplicates_by_am.get('B', 0)}); at most {r.duplicate_bound} = 2 Alertmanagers "
        f"x ({r.worker_log.get('reclaimed_rows', 0)} rows reclaimed after a lease expired + "
        f"{r.worker_log.get('timed_out_rows', 0)} rows in POSTs that timed out + "
        f"{max(0, r.rows - r.alerts)} rows stored twice) + "
        f"{r.worker_log.get('replayed_alerts', 0)} alerts replayed to a restarted Alertmanager"
    )
    log(
        f"lateness             max {r.max_lateness_s:.2f}s, p99 {r.p99_lateness_s:.2f}s, "
        f"p50 {r.p50_lateness_s:.3f}s (sent_at - created_at)"
    )
    log(
        f"faults               {r.kills} kill -9, {r.am_restarts} Alertmanager restart, "
        f"{r.pg_restarts} PostgreSQL restart; worker crashes {r.worker_crashes}"
    )
    log(f"worker log events    {r.worker_log}")
    log(f"proxy counters       {r.proxy_counters}")
    log(
        f"producers            slowest took {r.producer_seconds:.1f}s "
        f"(planned {plan.production_seconds:.1f}s); {r.producer_retries} retried "
        f"transactions, {r.producer_errors} gave up"
    )
    log(
        f"time                 run {r.run_time_s:.1f}s, producing {r.produce_time_s:.1f}s, "
        f"drain {r.drain_time_s:.1f}s in {r.drain_rounds} round(s)"
    )
    log(r.final_line())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2,000 alerts, about a minute")
    parser.add_argument("--alerts", type=int, help="alerts to enqueue (default 20,000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--producers", type=int, default=4, help="producer processes")
    parser.add_argument("--rate", type=float, help="total enqueue rate, alerts/s")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule")
    parser.add_argument(
        "--poison-every", type=int, default=500, help="every Nth alert is refused (0: none)"
    )
    parser.add_argument(
        "--black-hole-every",
        type=int,
        default=0,
        help="self-test: every Nth alert is answered 200 but dropped, so lost must be > 0",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="alerts come in through POST /api/v2/alerts of alertq run (issue 11)",
    )
    parser.add_argument(
        "--relay-servers", type=int, default=2, help="relay mode: slots running alertq run"
    )
    parser.add_argument("--relay-batch", type=int, default=4, help="relay mode: alerts per POST")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    # Internal: the producer processes.
    parser.add_argument("--produce", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--relay-urls", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def producer_main(args: argparse.Namespace) -> int:
    index, count = map(int, args.produce.split(":"))
    seqs = list(range(index, args.alerts, count))
    faults = (args.poison_every, args.black_hole_every)
    if args.relay_urls:
        urls = args.relay_urls.split(",")
        result = asyncio.run(
            relay_produce(urls, args.run, seqs, args.rate, args.relay_batch, args.black_hole_every)
        )
    else:
        result = asyncio.run(produce(args.url, args.run, seqs, args.rate, faults))
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.produce:
        return producer_main(args)
    alerts = args.alerts or (2_000 if args.quick else 20_000)
    rate = args.rate or (100.0 if args.quick else 200.0)
    poison_every = args.poison_every
    if args.relay:
        # Issue 11: 200 alerts/s; a poisoned alert would never be listed, so none here.
        alerts = args.alerts or (3_000 if args.quick else 20_000)
        rate = args.rate or 200.0
        poison_every = 0
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    plan = Plan(
        alerts,
        args.workers,
        args.producers,
        rate,
        seed,
        poison_every,
        args.black_hole_every,
        relay=args.relay,
        relay_servers=min(args.relay_servers, args.workers),
        relay_batch=args.relay_batch,
    )
    log(
        f"chaos: {alerts} alerts, {plan.workers} workers, {plan.producers} producers, "
        f"{rate:.0f}/s, seed {seed} (rerun with --seed {seed})"
    )
    # SIGTERM unwinds like Ctrl-C: every child process and temporary directory is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="alertq-chaos-"))
    chaos = Chaos(plan, workdir)
    with chaos.stack:  # stops every process, even when the run breaks
        report = asyncio.run(chaos.run())
    print_report(plan, report)
    if args.json is not None:
        args.json.write_text(json.dumps({"plan": asdict(plan), **asdict(report)}, indent=2))
    if report.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        log(f"logs kept in {workdir}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
