"""Acceptance: ``alertq run`` as a child process is an Alertmanager for real senders.

amtool (from the Debian ``prometheus-alertmanager`` package) adds an alert through alertq
and it reaches a real Alertmanager; amtool reads alertq's ``/api/v2/status``; the intake
over TLS with basic auth takes amtool's credentials and refuses a sender without them."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import free_port
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.processes import (
    alertq_env,
    run_alertq_async,
    start_alertq,
    until_ready,
    wait_until,
)

AMTOOL = "/usr/bin/amtool"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(AMTOOL) is None:
        pytest.fail("amtool is not installed (Debian package prometheus-alertmanager)")
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30)


async def until_listed(am: AlertmanagerProcess, matcher: str, within: float = 20) -> list[dict]:
    found: list[dict] = []

    async def listed() -> bool:
        found[:] = await asyncio.to_thread(am.alerts, None, matcher)
        return bool(found)

    await wait_until(listed, within=within, message=f"{matcher} not listed by Alertmanager")
    return found


async def test_amtool_alert_add_through_alertq_reaches_alertmanager(
    db_url: str, tmp_path: Path, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    am = alertmanager_factory()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = alertq_env(db_url, am.url, http_addr=f"127.0.0.1:{port}", poll_interval=0.2)
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        added = amtool(
            "alert",
            "add",
            "RelayAmtool",
            "node=n1",
            "--annotation=summary=through alertq",
            f"--alertmanager.url={url}",
        )
        assert added.returncode == 0, added.stderr
        alerts = await until_listed(am, 'alertname="RelayAmtool"')
        assert alerts[0]["labels"] == {"alertname": "RelayAmtool", "node": "n1"}
        assert alerts[0]["annotations"] == {"summary": "through alertq"}

        # amtool reads /api/v2/status (cluster show prints its cluster block).
        shown = amtool("cluster", "show", f"--alertmanager.url={url}")
        assert shown.returncode == 0, shown.stderr
        assert "Cluster Status:  disabled" in shown.stdout
        # What alertq does not serve fails plainly (docs/relay.md says so).
        query = amtool("alert", "query", f"--alertmanager.url={url}")
        assert query.returncode != 0


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_tls_intake_with_basic_auth_takes_amtool_and_refuses_strangers(
    db_url: str, tmp_path: Path, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    am = alertmanager_factory()
    cert, key = _self_signed(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = alertq_env(
        db_url,
        am.url,
        http_addr=f"127.0.0.1:{port}",
        poll_interval=0.2,
        tls_cert_file=cert,
        tls_key_file=key,
        intake_username="prometheus",
        intake_password="relay-pw-51",
    )
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url, verify=ssl.create_default_context(cafile=str(cert)))
        assert "https://127.0.0.1" in server.stdout  # the banner names the scheme
        http_config = tmp_path / "http.yml"
        http_config.write_text(
            json.dumps(
                {
                    "basic_auth": {"username": "prometheus", "password": "relay-pw-51"},
                    "tls_config": {"ca_file": str(cert)},
                }
            )
        )
        added = amtool(
            "alert",
            "add",
            "RelayTls",
            f"--alertmanager.url={url}",
            f"--http.config.file={http_config}",
        )
        assert added.returncode == 0, added.stderr
        await until_listed(am, 'alertname="RelayTls"')

        async with httpx.AsyncClient(
            verify=ssl.create_default_context(cafile=str(cert)), trust_env=False
        ) as client:
            stranger = await client.post(
                f"{url}/api/v2/alerts", json=[{"labels": {"alertname": "Stranger"}}]
            )
        assert stranger.status_code == 401
        assert "relay-pw-51" not in server.stdout + server.stderr


async def test_stats_shows_relay_intake_per_source(
    db_url: str, tmp_path: Path, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    am = alertmanager_factory()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = alertq_env(db_url, am.url, http_addr=f"127.0.0.1:{port}")
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        async with httpx.AsyncClient(trust_env=False) as client:
            response = await client.post(
                f"{url}/api/v2/alerts",
                json=[{"labels": {"alertname": "Src", "i": str(i)}} for i in range(3)],
                headers={"User-Agent": "vmalert/1.93"},
            )
        assert response.status_code == 200
    result = await run_alertq_async(["stats", "--json"], env, cwd=tmp_path)
    assert result.returncode == 0, result.describe()
    sources = json.loads(result.stdout)["intake_sources"]
    assert [(s["addr"], s["agent"], s["rows"]) for s in sources] == [
        ("127.0.0.1", "vmalert/1.93", 3)
    ]
    table = await run_alertq_async(["stats"], env, cwd=tmp_path)
    assert "relay intake by source" in table.stdout and "vmalert/1.93" in table.stdout


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_two_alertq_on_one_postgres_take_the_same_alerts_as_ha_replicas(
    db_url: str, tmp_path: Path, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    """A sender lists both instances (as Alertmanager HA) and posts every batch to each:
    Alertmanager lists every alert once, and the duplicate rows cost at most one extra
    delivery per alert (printed: alerts Alertmanager received per alert sent)."""
    am = alertmanager_factory()
    ports = [free_port(), free_port()]
    servers = []
    try:
        for i, port in enumerate(ports):
            env = alertq_env(db_url, am.url, http_addr=f"127.0.0.1:{port}", poll_interval=0.2)
            (tmp_path / f"i{i}").mkdir()
            servers.append(start_alertq(["run"], env, cwd=tmp_path / f"i{i}"))
        for server, port in zip(servers, ports, strict=True):
            await until_ready(server, f"http://127.0.0.1:{port}")
        alerts = [{"labels": {"alertname": "Ha", "n": str(i)}} for i in range(200)]
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            for port in ports:  # as Prometheus does: the same batch to every "Alertmanager"
                response = await client.post(f"http://127.0.0.1:{port}/api/v2/alerts", json=alerts)
                assert response.status_code == 200, response.text

        async def all_listed() -> bool:
            return len(await asyncio.to_thread(am.alerts, None, 'alertname="Ha"')) == 200

        await wait_until(all_listed, within=30, message="not every alert listed")
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            text = (await client.get(f"{am.url}/metrics")).text
        received = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("alertmanager_alerts_received_total{")
        )
        assert 200 <= received <= 400
        print(f"HA duplicates: Alertmanager received {received / 200:.2f} alerts per alert")
    finally:
        for server in servers:
            server.__exit__(None, None, None)
