"""Logs of ``alertq run``: one line per delivery outcome with row ids, target, status and
duration; JSON lines with ``ALERTQ_LOG_FORMAT=json``, readable text by default; no
payload bodies at INFO."""

from __future__ import annotations

import json
import re
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.db import transaction
from alertq.enqueue import enqueue_alert
from tests.support import free_port
from tests.support.processes import AlertqProcess, alertq_env, start_alertq, wait_until
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BODY_MARKER = "payload-body-marker-4d1f"
OUTCOME = re.compile(
    r"rows=(?P<rows>[\d,-]+) target=(?P<target>\S+) status=(?P<status>\S+)"
    r".* duration_ms=(?P<ms>[\d.]+)"
)
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


def expand(rows: str) -> list[int]:
    """``"1-3,7"`` → ``[1, 2, 3, 7]``."""
    out: list[int] = []
    for part in rows.split(","):
        first, _, last = part.partition("-")
        out += range(int(first), int(last or first) + 1)
    return out


async def run_and_deliver(
    db_url: str, factory: Factory, tmp_path: Path, **settings: Any
) -> tuple[AlertqProcess, str, str, list[int]]:
    """``alertq run`` delivering 5 rows to a stub while a second target is down; stops it
    with SIGTERM and returns the process, both target keys and the row ids."""
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    with StubAlertmanager() as stub:
        env = alertq_env(
            db_url,
            stub.url,
            dead,
            http_addr=f"127.0.0.1:{port}",
            poll_interval=0.1,
            alertmanager_timeout=2,
            lease_seconds=5,
            **settings,
        )
        with start_alertq(["run"], env, cwd=tmp_path) as server:
            async with transaction(factory) as s:
                ids = [
                    (
                        await enqueue_alert(
                            s,
                            [
                                {
                                    "labels": {"alertname": f"Log{i}"},
                                    "annotations": {"x": BODY_MARKER},
                                }
                            ],
                            "disable",
                        )
                    ).id
                    for i in range(5)
                ]
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10
            ) as client:

                async def all_sent() -> bool:
                    assert server.running, server.describe()
                    try:
                        response = await client.get("/api/stats")
                    except httpx.TransportError:
                        return False
                    return response.status_code == 200 and response.json()["sent"] == 5

                await wait_until(all_sent, within=30, message=server.describe)
            server.send_signal(signal.SIGTERM)
            assert await server.wait_async(30) == 0, server.describe()
        return server, stub.url, dead, ids


@SQLITE_ONLY
async def test_json_logs_parse_line_by_line_with_one_line_per_delivery_outcome(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    server, target, dead, ids = await run_and_deliver(
        db_url, session_factory, tmp_path, log_format="json"
    )
    lines = server.stderr.splitlines()
    assert lines, server.describe()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "name", "message"} <= r.keys() for r in records)

    delivered: Counter[int] = Counter()
    failed_to_dead = 0
    for r in records:
        found = OUTCOME.search(r["message"])
        if r["name"] != "alertq.engine" or found is None:
            continue
        assert float(found["ms"]) >= 0
        if found["target"] == target:
            assert (r["level"], found["status"]) == ("INFO", "200")
            assert r["message"].startswith("delivered ")
            delivered.update(expand(found["rows"]))
        else:
            assert found["target"] == dead and r["level"] == "WARNING"
            assert "connection refused" in r["message"]
            failed_to_dead += 1
    assert delivered == Counter(ids), "each row's delivery is logged exactly once"
    assert failed_to_dead >= 1
    banner = [r for r in records if "status_page" in r]
    assert banner and banner[0]["alertmanagers"] == [target, dead]
    info = [r["message"] for r in records if r["level"] == "INFO"]
    assert not any(BODY_MARKER in m for m in info), "payload bodies are not logged at INFO"


@SQLITE_ONLY
async def test_text_logs_are_readable_lines_by_default(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    server, target, _, ids = await run_and_deliver(db_url, session_factory, tmp_path)
    lines = server.stderr.splitlines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), server.stderr[-2000:]
    delivered = [line for line in lines if "INFO    alertq.engine: delivered rows=" in line]
    rows = [i for line in delivered for i in expand(OUTCOME.search(line)["rows"])]  # type: ignore[index]
    assert sorted(rows) == ids
    assert all(f"target={target} status=200 duration_ms=" in line for line in delivered)
    assert "status page" in server.stdout and target in server.stdout
    assert BODY_MARKER not in server.stderr
