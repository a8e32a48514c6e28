"""Issue 9, finding 8: the audit actor cannot be spoofed with X-Forwarded-For unless the
peer is in ALERTQ_TRUSTED_PROXIES, and a message cannot forge a text log line.

Split by test tier: these are the integration tests; see also
``tests/unit/test_security_audit.py`` and ``tests/acceptance/test_security_audit.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.opsview import OpsContext
from tests.support import free_port

Factory = async_sessionmaker[AsyncSession]


TOKEN = "audit-token-facade"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def env_settings(monkeypatch: pytest.MonkeyPatch, db_url: str, **env: str) -> Settings:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", "/nonexistent/alertq.toml")
    monkeypatch.setenv("ALERTQ_DATABASE_URL", db_url)
    monkeypatch.setenv("ALERTQ_API_TOKEN", TOKEN)
    monkeypatch.setenv("ALERTQ_ALERTMANAGER_URLS", f"http://127.0.0.1:{free_port()}")
    for name, value in env.items():
        monkeypatch.setenv(f"ALERTQ_{name.upper()}", value)
    return Settings()


@asynccontextmanager
async def serve(
    settings: Settings, factory: Factory, peer: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(OpsContext(settings, factory))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def actor_for(
    client: httpx.AsyncClient, factory: Factory, settings: Settings, forwarded: str | None
) -> tuple[str | None, str | None]:
    """Trip and reset a breaker with this X-Forwarded-For; the recorded
    (disabled_by, resolved_by)."""
    headers = dict(AUTH)
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    trip = await client.post("/api/breakers/b/trip", json={"reason": "r"}, headers=headers)
    assert trip.status_code == 200, trip.text
    incident_id = trip.json()["incident_id"]
    reset = await client.post("/api/breakers/b/reset", json={"reason": "r"}, headers=headers)
    assert reset.status_code == 200, reset.text
    incidents = await CircuitBreaker(settings, factory).list_incidents("b", True, 100)
    incident = next(i for i in incidents if i.id == incident_id)
    return trip.json()["disabled_by"], incident.resolved_by


async def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = env_settings(monkeypatch, db_url)
    assert settings.trusted_proxies == []
    async with serve(settings, session_factory, "127.0.0.1") as client:
        for forged in ("ceo-laptop<b>", "203.0.113.7", "203.0.113.7, 10.0.0.1"):
            assert await actor_for(client, session_factory, settings, forged) == (
                "api@127.0.0.1",
                "api@127.0.0.1",
            )


async def test_a_trusted_proxy_forwards_only_ip_addresses(
    db_url: str, session_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = env_settings(monkeypatch, db_url, trusted_proxies="10.0.0.0/8, 192.0.2.1")
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
    cases = [
        ("10.1.2.3", "203.0.113.7", "api@203.0.113.7"),
        # Right-most address that is not a trusted proxy: a client cannot prepend its own.
        ("10.1.2.3", "6.6.6.6, 203.0.113.7, 10.9.9.9", "api@203.0.113.7"),
        ("10.1.2.3", "ceo-laptop<b>", "api@10.1.2.3"),
        ("10.1.2.3", "ceo-laptop<b>, 203.0.113.9", "api@203.0.113.9"),
        ("192.0.2.1", "2001:db8::1", "api@2001:db8::1"),
        # An IPv6 zone id is free text: refused.
        ("10.1.2.3", "fe80::1%ceo-laptop<b>", "api@10.1.2.3"),
        ("10.1.2.3", "1.2.3.4:8080", "api@10.1.2.3"),
        # Not a trusted proxy: its header counts for nothing.
        ("192.0.2.2", "203.0.113.7", "api@192.0.2.2"),
    ]
    for peer, forwarded, expected in cases:
        async with serve(settings, session_factory, peer) as client:
            got = await actor_for(client, session_factory, settings, forwarded)
            assert got == (expected, expected), (peer, forwarded)
