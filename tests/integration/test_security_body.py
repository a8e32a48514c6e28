"""Issue 9, finding 2: request bodies are bounded by ALERTQ_MAX_REQUEST_BYTES and refused
before they are buffered, against a real ``alertq run`` process.

Split by test tier: these are the integration tests; see also
``tests/unit/test_security_body.py`` and ``tests/acceptance/test_security_body.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.api import create_app, require_token
from alertq.config import Settings
from alertq.opsview import OpsContext
from tests.integration.test_api import api_settings, serve
from tests.support import free_port

TOKEN = "body-token-5ca1ab1e"


async def test_an_overlong_path_or_query_is_414_not_a_crash(
    db_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """A 100,000-digit alert id made int() raise inside the path converter: a 500.
    (httpx itself refuses URLs over 64 KiB, hence 60,000 here.)"""
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[f"http://127.0.0.1:{free_port()}"],
        api_token=TOKEN,
    )
    app = create_app(OpsContext(settings, session_factory))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        for url in (
            "/api/alerts/" + "9" * 60_000,
            "/api/alerts/" + "9" * 4400,
            "/api/alerts?limit=1&before_id=" + "1" * 5000,
        ):
            response = await client.get(url)
            assert response.status_code == 414, (url[:40], response.text)
        assert (await client.get("/api/alerts/" + "9" * 30)).status_code == 422


async def test_a_route_added_later_gets_the_same_front_door(
    db_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    """As the relay will: a route added after create_app, depending on require_token,
    is refused before its body is parsed, and its body is bounded."""
    settings = Settings(
        database_url=db_url,
        alertmanager_urls=[f"http://127.0.0.1:{free_port()}"],
        api_token=TOKEN,
        max_request_bytes=2048,
    )
    app = create_app(OpsContext(settings, session_factory))

    @app.post("/api/v2/later", dependencies=[Depends(require_token)])
    async def later(body: list[dict[str, Any]]) -> int:
        return len(body)

    @app.post("/api/v2/open")
    async def open_route(body: list[dict[str, Any]]) -> int:
        return len(body)

    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as client:
        unauth = await client.post("/api/v2/later", content=b"{not json")
        assert unauth.status_code == 401, unauth.text
        ok = await client.post("/api/v2/later", content=b"[{}, {}]", headers=auth)
        assert ok.status_code == 200 and ok.json() == 2, ok.text
        for path in ("/api/v2/later", "/api/v2/open"):
            big = await client.post(path, content=b"[" + b" " * 3000 + b"]", headers=auth)
            assert big.status_code == 413, (path, big.text)

            async def chunks() -> AsyncIterator[bytes]:
                yield b"["
                for _ in range(10):
                    yield b" " * 1000
                yield b"]"

            streamed = await client.post(path, content=chunks(), headers=auth)
            assert streamed.status_code == 413, (path, streamed.text)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_every_answer_carries_the_security_headers_and_the_page_its_csp(
    db_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # Red-team pass 4: no answer said nosniff, no framing or no referrer; the page no CSP.
    async with serve(api_settings(db_url), session_factory) as (client, _):
        answers = {
            "page": await client.get("/"),
            "json": await client.get("/api/stats"),
            "not found": await client.get("/api/nonexistent"),
            "refused before the app": await client.post("/api/alerts/retry-failed"),
            "relay": await client.post("/api/v2/alerts", json=[{"labels": {"alertname": "A"}}]),
        }
    assert [a.status_code for a in answers.values()] == [200, 200, 404, 401, 200]
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["x-frame-options"] == "DENY", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
    csp = answers["page"].headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "content-security-policy" not in answers["json"].headers


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_rebound_host_name_gets_400_before_any_route(
    db_url: str, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    # Red-team pass 4: with Host: attacker.example (a name rebound to 127.0.0.1 by a web
    # page the operator opened), the default server read out the queue and stored alerts.
    async with serve(api_settings(db_url), session_factory) as (client, _):
        rebound = {"Host": "attacker.example:8787"}
        for answer in (
            await client.get("/api/alerts", headers=rebound),
            await client.post(
                "/api/v2/alerts", json=[{"labels": {"alertname": "X"}}], **{"headers": rebound}
            ),
        ):
            assert answer.status_code == 400, answer.text
            assert "ALERTQ_ALLOWED_HOSTS" in answer.json()["detail"]
        assert (await client.get("/api/alerts")).status_code == 200  # Host: 127.0.0.1
        assert (await client.get("/api/alerts")).json()["items"] == []  # nothing was stored
