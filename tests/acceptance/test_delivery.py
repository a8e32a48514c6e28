"""The Alertmanager delivery adapter (alertq.delivery) against a fault-injecting stub and
against a real Alertmanager.

Split by test tier: these are the acceptance tests; see also ``tests/unit/test_delivery.py`` and
``tests/integration/test_delivery.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from alertq.delivery import (
    AlertmanagerClient,
    ErrorClass,
)
from tests.conftest import unavailable
from tests.support.alertmanager import AlertmanagerNotFound, AlertmanagerProcess


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[AlertmanagerProcess]:
    try:
        process = AlertmanagerProcess()
    except AlertmanagerNotFound as exc:
        unavailable("Alertmanager", str(exc))
    with process:
        yield process


def run_labels(**labels: str) -> dict[str, str]:
    """Labels unique to one test, so tests sharing an Alertmanager don't see each other."""
    return {"alertname": "AlertqDeliveryTest", "run": uuid.uuid4().hex, **labels}


@pytest.mark.alertmanager
async def test_real_alertmanager_stores_posted_alerts(alertmanager: AlertmanagerProcess) -> None:
    run = uuid.uuid4().hex
    alerts: list[dict[str, Any]] = [
        {
            "labels": {"alertname": "AlertqDeliveryTest", "run": run, "n": str(n)},
            "annotations": {"summary": f"alert {n}"},
        }
        for n in range(3)
    ]
    async with AlertmanagerClient([alertmanager.url]) as client:
        [health] = await client.check_ready()
        [result] = await client.post_alerts(alerts)

    assert health.ready
    assert result.ok, result
    assert result.status_code == 200
    stored = alertmanager.alerts(filter=f'run="{run}"')
    assert sorted(a["labels"]["n"] for a in stored) == ["0", "1", "2"]
    assert {json.dumps(a["labels"], sort_keys=True) for a in stored} == {
        json.dumps(a["labels"], sort_keys=True) for a in alerts
    }


@pytest.mark.alertmanager
@pytest.mark.parametrize(
    ("alert", "mentions"),
    [
        ({"labels": run_labels(**{"bad-name": "x"})}, "invalid name"),
        (
            {
                "labels": run_labels(),
                "startsAt": "2024-01-02T00:00:00Z",
                "endsAt": "2024-01-01T00:00:00Z",
            },
            "start time must be before end time",
        ),
    ],
    ids=["bad-label-name", "ends-before-start"],
)
async def test_real_alertmanager_rejection_is_permanent(
    alertmanager: AlertmanagerProcess, alert: dict[str, Any], mentions: str
) -> None:
    async with AlertmanagerClient([alertmanager.url]) as client:
        [result] = await client.post_alerts([alert])
    assert result.error_class is ErrorClass.PERMANENT
    assert result.status_code == 400
    assert mentions in result.response_text


@pytest.mark.alertmanager
async def test_real_alertmanager_keeps_valid_alerts_of_a_rejected_batch(
    alertmanager: AlertmanagerProcess,
) -> None:
    # A 400 does not mean nothing was stored: the valid alerts of the batch are kept.
    good = {"labels": run_labels(which="good")}
    bad = {"labels": run_labels(**{"which": "bad", "bad-name": "x"})}
    async with AlertmanagerClient([alertmanager.url]) as client:
        [result] = await client.post_alerts([good, bad])
    assert result.error_class is ErrorClass.PERMANENT
    stored = alertmanager.alerts(filter=f'run="{good["labels"]["run"]}"')
    assert [a["labels"] for a in stored] == [good["labels"]]


@pytest.mark.alertmanager
async def test_real_alertmanager_wrong_path_is_misconfigured(
    alertmanager: AlertmanagerProcess,
) -> None:
    async with AlertmanagerClient([alertmanager.url + "/no-such-prefix"]) as client:
        [result] = await client.post_alerts([{"labels": run_labels()}])
    assert result.error_class is ErrorClass.MISCONFIGURED
    assert result.status_code == 404
