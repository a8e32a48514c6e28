"""Managed alerts and heartbeats from the command line (real subprocesses) and over the
ops API (in-process): what they store, and bad input refused with the rule broken.

Split by test tier: these are the integration tests; see also
``tests/acceptance/test_managed_cli_api.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.models import ManagedAlertModel
from tests.integration.test_api import AUTH, api_settings, serve
from tests.support.clock import FakeClock

Factory = async_sessionmaker[AsyncSession]


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def managed(factory: Factory) -> list[ManagedAlertModel]:
    async with factory() as s:
        return list((await s.scalars(select(ManagedAlertModel))).all())


async def test_api_fire_resolve_ping_and_list(db_url: str, session_factory: Factory) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        body = {"labels": {"alertname": "DiskFull", "host": "db1"}, "expires_in": "2h"}
        r = await client.post("/api/managed/fire", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["detail"] == "fired" and r.json()["alert"]["state"] == "firing"
        r = await client.get("/api/managed")
        assert [a["labels"]["host"] for a in r.json()] == ["db1"]
        r = await client.post("/api/managed/resolve", json={"labels": body["labels"]}, headers=AUTH)
        assert r.json()["detail"] == "resolved"
        r = await client.post("/api/managed/resolve", json={"labels": body["labels"]}, headers=AUTH)
        assert r.status_code == 200 and r.json() == {**r.json(), "changed": False}
        assert r.json()["detail"] == "not firing"
        r = await client.post(
            "/api/heartbeats/backup",
            json={"within": "26h", "labels": {"team": "ops"}},
            headers=AUTH,
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "ok" and r.json()["window_seconds"] == 26 * 3600
        r = await client.get("/api/heartbeats")
        assert [h["name"] for h in r.json()] == ["backup"]


async def test_api_lists_page_by_keyset_after_the_last_item(
    db_url: str, session_factory: Factory
) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        for host in ("a", "b", "c", "d", "e"):
            fire = {"labels": {"alertname": "Disk", "host": host}}
            assert (await client.post("/api/managed/fire", json=fire, headers=AUTH)).is_success
            ping = await client.post(f"/api/heartbeats/{host}", json={"within": "1h"}, headers=AUTH)
            assert ping.is_success
        for path, key in (("/api/managed", "fingerprint"), ("/api/heartbeats", "name")):
            whole = [x[key] for x in (await client.get(path)).json()]
            assert len(whole) == 5
            seen: list[str] = []
            params: dict[str, Any] = {"limit": 2}
            for _ in range(4):  # 2 + 2 + 1, then an empty page
                page = [x[key] for x in (await client.get(path, params=params)).json()]
                seen += page
                params["after"] = page[-1] if page else None
            assert seen == whole and page == [], path


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("/api/managed?after=0123456789abcdef", 404, "no managed alert has this fingerprint"),
        ("/api/managed?after=NOT-HEX", 422, "string_pattern_mismatch"),
        ("/api/heartbeats?after=nobody", 404, "no heartbeat has this name"),
        ("/api/heartbeats?after=bad%20name", 422, "string_pattern_mismatch"),
    ],
)
async def test_api_an_unknown_or_malformed_cursor_is_a_short_4xx(
    db_url: str, session_factory: Factory, query: str, status: int, message: str
) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        r = await client.get(query)
    assert r.status_code == status and message in r.text, r.text
    assert len(r.content) < 600 and "Traceback" not in r.text


async def test_api_refuses_to_fire_or_resolve_alertqs_own_alerts(
    db_url: str, session_factory: Factory
) -> None:
    # Red-team pass 4: resolving a breaker's alert through the managed API answered
    # "resolved" and silenced it in Alertmanager while the breaker stayed open and its
    # incident unresolved; firing HeartbeatMissing spoofed a heartbeat.
    async with serve(api_settings(db_url), session_factory) as (client, _):
        trip = {"reason": "drift by hand"}
        r = await client.post("/api/breakers/costsim/trip", json=trip, headers=AUTH)
        assert r.status_code == 200, r.text
        (breaker_alert,) = (await client.get("/api/managed")).json()
        for path, labels in (
            ("/api/managed/resolve", breaker_alert["labels"]),
            ("/api/managed/fire", breaker_alert["labels"]),
            ("/api/managed/fire", {"alertname": "HeartbeatMissing", "heartbeat": "backup"}),
            ("/api/managed/resolve", {"alertname": "HeartbeatMissing", "heartbeat": "backup"}),
        ):
            r = await client.post(path, json={"labels": labels}, headers=AUTH)
            assert r.status_code == 409, r.text
            assert "is a circuit breaker's" in r.text or "is a heartbeat's" in r.text
        (still,) = (await client.get("/api/managed")).json()
        assert still["state"] == "firing"
        (breaker,) = (await client.get("/api/breakers")).json()
        assert breaker["disabled"] is True


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/managed/fire", {"labels": {"alertname": "A", "bad-name": "x"}}, "bad-name"),
        ("/api/managed/fire", {"labels": {"host": "x"}}, "labels must include alertname"),
        ("/api/managed/fire", {"labels": {"alertname": "A"}, "expires_in": "0s"}, "expires_in"),
        ("/api/managed/fire", {"labels": {"alertname": "A"}, "expires_in": "2y"}, "pattern"),
        ("/api/managed/resolve", {"labels": {"alertname": "A\u0000"}}, "alertname"),
        ("/api/managed/resolve", {"labels": {"alertname": ""}}, "at least 1 character"),
        ("/api/heartbeats/backup", {"within": "never"}, "within"),
        ("/api/heartbeats/backup", {"within": "1h", "labels": {"heartbeat": "x"}}, "set by"),
    ],
)
async def test_api_bad_labels_get_422_with_the_rule(
    db_url: str, session_factory: Factory, path: str, body: dict[str, Any], message: str
) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        r = await client.post(path, json=body, headers=AUTH)
        assert r.status_code == 422, r.text
        assert message in r.text
    assert await managed(session_factory) == []


@SQLITE_ONLY
async def test_api_mutations_need_the_token(db_url: str, session_factory: Factory) -> None:
    async with serve(api_settings(db_url), session_factory) as (client, _):
        fire = {"labels": {"alertname": "A"}}
        assert (await client.post("/api/managed/fire", json=fire)).status_code == 401
        assert (await client.post("/api/managed/resolve", json=fire)).status_code == 401
        ping = {"within": "1h"}
        assert (await client.post("/api/heartbeats/x", json=ping)).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert (await client.post("/api/managed/fire", json=fire, headers=bad)).status_code == 401
    assert await managed(session_factory) == []


async def test_status_page_shows_managed_alerts_and_heartbeats(
    db_url: str, session_factory: Factory
) -> None:
    clock = FakeClock()
    async with serve(api_settings(db_url), session_factory, clock=clock) as (client, _):
        fire = {"labels": {"alertname": "DiskFull", "host": "db1"}, "expires_in": "2h"}
        assert (await client.post("/api/managed/fire", json=fire, headers=AUTH)).is_success
        ping = {"within": "26h"}
        assert (await client.post("/api/heartbeats/backup", json=ping, headers=AUTH)).is_success
        page = (await client.get("/")).text
    managed_table = page.split('id="managed"')[1].split("</table>")[0]
    assert "DiskFull" in managed_table and "host=db1" in managed_table
    assert "firing" in managed_table and "expires in 2h 00m" in managed_table
    heartbeat_table = page.split('id="heartbeats"')[1].split("</table>")[0]
    assert "backup" in heartbeat_table and "in 1d 2h" in heartbeat_table
