"""Issue 9, finding 9 (API and status page): lists that grow with the number of breakers
and incidents are bounded and keyset-paginated, and the status page says "N more"."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.api import MAX_PAGE, create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.opsview import SHOWN_BREAKERS, SHOWN_INCIDENTS, OpsContext
from tests.support import free_port

Factory = async_sessionmaker[AsyncSession]
MANY = 120


@pytest.fixture
async def many_breakers(db_url: str, session_factory: Factory) -> Settings:
    """MANY open breakers, each with its open incident, made through the service."""
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[f"http://127.0.0.1:{free_port()}"],
        stats_cache_seconds=0,
    )
    breaker = CircuitBreaker(settings, session_factory)
    for i in range(MANY):
        await breaker.disable(f"b-{i:03d}", f"reason {i}", "test")
    return settings


@asynccontextmanager
async def serve(settings: Settings, factory: Factory) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(OpsContext(settings, factory)))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


async def test_breakers_are_paged_by_name_with_a_capped_limit(
    many_breakers: Settings, session_factory: Factory
) -> None:
    async with serve(many_breakers, session_factory) as client:
        first = (await client.get("/api/breakers")).json()
        assert [b["name"] for b in first] == [f"b-{i:03d}" for i in range(100)]
        assert (await client.get(f"/api/breakers?limit={MAX_PAGE + 1}")).status_code == 422
        for bad in ("after=" + "x" * 201, "after=", "after=a%00b", "limit=0"):
            response = await client.get("/api/breakers?" + bad)
            assert response.status_code == 422, (bad, response.text)
        for bad in ("before=", "before=a%00b", "before=" + "x" * 201):
            response = await client.get("/api/incidents?" + bad)
            assert response.status_code == 422, (bad, response.text)
        names: list[str] = []
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 50}
            if after is not None:
                params["after"] = after
            page = (await client.get("/api/breakers", params=params)).json()
            names += [b["name"] for b in page]
            if len(page) < 50:
                break
            after = page[-1]["name"]
    assert names == [f"b-{i:03d}" for i in range(MANY)]


async def test_incidents_are_paged_newest_first_without_gaps_or_repeats(
    many_breakers: Settings, session_factory: Factory
) -> None:
    async with serve(many_breakers, session_factory) as client:
        assert (await client.get(f"/api/incidents?limit={MAX_PAGE + 1}")).status_code == 422
        seen: list[dict[str, str]] = []
        before: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 7}
            if before is not None:
                params["before"] = before
            page = (await client.get("/api/incidents", params=params)).json()
            seen += page
            if len(page) < 7:
                break
            before = page[-1]["id"]
    assert len(seen) == MANY
    assert len({i["id"] for i in seen}) == MANY
    assert {i["circuit_breaker_name"] for i in seen} == {f"b-{i:03d}" for i in range(MANY)}
    keys = [(i["timestamp"], i["id"]) for i in seen]
    assert keys == sorted(keys, reverse=True)


async def test_the_status_page_shows_a_bounded_list_and_how_many_more(
    many_breakers: Settings, session_factory: Factory
) -> None:
    async with serve(many_breakers, session_factory) as client:
        page = (await client.get("/")).text
        metrics = (await client.get("/metrics")).text
    assert len(re.findall(r">b-\d{3}</td>", page)) == SHOWN_BREAKERS
    assert len(re.findall(r">b-\d{3}<div", page)) == SHOWN_INCIDENTS
    assert f"{MANY - SHOWN_BREAKERS} more" in page
    assert f"{MANY - SHOWN_INCIDENTS} more" in page
    assert f'data-stat="open_breakers">{MANY}<' in page
    assert f"alertq_open_incidents {float(MANY)}" in metrics
