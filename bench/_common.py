"""Shared helpers for the benchmarks in ``bench/``: throw-away databases, bulk loads, the
no-op stub and a real Alertmanager as child processes, statistics and result files.

Every benchmark runs on its own PostgreSQL database (``alertq_bench_<random>``, created on
the server of ``ALERTQ_BENCH_POSTGRES_URL`` and dropped at the end) or its own SQLite
file, never on a shared database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from alertq.alerts import payload_fingerprint
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.migrate import upgrade
from alertq.models import CostSimAlertQueueModel

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PG_ADMIN_URL = os.environ.get(
    "ALERTQ_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
ALERTMANAGER_BIN = os.environ.get(
    "ALERTQ_BENCH_ALERTMANAGER_BIN", "/usr/bin/prometheus-alertmanager"
)

# One alert as the bulk loads store it; __SEQ__ is replaced by the row number.
PAYLOAD_TEMPLATE = (
    '[{"labels": {"alertname": "BenchAlert", "seq": "__SEQ__", "severity": "warning", '
    '"component": "costsim", "instance": "bench"}, "annotations": {"summary": '
    '"benchmark alert __SEQ__", "description": "a queue row loaded by the alertq benchmarks"}, '
    '"generatorURL": "http://bench.example/graph"}]'
)


# --------------------------------------------------------------------------- databases


def asyncpg_dsn(url: str) -> str:
    """A plain ``postgresql://`` DSN for asyncpg from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def pg_database(prefix: str = "alertq_bench") -> Iterator[str]:
    """Create and migrate a throw-away PostgreSQL database; yield its URL; drop it after."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    """Create and migrate a SQLite file in a temporary directory; yield its URL."""
    tmp = Path(tempfile.mkdtemp(prefix="alertq-bench-"))
    url = f"sqlite+aiosqlite:///{tmp / 'alertq.db'}"
    try:
        upgrade(url)
        yield url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """``pg_database()`` or ``sqlite_database()`` by name (``postgres`` / ``sqlite``)."""
    ctx = pg_database() if backend == "postgres" else sqlite_database()
    with ctx as url:
        yield url


async def pg_fill(
    url: str,
    *,
    pending: int = 0,
    sent: int = 0,
    failed: int = 0,
    age_seconds: float = 3600.0,
    vacuum: bool = True,
) -> float:
    """Bulk-load rows with one ``INSERT … SELECT generate_series`` per status.

    Each row carries one alert (``PAYLOAD_TEMPLATE``, ``seq`` = a row number unique across
    calls) and a unique 16-hex-digit fingerprint, like an enqueued single alert. Pending
    rows are due now; sent and failed rows are ``age_seconds`` old.
    """
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tx = conn.transaction()
        await tx.start()
        for status, count in (("sent", sent), ("failed", failed), ("pending", pending)):
            if count <= 0:
                continue
            start = await conn.fetchval("SELECT coalesce(max(id), 0) FROM costsim_alert_queue")
            await conn.execute(
                """
                INSERT INTO costsim_alert_queue
                    (payload, alert_type, status, attempts, max_attempts, next_attempt_at,
                     created_at, sent_at, last_attempt_at, last_error, fingerprint,
                     lease_token, delivered_to)
                SELECT replace($1::text, '__SEQ__', g::text)::jsonb, 'disable', $2::text,
                       CASE WHEN $2 = 'pending' THEN 0 ELSE 1 END, 10,
                       CASE WHEN $2 = 'pending' THEN now()
                            ELSE now() - make_interval(secs => $3) END,
                       CASE WHEN $2 = 'pending' THEN now()
                            ELSE now() - make_interval(secs => $3) END,
                       CASE WHEN $2 = 'sent' THEN now() - make_interval(secs => $3) END,
                       CASE WHEN $2 = 'pending' THEN NULL
                            ELSE now() - make_interval(secs => $3) END,
                       CASE WHEN $2 = 'failed' THEN 'HTTP 400: bad alert' END,
                       substr(md5(g::text), 1, 16), 0, '[]'::jsonb
                FROM generate_series($4::bigint + 1, $4::bigint + $5::bigint) AS g
                """,
                PAYLOAD_TEMPLATE,
                status,
                float(age_seconds),
                int(start),
                count,
            )
        await conn.execute("ANALYZE costsim_alert_queue")
        await tx.commit()
        committed = time.time()
        if vacuum:
            await conn.execute("VACUUM ANALYZE costsim_alert_queue")
        return committed
    finally:
        await conn.close()


async def pg_load(url: str, rows: int) -> None:
    """A freshly loaded queue table: emptied, then ``rows`` due rows, ``VACUUM ANALYZE``d."""
    await reset_queue(url)
    await pg_fill(url, pending=rows)


async def sqlite_fill(url: str, *, pending: int) -> float:
    """Insert ``pending`` due rows (same shape as :func:`pg_fill`) in one transaction;
    returns the commit time (``time.time()``)."""
    engine = create_engine(Settings(database_url=url))
    factory = create_session_factory(engine)
    now = datetime.now(UTC)
    rows = []
    for i in range(1, pending + 1):
        payload = json.loads(PAYLOAD_TEMPLATE.replace("__SEQ__", str(i)))
        rows.append(
            {
                "payload": payload,
                "alert_type": "disable",
                "status": "pending",
                "attempts": 0,
                "max_attempts": 10,
                "next_attempt_at": now,
                "created_at": now,
                "fingerprint": payload_fingerprint(payload),
                "lease_token": 0,
                "delivered_to": [],
            }
        )
    try:
        async with transaction(factory) as session:
            for start in range(0, len(rows), 5000):
                await session.execute(
                    CostSimAlertQueueModel.__table__.insert(), rows[start : start + 5000]
                )
        return time.time()
    finally:
        await engine.dispose()


async def fill_pending(url: str, rows: int, *, vacuum: bool = True) -> float:
    """Load ``rows`` due rows on either backend; returns the commit time."""
    if url.startswith("sqlite"):
        return await sqlite_fill(url, pending=rows)
    return await pg_fill(url, pending=rows, vacuum=vacuum)


async def wait_workers_ready(
    url: str, processes: Sequence[subprocess.Popen[bytes]], per_worker: int = 2
) -> None:
    """Wait (deadline 60 s) until every worker process has its database open.

    PostgreSQL: the bench database has at least ``per_worker`` connections per worker (an
    alertq worker has its pool and its LISTEN connection). SQLite: every worker has the
    database file open.
    """
    deadline = time.monotonic() + 60
    path = ""
    if url.startswith("sqlite"):
        path = make_url(url).database or ""  # absolute: sqlite_database() makes it so
    while time.monotonic() < deadline:
        for p in processes:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.pid} exited with {p.returncode} during start-up")
        if url.startswith("sqlite"):
            ready = all(_has_open(p.pid, path) for p in processes)
        else:
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await conn.close()
            ready = n >= per_worker * len(processes)
        if ready:
            return
        await asyncio.sleep(0.1)  # poll interval of the readiness check
    raise RuntimeError("workers not ready after 60 s")


def _has_open(pid: int, path: str) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == path:
                    return True
    return False


class SentCounter:
    """Counts ``sent`` rows without taking SQLite's write lock (alertq's engine begins
    IMMEDIATE) and over one persistent PostgreSQL connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg: Any = None
        self._lite: sqlite3.Connection | None = None

    async def __aenter__(self) -> SentCounter:
        if self.url.startswith("sqlite"):
            self._lite = sqlite3.connect(make_url(self.url).database or "", timeout=30)
        else:
            self._pg = await asyncpg.connect(asyncpg_dsn(self.url))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._lite is not None:
            self._lite.close()
        if self._pg is not None:
            await self._pg.close()

    async def count(self) -> int:
        sql = "SELECT count(*) FROM costsim_alert_queue WHERE status = 'sent'"
        if self._lite is not None:
            return int(self._lite.execute(sql).fetchone()[0])
        return int(await self._pg.fetchval(sql))

    async def wait_for(self, n: int, deadline_s: float, interval: float = 0.1) -> None:
        deadline = time.monotonic() + deadline_s
        while (got := await self.count()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {n} rows sent after {deadline_s:.0f} s")
            await asyncio.sleep(interval)  # poll interval of the completion check


async def notify_workers(url: str) -> None:
    """Wake PostgreSQL workers as an enqueue would (no-op on SQLite: workers poll)."""
    if url.startswith("sqlite"):
        return
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("SELECT pg_notify('alertq_enqueued', '')")
    finally:
        await conn.close()


def stop_workers(processes: Sequence[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM every worker (graceful stop) and require exit code 0."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    wait_all(processes, timeout)


async def reset_queue(url: str) -> None:
    """Empty the queue table (and, on PostgreSQL, restart its id sequence)."""
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.begin() as conn:
            if url.startswith("sqlite"):
                await conn.execute(text("DELETE FROM costsim_alert_queue"))
            else:
                await conn.execute(text("TRUNCATE costsim_alert_queue RESTART IDENTITY"))
    finally:
        await engine.dispose()


async def scalar(url: str, sql: str) -> Any:
    """Run one read-only SQL statement through alertq's engine and return its scalar."""
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql))).scalar()
    finally:
        await engine.dispose()


