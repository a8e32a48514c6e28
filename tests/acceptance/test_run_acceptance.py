"""Acceptance: ``alertq run`` as a child process on SQLite, driven over HTTP the way an
operator (and Prometheus, and a load balancer's probes) would.

Split by test tier: these are the acceptance tests; see also
``tests/unit/test_run_acceptance.py``.
"""

from __future__ import annotations

import base64
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.enqueue import enqueue_alert
from alertq.opsview import OpsContext
from alertq.runner import Collector
from tests.support import free_port
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.processes import (
    alertq_env,
    run_alertq_async,
    start_alertq,
    until_ready,
    wait_until,
)
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


TOKEN = "acceptance-token-5e3b9a"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample of a /metrics page by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def ops_client(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10)


@SQLITE_ONLY
async def test_run_serves_metrics_breakers_and_readiness_that_follows_alertmanager(
    db_url: str,
    tmp_path: Path,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
) -> None:
    am = alertmanager_factory()
    am.stop()  # down when alertq starts
    port = free_port()
    env = alertq_env(
        db_url,
        am.url,
        http_addr=f"127.0.0.1:{port}",
        api_token=TOKEN,
        stats_cache_seconds=1,
        poll_interval=0.2,
        alertmanager_timeout=2,
        lease_seconds=5,
        backoff_base=0.5,
        backoff_cap=1,
    )
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        async with ops_client(port) as client:
            await until_ready(server, str(client.base_url).rstrip("/"), "/healthz")
            # The newcomer's terminal: where the page is and where alerts go.
            assert f"http://127.0.0.1:{port}/" in server.stdout
            assert am.url in server.stdout

            async def not_ready_because_alertmanager_is_down() -> bool:
                response = await client.get("/readyz")
                assert response.status_code in (200, 503), response.text
                reasons = " ".join(response.json()["reasons"])
                return response.status_code == 503 and "connection refused" in reasons

            await wait_until(not_ready_because_alertmanager_is_down, within=30)
            down = await client.get("/readyz")
            assert down.status_code == 503 and down.json()["database"] == "ok"
            page = await client.get("/")
            assert "No Alertmanager is answering" in page.text

            before = scrape((await client.get("/metrics")).text)
            assert value(before, "alertq_breaker_open", breaker="acceptance") is None
            assert value(before, "alertq_open_incidents") == 0
            assert value(before, "alertq_queue_rows", status="pending") == 0
            assert value(before, "alertq_alertmanager_up", alertmanager=am.url) == 0

            trip = await client.post(
                "/api/breakers/acceptance/trip",
                json={"reason": "tripped by the acceptance test"},
                headers=AUTH,
            )
            assert trip.status_code == 200, trip.text
            assert trip.json()["open"] is True

            async def metrics_show_the_trip() -> bool:
                after = scrape((await client.get("/metrics")).text)
                return (
                    value(after, "alertq_breaker_open", breaker="acceptance") == 1
                    and value(after, "alertq_open_incidents") == 1
                    and value(after, "alertq_queue_rows", status="pending") == 1
                    and value(after, "alertq_ops_actions_total", action="breaker_trip") == 1
                )

            await wait_until(metrics_show_the_trip, within=15, message=server.describe)

            am.start()

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await wait_until(ready, within=30, message=server.describe)
            assert (await client.get("/readyz")).json()["reasons"] == []

            async def delivered() -> bool:
                after = scrape((await client.get("/metrics")).text)
                return (
                    value(after, "alertq_alertmanager_up", alertmanager=am.url) == 1
                    and value(after, "alertq_queue_rows", status="sent") == 1
                    and (value(after, "alertq_alerts_sent_total") or 0) >= 1
                )

            await wait_until(delivered, within=30, message=server.describe)
            active = am.alerts(active=True, filter='circuit_breaker="acceptance"')
            assert len(active) == 1, active

        server.send_signal(signal.SIGTERM)
        assert await server.wait_async(30) == 0, server.describe()
    assert "stopped" in server.stderr


