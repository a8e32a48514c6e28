"""Issue 9, finding 1: an empty or blank ALERTQ_API_TOKEN means mutations are off
everywhere (the check, the banner, the start-up line and the status page read one
function), and finding 2's first half: the token is checked before the body is read.

Split by test tier: these are the integration tests; see also
``tests/acceptance/test_security_auth.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import transaction
from alertq.driver import get_alert_driver
from alertq.enqueue import enqueue_alert
from alertq.opsview import OpsContext
from tests.support import free_port

Factory = async_sessionmaker[AsyncSession]


TOKEN = "sec-token-0d15ea5e"


MUTATIONS: list[tuple[str, dict[str, Any] | None]] = [
    ("/api/alerts/purge", {"older_than": "1s", "statuses": ["superseded", "failed", "sent"]}),
    ("/api/alerts/retry-failed", {}),
    ("/api/alerts/1/retry", None),
    ("/api/breakers/held/trip", {"reason": "anyone may trip"}),
    ("/api/breakers/held/reset", {"reason": "anyone may reset"}),
]


def env_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings read the way the service reads them: from ``ALERTQ_*`` variables only."""
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", "/nonexistent/alertq.toml")
    monkeypatch.setenv("ALERTQ_STATS_CACHE_SECONDS", "0")
    monkeypatch.setenv("ALERTQ_ALERTMANAGER_URLS", f"http://127.0.0.1:{free_port()}")
    for name, value in env.items():
        monkeypatch.setenv(f"ALERTQ_{name.upper()}", value)
    return Settings()


@asynccontextmanager
async def serve(settings: Settings, factory: Factory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(OpsContext(settings, factory)))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def seed(factory: Factory, settings: Settings) -> None:
    """Rows the purge would delete (two superseded), and an open breaker a reset would
    close."""
    old = datetime.now(UTC) - timedelta(hours=1)
    async with transaction(factory) as s:
        for name in ("A", "A", "B", "B"):
            await enqueue_alert(s, [{"labels": {"alertname": name}}], "disable", now=old)
    await CircuitBreaker(settings, factory).disable("held", "kept open", "test")


async def row_count(factory: Factory) -> int:
    async with transaction(factory) as s:
        return len(await get_alert_driver(s).alerts_list(limit=1000))


@pytest.mark.parametrize("token", ["", "   ", "\t\n"], ids=["empty", "blank", "whitespace"])
async def test_an_empty_or_blank_token_turns_every_mutation_off(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    settings = env_settings(monkeypatch, database_url=db_url, api_token=token)
    assert not settings.mutations_enabled
    await seed(session_factory, settings)
    rows_before = await row_count(session_factory)
    headers_tried: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {token}"},
    ]
    async with serve(settings, session_factory) as client:
        for path, body in MUTATIONS:
            for headers in headers_tried:
                response = await client.post(path, json=body, headers=headers)
                assert response.status_code == 403, (path, headers, response.text)
                assert "ALERTQ_API_TOKEN" in response.json()["detail"]
        page = (await client.get("/")).text
    assert await row_count(session_factory) == rows_before
    state = await CircuitBreaker(settings, session_factory).get_state("held")
    assert state is not None and state.disabled
    assert "mutations are off" in page


async def test_a_real_token_works_and_a_wrong_one_is_401(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = env_settings(monkeypatch, database_url=db_url, api_token=TOKEN)
    await seed(session_factory, settings)
    rows_before = await row_count(session_factory)
    purge = MUTATIONS[0]
    async with serve(settings, session_factory) as client:
        for wrong in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            response = await client.post(purge[0], json=purge[1], headers=wrong)
            assert response.status_code == 401, (wrong, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        assert await row_count(session_factory) == rows_before
        response = await client.post(
            purge[0], json=purge[1], headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["deleted"] == 2
        page = (await client.get("/")).text
    assert "mutations are off" not in page


async def test_the_token_is_checked_before_the_body_is_parsed(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that is not even JSON gets 401/403, not a 422 that shows it was parsed."""
    for token, expected in ((TOKEN, 401), ("", 403)):
        settings = env_settings(monkeypatch, database_url=db_url, api_token=token)
        async with serve(settings, session_factory) as client:
            for path, _ in MUTATIONS:
                response = await client.post(
                    path, content=b"{not json", headers={"Content-Type": "application/json"}
                )
                assert response.status_code == expected, (path, response.text)
    # Repeated headers: the guard judges the first, as the routes do, so a wrong token
    # followed by the right one cannot slip past it to the body parser.
    settings = env_settings(monkeypatch, database_url=db_url, api_token=TOKEN)
    async with serve(settings, session_factory) as client:
        for path, _ in MUTATIONS:
            response = await client.post(
                path,
                content=b"{not json",
                headers=[
                    ("Content-Type", "application/json"),
                    ("Authorization", "Bearer wrong"),
                    ("Authorization", f"Bearer {TOKEN}"),
                ],
            )
            assert response.status_code == 401, (path, response.text)
