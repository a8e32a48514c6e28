"""Acceptance with a real Prometheus (the Debian package, 2.42): a rule that always fires,
``alerting.alertmanagers`` pointed at ``alertq run``, alertq delivering to a real
Alertmanager. With a 10-minute resend delay Prometheus does not re-send in the test's
window, so when the Alertmanager comes back after 90 s down (its memory lost), only
alertq's restart replay can make the alert active again: it must within 10 s."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.processes import alertq_env, start_alertq, wait_until

PROMETHEUS = "/usr/bin/prometheus"
DOWNTIME = 90.0  # the scenario's outage, not a synchronisation


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start Prometheus with an always-firing rule, alerting to the given URL."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} is not installed (Debian package prometheus)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(alertmanager_hostport: str) -> str:
        rules = tmp_path / "rules.yml"
        rules.write_text(
            json.dumps(
                {
                    "groups": [
                        {
                            "name": "relay",
                            "interval": "1s",
                            "rules": [
                                {
                                    "alert": "RelayAlwaysFiring",
                                    "expr": "vector(1)",
                                    # Prometheus drops a send made before its Alertmanager
                                    # discovery has a target (5-10 s after start here), and
                                    # would then wait the 10-minute resend delay.
                                    "for": "20s",
                                    "labels": {"severity": "page"},
                                    "annotations": {"summary": "fires forever"},
                                }
                            ],
                        }
                    ]
                }
            )
        )
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(
                {
                    "global": {"evaluation_interval": "1s", "scrape_interval": "15s"},
                    "rule_files": [str(rules)],
                    "alerting": {
                        "alertmanagers": [
                            {"static_configs": [{"targets": [alertmanager_hostport]}]}
                        ]
                    },
                }
            )
        )
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--rules.alert.resend-delay=10m",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=20)


def active(am: AlertmanagerProcess) -> bool:
    try:
        return bool(am.alerts(True, 'alertname="RelayAlwaysFiring"'))
    except httpx.HTTPError:
        return False


async def test_prometheus_alert_is_active_again_within_10s_of_alertmanager_return(
    db_url: str,
    tmp_path: Path,
    alertmanager_factory: Callable[..., AlertmanagerProcess],
    prometheus: Callable[[str], str],
) -> None:
    am = alertmanager_factory()
    port = free_port()
    env = alertq_env(
        db_url,
        am.url,
        http_addr=f"127.0.0.1:{port}",
        poll_interval=0.2,
        replay_interval=1,
        alertmanager_timeout=2,
        lease_seconds=5,
        backoff_base=0.5,
        backoff_cap=2,
    )
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        prometheus(f"127.0.0.1:{port}")
        await wait_until(
            lambda: asyncio.to_thread(active, am),
            within=60,
            message=lambda: "never active\n" + server.describe(),
        )
        await asyncio.to_thread(am.stop)
        await asyncio.sleep(DOWNTIME)
        await asyncio.to_thread(am.start)  # same port, empty memory (storage holds no alerts)
        back = time.monotonic()
        await wait_until(
            lambda: asyncio.to_thread(active, am),
            within=10,
            message=lambda: "not active again within 10 s\n" + server.describe(),
        )
        print(f"active again {time.monotonic() - back:.2f}s after Alertmanager returned")
        assert server.running, server.describe()