@SQLITE_ONLY
async def test_logs_of_a_run_hold_no_credentials(
    db_url: str,
    session_factory: Factory,
    tmp_path: Path,
) -> None:
    password = "am-pa55-Zq9xv"
    url_password = "url-pa55-Kw7rt"
    basic = base64.b64encode(f"alertq:{password}".encode()).decode()
    url_basic = base64.b64encode(f"urluser:{url_password}".encode()).decode()
    secrets = [password, url_password, basic, url_basic, TOKEN]
    with StubAlertmanager() as plain, StubAlertmanager() as with_userinfo:
        # A hostile Alertmanager that echoes credentials back in its error text.
        with_userinfo.respond(500, f"denied: Basic {url_basic} ({url_password})")
        userinfo_url = with_userinfo.url.replace("http://", f"http://urluser:{url_password}@")
        port = free_port()
        env = alertq_env(
            db_url,
            plain.url,
            userinfo_url,
            http_addr=f"127.0.0.1:{port}",
            api_token=TOKEN,
            alertmanager_username="alertq",
            alertmanager_password=password,
            delivery_quorum="all",
            log_level="DEBUG",
            stats_cache_seconds=1,
            poll_interval=0.1,
            alertmanager_timeout=2,
            lease_seconds=5,
            backoff_base=0.2,
            backoff_cap=0.5,
        )
        with start_alertq(["run"], env, cwd=tmp_path) as server:
            async with ops_client(port) as client:
                await until_ready(server, str(client.base_url).rstrip("/"), "/healthz")
                async with transaction(session_factory) as s:
                    for i in range(3):
                        labels = {"alertname": f"Secretive{i}"}
                        await enqueue_alert(s, [{"labels": labels}], "disable")
                await wait_until(
                    lambda: with_userinfo.requests >= 2 and plain.requests >= 1,
                    within=30,
                    message=server.describe,
                )
                with_userinfo.respond(200)

                async def all_sent() -> bool:
                    stats = (await client.get("/api/stats")).json()
                    return bool(stats["sent"] == 3)

                await wait_until(all_sent, within=30, message=server.describe)
                # The ops API with the right token, a wrong one, and a trip.
                retried = await client.post("/api/alerts/retry-failed", headers=AUTH, json={})
                assert retried.status_code == 200
                wrong = {"Authorization": f"Bearer {TOKEN[::-1]}"}
                assert (
                    await client.post("/api/alerts/retry-failed", headers=wrong)
                ).status_code == 401
                tripped = await client.post(
                    "/api/breakers/secretive/trip", headers=AUTH, json={"reason": "log test"}
                )
                assert tripped.status_code == 200
                for path in ("/", "/metrics", "/readyz", "/api/stats", "/api/alerts"):
                    assert (await client.get(path)).status_code in (200, 503)
                page = (await client.get("/")).text
                metrics_text = (await client.get("/metrics")).text
            server.send_signal(signal.SIGTERM)
            assert await server.wait_async(30) == 0, server.describe()
        assert plain.received_headers[0]["authorization"] == f"Basic {basic}"
        assert with_userinfo.received_headers[0]["authorization"] == f"Basic {url_basic}"
    output: dict[str, Any] = {
        "stderr": server.stderr,
        "stdout": server.stdout,
        "status page": page,
        "metrics": metrics_text,
    }
    assert "delivered rows=" in output["stderr"]
    assert "error=HTTP 500: denied: Basic *** (***)" in output["stderr"]  # the echo, redacted
    assert with_userinfo.url in output["stdout"]  # the target is shown, without userinfo
    for where, text in output.items():
        for secret in secrets:
            assert secret not in text, f"a secret appears in the {where}"


@SQLITE_ONLY
async def test_sigterm_lets_the_in_flight_delivery_finish_and_be_recorded(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    with StubAlertmanager() as stub:
        stub.hang(2.0)  # answers 200 after 2 s
        port = free_port()
        env = alertq_env(db_url, stub.url, http_addr=f"127.0.0.1:{port}", poll_interval=0.1)
        with start_alertq(["run"], env, cwd=tmp_path) as server:
            async with ops_client(port) as client:
                await until_ready(server, str(client.base_url).rstrip("/"), "/healthz")
            async with transaction(session_factory) as s:
                row = await enqueue_alert(s, [{"labels": {"alertname": "InFlight"}}], "disable")
            await wait_until(lambda: stub.requests >= 1, within=30, message=server.describe)
            server.send_signal(signal.SIGTERM)
            assert await server.wait_async(30) == 0, server.describe()
    async with transaction(session_factory) as s:
        stored = await get_alert_driver(s).alerts_get(row.id)
        assert stored is not None and stored.status == "sent", server.describe()
    assert stub.requests == 1


@SQLITE_ONLY
async def test_a_busy_port_is_a_clear_error_not_a_traceback(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = alertq_env(db_url, "http://127.0.0.1:9", http_addr=f"127.0.0.1:{port}")
        finished = await run_alertq_async(["run"], env, cwd=tmp_path, within=30)
    assert finished.returncode == 2, finished.describe()
    assert f"cannot listen on 127.0.0.1:{port}" in finished.stderr
    assert "Traceback" not in finished.stderr


async def test_a_collector_round_refreshes_gauges_samples_health_and_ttl_recovery(
    db_url: str, session_factory: Factory
) -> None:
    now = [datetime.now(UTC)]
    with StubAlertmanager() as stub:
        settings = Settings(database_url=db_url, alertmanager_urls=[stub.url])
        breaker = CircuitBreaker(settings, session_factory, clock=lambda: now[0])
        context = OpsContext(settings, session_factory, breaker=breaker, clock=lambda: now[0])
        await breaker.disable("ttl", "for a minute", "test", now[0] + timedelta(minutes=1))
        probe = AlertmanagerClient.from_settings(settings)
        try:
            collector = Collector(context, probe, interval=5)
            await collector.run_once()
            first = context.samples[-1]
            assert (first.pending, len(context.samples)) == (1, 1)  # the firing alert
            assert context.health[stub.url].ready is True
            assert REGISTRY.get_sample_value("alertq_queue_rows", {"status": "pending"}) == 1
            assert REGISTRY.get_sample_value("alertq_breaker_open", {"breaker": "ttl"}) == 1
            now[0] += timedelta(minutes=2)  # the disable TTL runs out
            await collector.run_once()
        finally:
            await probe.aclose()
    state = await breaker.get_state("ttl")
    assert state is not None and not state.disabled
    assert [i.resolved_by for i in await breaker.list_incidents(include_resolved=True)] == ["ttl"]
    assert len(context.samples) == 2
