"""Compatibility, differential: every body of the corpus is POSTed to a real Alertmanager
0.25 and to alertq's ``POST /api/v2/alerts`` (the app in-process, a worker delivering to a
second real Alertmanager). Same status code for each body, and the same set of alerts
stored, where stored means what each Alertmanager lists afterwards. On SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from alertq.api import create_app
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.engine import AlertWorker
from alertq.intake import check_storable
from alertq.models import CostSimAlertQueueModel
from alertq.opsview import OpsContext
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.relay_corpus import CASES, DELIBERATE

JSON = {"Content-Type": "application/json"}
TIME_TOLERANCE = 60.0  # seconds: unset startsAt/endsAt are "now" on each side


def relay_settings(db_url: str, target: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [target],
        "stats_cache_seconds": 0,
        "alertmanager_timeout": 5.0,
        "lease_seconds": 10.0,
        "concurrency": 1,
    }
    values.update(overrides)
    return Settings(**values)


def shape(status: int, body: bytes) -> Any:
    """What a sender can tell apart in an answer: the status, and for errors the body's
    form (Alertmanager's ``{"code": ...}`` object or a JSON string)."""
    if status == 200:
        return (200, body)
    value = json.loads(body)
    if isinstance(value, dict):
        return (status, "object", value.get("code"))
    return (status, type(value).__name__)


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def listing(url: str) -> dict[frozenset[tuple[str, str]], dict[str, Any]]:
    response = httpx.get(f"{url}/api/v2/alerts", timeout=10, trust_env=False)
    response.raise_for_status()
    return {frozenset(a["labels"].items()): a for a in response.json()}


def assert_same_alert(expected: dict[str, Any], got: dict[str, Any]) -> None:
    assert got["annotations"] == expected["annotations"], expected["labels"]
    assert got.get("generatorURL") == expected.get("generatorURL"), expected["labels"]
    for key in ("startsAt", "endsAt"):
        gap = abs(_when(got[key]) - _when(expected[key]))
        assert gap < TIME_TOLERANCE, (expected["labels"], key, expected[key], got[key])


@pytest.mark.parametrize("db_url", ["sqlite", "postgres"], indirect=True)
async def test_corpus_answers_and_stores_what_alertmanager_does(
    db_url: str, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    assert len(CASES) >= 60
    reference = alertmanager_factory()
    target = alertmanager_factory()
    settings = relay_settings(db_url, target.url)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    app = create_app(OpsContext(settings, factory))
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as relay,
            httpx.AsyncClient(base_url=reference.url, trust_env=False, timeout=10) as am,
        ):
            mismatches = []
            for name, body in CASES:
                want = await am.post("/api/v2/alerts", content=body, headers=JSON)
                got = await relay.post("/api/v2/alerts", content=body, headers=JSON)
                if shape(want.status_code, want.content) != shape(got.status_code, got.content):
                    mismatches.append(
                        (name, want.status_code, want.text[:200], got.status_code, got.text[:200])
                    )
            assert not mismatches, "\n".join(map(str, mismatches))

            # Deliberate differences: refused (400) by alertq, the neighbours still stored.
            for name, body in DELIBERATE.items():
                got = await relay.post("/api/v2/alerts", content=body, headers=JSON)
                assert got.status_code == 400, (name, got.text)
                assert "refused by alertq" in got.json(), (name, got.text)

        async with transaction(factory) as session:
            rows = (await session.scalars(select(CostSimAlertQueueModel))).all()
        for row in rows:
            assert row.alert_type == "relay"
            assert len(row.payload) == 1
            check_storable(row.payload[0])  # alerts.py's rules, bar alertq's two extras
            assert row.source_addr == "10.1.2.3"

        await AlertWorker(settings, factory).run(asyncio.Event(), drain=True)
    finally:
        await engine.dispose()

    want_alerts = listing(reference.url)
    got_alerts = listing(target.url)
    # The neighbour of the NUL alert was stored by alertq only; that is the one extra.
    nul_neighbour = frozenset({("alertname", "Corpus"), ("case", "nul_neighbour")})
    assert nul_neighbour in got_alerts
    del got_alerts[nul_neighbour]
    missing = set(want_alerts) - set(got_alerts)
    extra = set(got_alerts) - set(want_alerts)
    assert not missing and not extra, (sorted(map(sorted, missing)), sorted(map(sorted, extra)))
    assert len(want_alerts) > 300  # the 300-alert body and the others are really listed
    for labels, expected in want_alerts.items():
        assert_same_alert(expected, got_alerts[labels])


# (method, path, body): Alertmanager's API router ignores one trailing slash; Go's mux
# redirects a doubled slash and a trailing slash on /-/ paths (301, relative Location).
SLASH_CASES = [
    ("POST", "/api/v2/alerts/", b'[{"labels":{"alertname":"Slash","case":"one"}}]'),
    ("POST", "/api/v2/alerts", b'[{"labels":{"alertname":"Slash","case":"none"}}]'),
    ("GET", "/api/v2/status/", None),
    ("POST", "/api/v2/alerts//", b'[{"labels":{"alertname":"Slash","case":"two"}}]'),
    ("GET", "/-/ready/", None),
    ("GET", "/-/healthy/", None),
]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_trailing_slashes_are_routed_as_alertmanager_does_and_never_redirect_to_the_host(
    db_url: str, alertmanager_factory: Callable[..., AlertmanagerProcess]
) -> None:
    """Where Alertmanager answers 2xx, alertq answers the same and stores the alert; where
    it does not, alertq refuses (404/405) and stores nothing. alertq never redirects: the
    Location of Starlette's trailing-slash redirect was built from the Host header."""
    reference = alertmanager_factory()
    # Any Host, as Alertmanager answers: the loopback-only Host check is a deliberate
    # difference (docs/relay.md), tested on its own.
    settings = relay_settings(db_url, "http://127.0.0.1:9").model_copy(
        update={"allowed_hosts": ["*"]}
    )
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    app = create_app(OpsContext(settings, factory))
    transport = httpx.ASGITransport(app=app)
    headers = {**JSON, "Host": "evil.example"}
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as relay,
            httpx.AsyncClient(base_url=reference.url, trust_env=False, timeout=10) as am,
        ):
            stored = set()
            for method, path, body in SLASH_CASES:
                want = await am.request(method, path, content=body, headers=headers)
                got = await relay.request(method, path, content=body, headers=headers)
                assert "location" not in got.headers, (path, got.headers)
                if want.is_success:
                    assert got.status_code == want.status_code, (path, got.text)
                    if body is not None:
                        stored.add(json.loads(body)[0]["labels"]["case"])
                else:
                    assert got.status_code in (404, 405), (path, want.status_code, got.text)
        async with transaction(factory) as session:
            rows = (await session.scalars(select(CostSimAlertQueueModel))).all()
        assert {row.payload[0]["labels"]["case"] for row in rows} == stored == {"one", "none"}
        assert "Slash" in {a["labels"]["alertname"] for a in listing(reference.url).values()}
    finally:
        await engine.dispose()
