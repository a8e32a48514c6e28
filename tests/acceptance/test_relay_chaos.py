"""Nothing lost while Alertmanager is away: the relay under faults.

Four senders POST alerts at 200 alerts/s through ``/api/v2/alerts`` to two ``alertq run``
instances on one PostgreSQL (each batch to both, as Prometheus does with an HA pair).
Meanwhile: each instance is ``kill -9``-ed and started again, the Alertmanager is restarted
with its memory wiped, and PostgreSQL is restarted. Then: every alert that got a 200 from
either instance must be listed by the Alertmanager (``lost=0``), and no row may stay
pending (``stuck=0``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support import free_port
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.pgcluster import PostgresCluster, PostgresNotFound
from tests.support.processes import (
    AlertqProcess,
    alertq_env,
    run_alertq_async,
    start_alertq,
    until_ready,
    wait_until,
)

SENDERS = 4
BATCH = 5
PERIOD = 0.1  # each sender: BATCH alerts every PERIOD s -> 200 alerts/s in total
DURATION = 30.0


@pytest.mark.slow
async def test_relay_loses_no_acknowledged_alert_through_kills_and_restarts(
    tmp_path: Path, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    try:
        cluster = PostgresCluster()
    except PostgresNotFound as exc:
        pytest.fail(str(exc))
    with cluster as pg:
        am = alertmanager_factory()
        ports = [free_port(), free_port()]
        envs = [
            alertq_env(
                pg.url,
                am.url,
                http_addr=f"127.0.0.1:{port}",
                poll_interval=0.2,
                replay_interval=1,
                alertmanager_timeout=2,
                lease_seconds=5,
                backoff_base=0.2,
                backoff_cap=1,
                log_level="WARNING",
            )
            for port in ports
        ]
        migrated = await run_alertq_async(["db", "upgrade"], envs[0], cwd=tmp_path)
        assert migrated.returncode == 0, migrated.describe()
        dirs = [tmp_path / "a", tmp_path / "b"]
        for d in dirs:
            d.mkdir()
        servers: list[AlertqProcess] = [
            start_alertq(["run"], env, cwd=d) for env, d in zip(envs, dirs, strict=True)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        try:
            for server, url in zip(servers, urls, strict=True):
                await until_ready(server, url)

            acked: set[int] = set()
            sent = itertools.count()
            stop = asyncio.Event()
            ends = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")

            async def send_batch(client: httpx.AsyncClient, seqs: list[int]) -> None:
                body = [
                    {"labels": {"alertname": "RelayChaos", "seq": str(s)}, "endsAt": ends}
                    for s in seqs
                ]

                async def post(url: str) -> bool:
                    try:
                        response = await client.post(f"{url}/api/v2/alerts", json=body)
                    except httpx.HTTPError:
                        return False
                    return response.status_code == 200

                if any(await asyncio.gather(*(post(u) for u in urls))):
                    acked.update(seqs)

            async def sender(client: httpx.AsyncClient) -> None:
                # Each batch in its own task, so a slow answer never lowers the rate.
                batches: list[asyncio.Task[None]] = []
                tick = time.monotonic()
                while not stop.is_set():
                    seqs = [next(sent) for _ in range(BATCH)]
                    batches.append(asyncio.create_task(send_batch(client, seqs)))
                    tick += PERIOD
                    # The send rate, not a synchronisation: the next batch is due at `tick`.
                    await asyncio.sleep(max(0.0, tick - time.monotonic()))
                await asyncio.gather(*batches)

            async def faults() -> None:
                # The scenario's schedule: each step waits its turn, then breaks something.
                await asyncio.sleep(4)
                servers[0].kill9()
                await asyncio.sleep(3)
                servers[0] = start_alertq(["run"], envs[0], cwd=dirs[0])
                await asyncio.sleep(3)
                await asyncio.to_thread(am.restart, True)  # Alertmanager forgets everything
                await asyncio.sleep(5)
                await asyncio.to_thread(pg.restart)
                await asyncio.sleep(5)
                servers[1].kill9()
                await asyncio.sleep(3)
                servers[1] = start_alertq(["run"], envs[1], cwd=dirs[1])

            async with httpx.AsyncClient(trust_env=False, timeout=3) as client:
                tasks = [asyncio.create_task(sender(client)) for _ in range(SENDERS)]
                started = time.monotonic()
                await faults()
                await asyncio.sleep(max(0.0, DURATION - (time.monotonic() - started)))
                stop.set()
                await asyncio.gather(*tasks)
                elapsed = time.monotonic() - started
            total = next(sent)
            assert len(acked) > total // 2, (len(acked), total)  # the senders really got through

            listed: set[int] = set()

            async def every_acked_alert_listed() -> bool:
                alerts = await asyncio.to_thread(am.alerts, None, 'alertname="RelayChaos"')
                listed.clear()
                listed.update(int(a["labels"]["seq"]) for a in alerts)
                return acked <= listed

            await wait_until(
                every_acked_alert_listed,
                within=90,
                message=lambda: f"lost={len(acked - listed)} of {len(acked)} acknowledged",
            )
            dsn = pg.url.replace("postgresql+asyncpg", "postgresql")
            conn = await asyncpg.connect(dsn)
            try:

                async def nothing_pending() -> bool:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM costsim_alert_queue WHERE status = 'pending'"
                    )
                    return int(n) == 0

                await wait_until(nothing_pending, within=60, message="rows stuck pending")
                failed = await conn.fetchval(
                    "SELECT count(*) FROM costsim_alert_queue WHERE status = 'failed'"
                )
            finally:
                await conn.close()
            for server in servers:
                assert server.running, server.describe()
            print(
                f"lost=0 stuck=0 acknowledged={len(acked)} sent_by_senders={total} "
                f"rate={total / elapsed:.0f}/s failed_rows={failed}"
            )
        finally:
            for server in servers:
                server.__exit__(None, None, None)
