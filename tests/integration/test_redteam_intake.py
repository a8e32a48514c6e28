"""Findings of the red-team pass on the relay intake (issue 11 on top of issue 9): each
test failed on main before its fix.

Split by test tier: these are the integration tests; see also
``tests/unit/test_redteam_intake.py`` and ``tests/acceptance/test_redteam_intake.py``.
"""

from __future__ import annotations

import pytest
from starlette.types import Message, Scope

from alertq.api import create_app
from alertq.db import create_engine, create_session_factory
from alertq.managed import ManagedAlerts
from alertq.opsview import OpsContext
from tests.integration.test_relay_api import alert, relay, relay_settings


async def test_a_body_with_more_alerts_than_the_limit_is_refused_before_any_is_parsed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One 4 MiB body of 165,586 tiny alerts took 44 s and froze the whole server (the
    # probes answered after 22 s): parsing ran on the event loop with no count limit.
    monkeypatch.setenv("ALERTQ_INTAKE_MAX_ALERTS", "50")
    settings = relay_settings(db_url)
    assert settings.intake_max_alerts == 50
    async with relay(settings) as r:
        too_many = [alert(f"a{i}") for i in range(51)]
        answer = await r.post(too_many)
        assert answer.status_code == 413
        assert answer.json()["code"] == 413
        assert "ALERTQ_INTAKE_MAX_ALERTS" in answer.json()["message"]
        assert await r.rows() == []
        assert (await r.post(too_many[:50])).status_code == 200
        assert len(await r.rows()) == 50


async def test_a_sender_that_disconnects_mid_body_raises_nothing(db_url: str) -> None:
    # ClientDisconnect escaped the intake route: uvicorn logged "Exception in ASGI
    # application" with a full traceback for every sender that dropped mid-body.
    settings = relay_settings(db_url)
    engine = create_engine(settings)
    app = create_app(OpsContext(settings, create_session_factory(engine)))
    messages: list[Message] = [
        {"type": "http.request", "body": b'[{"labels":', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v2/alerts",
        "raw_path": b"/api/v2/alerts",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"relay"), (b"content-type", b"application/json")],
        "client": ("192.0.2.7", 5000),
        "server": ("relay", 80),
    }
    try:
        await app(scope, receive, send)
        async with relay(settings) as r:
            assert await r.rows() == []
    finally:
        await engine.dispose()
    assert sent and sent[0]["status"] != 500


async def test_a_relayed_alert_never_retires_a_managed_alerts_row(db_url: str) -> None:
    # Red-team pass 4: an unauthenticated POST /api/v2/alerts with a managed alert's labels
    # (readable at /api/managed) superseded its pending row during an Alertmanager outage,
    # and keep-alive then waited on the superseded row for good: the alert was never sent.
    settings = relay_settings(db_url)
    async with relay(settings) as r:
        alerts = ManagedAlerts(settings, r.factory)
        labels = {"alertname": "Victim", "severity": "critical"}
        await alerts.fire(labels)
        (managed_row,) = await r.rows()
        assert (await r.post([{"labels": labels}])).status_code == 200
        assert (await r.post([{"labels": labels}])).status_code == 200  # and again
        by_type: dict[str, list[str]] = {}
        for row in await r.rows():
            by_type.setdefault(row.alert_type, []).append(row.status)
    assert by_type[managed_row.alert_type] == ["pending"]
    assert by_type["relay"] == ["superseded", "pending"]  # relayed rows retire each other
