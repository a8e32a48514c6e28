"""CPU per ``POST /api/v2/alerts`` through the ASGI app alone (no uvicorn, no worker).

One process builds the app as ``alertq run`` does (same settings, ``gc.freeze()``), then
calls it directly with pre-encoded 256-alert bodies, one at a time. It reports this
process's CPU per body (``time.process_time``) and the PostgreSQL backends' (utime +
stime of every backend of the database, ``/proc/<pid>/stat``), medians over rounds; the
queue is emptied between rounds, outside the timing.

Run it against two checkouts alternately, old first, for an A/B within one run::

    python bench/asgi_intake.py --ab /path/to/old/src /path/to/new/src --rounds 5

``--profile FILE`` writes a pyinstrument text profile of the timed part instead.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _body(run: str, first: int, size: int) -> bytes:
    sys.path.insert(0, str(HERE))
    from datetime import UTC, datetime

    from intake import make_alerts  # type: ignore[import-not-found]

    return json.dumps(make_alerts(run, first, size, datetime.now(UTC))).encode()


def _backend_ticks(pids: list[int]) -> int:
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks


async def _measure(db_url: str, bodies: int, rounds: int, size: int, profile: bool) -> str:
    os.environ["ALERTQ_DATABASE_URL"] = db_url
    os.environ["ALERTQ_ALERTMANAGER_URLS"] = "http://127.0.0.1:9"
    os.environ["ALERTQ_CONFIG_FILE"] = os.devnull
    import asyncpg

    from alertq.api import create_app
    from alertq.config import Settings
    from alertq.db import create_engine, create_session_factory
    from alertq.opsview import OpsContext

    settings = Settings()
    engine = create_engine(settings)
    context = OpsContext(settings, create_session_factory(engine))
    app = create_app(context)
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    run = f"x{os.getpid()}"
    work = [[_body(f"{run}r{r}", i * size, size) for i in range(bodies)] for r in range(rounds + 1)]

    async def post(body: bytes) -> int:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v2/alerts",
            "raw_path": b"/api/v2/alerts",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1:9093"),
                (b"user-agent", b"Alertmanager/bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 9093),
            "state": {},
        }
        sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    for body in work[0][:5]:  # warm up: connections, prepared statements, caches
        assert await post(body) == 200
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    py: list[float] = []
    pg: list[float] = []
    profiler = None
    for r in range(1, rounds + 1):
        await admin.execute("TRUNCATE costsim_alert_queue")
        pids = [
            p
            for (p,) in await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
        if profile and profiler is None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        cpu0, ticks0 = time.process_time(), _backend_ticks(pids)
        for body in work[r]:
            assert await post(body) == 200
        cpu1, ticks1 = time.process_time(), _backend_ticks(pids)
        py.append((cpu1 - cpu0) * 1000 / bodies)
        pg.append((ticks1 - ticks0) * 1000 / os.sysconf("SC_CLK_TCK") / bodies)
    text = ""
    if profiler is not None:
        profiler.stop()
        text = profiler.output_text()
    await admin.close()
    await engine.dispose()
    print(json.dumps({"py": py, "pg": pg}))
    return text


def _median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", help="a migrated database (default: a throw-away one)")
    parser.add_argument("--bodies", type=int, default=40, help="bodies per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--profile")
    parser.add_argument("--ab", nargs="+", help="src directories to alternate (PYTHONPATH)")
    parser.add_argument("--turns", type=int, default=3, help="with --ab: turns per checkout")
    ns = parser.parse_args()
    if ns.db is None:
        sys.path.insert(0, str(HERE))
        from _common import pg_database  # type: ignore[import-not-found]

        with pg_database() as url:
            ns.db = url
            _run(ns)
    else:
        _run(ns)


def _run(ns: argparse.Namespace) -> None:
    if not ns.ab:
        text = asyncio.run(_measure(ns.db, ns.bodies, ns.rounds, ns.size, bool(ns.profile)))
        if ns.profile:
            Path(ns.profile).write_text(text)
        return
    results: dict[str, dict[str, list[float]]] = {s: {"py": [], "pg": []} for s in ns.ab}
    for turn in range(ns.turns):
        for src in ns.ab if turn % 2 == 0 else list(reversed(ns.ab)):
            env = {**os.environ, "PYTHONPATH": src}
            args = [sys.executable, __file__, "--db", ns.db, "--bodies", str(ns.bodies)]
            args += ["--rounds", str(ns.rounds), "--size", str(ns.size)]
            out = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            for key in ("py", "pg"):
                results[src][key] += got[key]
            print(f"turn {turn} {src}: py {_median(got['py']):.2f} pg {_median(got['pg']):.2f}")
    for src, got in results.items():
        print(f"{src}: py {_median(got['py']):.2f} ms/body, pg {_median(got['pg']):.2f} ms/body")


if __name__ == "__main__":
    main()