async def row(url: str, sql: str) -> Sequence[Any]:
    """Run one read-only SQL statement and return its single row."""
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:
            return tuple((await conn.execute(text(sql))).one())
    finally:
        await engine.dispose()


def sent_span_sql(url: str) -> str:
    """SQL for (sent rows, first claim, last ``sent_at``), times as UNIX epoch seconds."""
    if url.startswith("sqlite"):
        epoch = "(julianday({}) - 2440587.5) * 86400.0"
    else:
        epoch = "extract(epoch FROM {})::float8"
    return (
        f"SELECT count(*), {epoch.format('min(last_attempt_at)')},"
        f" {epoch.format('max(sent_at)')} FROM costsim_alert_queue WHERE status = 'sent'"
    )


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Stub:
    """``bench/stub_server.py`` in its own process."""

    def __init__(self, *, record: bool = False) -> None:
        args = [sys.executable, str(BENCH_DIR / "stub_server.py"), "--port", "0"]
        if record:
            args.append("--record")
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            raise RuntimeError(f"stub did not start: {line!r}")
        self.url = f"http://127.0.0.1:{line[1]}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=30).json()
        return result

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Alertmanager:
    """A real Alertmanager (Debian ``prometheus-alertmanager``) on a free port, no gossip,
    with a receiver that sends nothing; like ``tests/support/alertmanager.py``."""

    def __init__(self) -> None:
        if not os.access(ALERTMANAGER_BIN, os.X_OK):
            raise FileNotFoundError(f"Alertmanager binary not found: {ALERTMANAGER_BIN}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="alertq-bench-am-"))
        config = self.dir / "alertmanager.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"resolve_timeout": "5m"},
                    "route": {"receiver": "default"},
                    "receivers": [{"name": "default"}],
                }
            )
        )
        self.log = (self.dir / "alertmanager.log").open("wb")
        self.process = subprocess.Popen(
            [
                ALERTMANAGER_BIN,
                f"--config.file={config}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("Alertmanager exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)  # readiness poll
        self.stop()
        raise RuntimeError("Alertmanager not ready after 30 s")

    def alerts(self, matcher: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v2/alerts", params={"filter": matcher}, timeout=60)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Alertmanager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_env(db_url: str, am_url: str, **extra: str) -> dict[str, str]:
    """The environment of an ``alertq worker`` child: alertq's defaults plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTQ_")}
    env["ALERTQ_DATABASE_URL"] = db_url
    env["ALERTQ_ALERTMANAGER_URLS"] = am_url
    env["ALERTQ_CONFIG_FILE"] = os.devnull
    env.update(extra)
    return env


def spawn_worker(
    db_url: str,
    am_url: str,
    *,
    drain: bool,
    log: Any,
    concurrency: int | None = None,
    wrap: Sequence[str] = (),
    **extra: str,
) -> subprocess.Popen[bytes]:
    """Start ``alertq worker [--drain]`` (optionally under ``wrap``, e.g. /usr/bin/time -v)."""
    args = [*wrap, sys.executable, "-m", "alertq", "worker"]
    if drain:
        args.append("--drain")
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    return subprocess.Popen(
        args, env=worker_env(db_url, am_url, **extra), stdout=log, stderr=subprocess.STDOUT
    )


def wait_all(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for every process; kill them all and raise if one is late or fails."""
    deadline = time.monotonic() + timeout
    try:
        for p in processes:
            code = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            if code != 0:
                raise RuntimeError(f"{p.args!r} exited with {code}")
    except BaseException:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise


# --------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0–100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


# --------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


@dataclass
class Report:
    """A benchmark's results: printed tables, plus ``<name>.json`` and ``<name>.md``."""

    name: str
    command: str
    out_dir: Path | None
    info: dict[str, Any] = field(default_factory=machine)
    sections: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        lines = [f"### {title}", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        self.add("\n".join(lines))

    def add(self, markdown: str) -> None:
        print("\n" + markdown + "\n", flush=True)
        self.sections.append(markdown)

    def save(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"name": self.name, "command": self.command, "machine": self.info, **self.data}
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        head = (
            f"## {self.name}\n\n`{self.command}`\n\n"
            f"{self.info['date']}, {self.info['cpus']} CPUs ({self.info['cpu']}), "
            f"Python {self.info['python']}, load average at start "
            f"{', '.join(f'{x:.2f}' for x in self.info['load_average_at_start'])}\n"
        )
        (self.out_dir / f"{self.name}.md").write_text(
            head + "\n" + "\n\n".join(self.sections) + "\n"
        )
        print(f"results: {self.out_dir / self.name}.json, .md")


def add_common_args(parser: Any, runs: int = 3) -> None:
    parser.add_argument("--runs", type=int, default=runs, help=f"repetitions (default {runs})")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="directory for <name>.json and <name>.md (default bench/results); '-' for none",
    )


def out_dir(value: Path) -> Path | None:
    return None if str(value) == "-" else value


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
