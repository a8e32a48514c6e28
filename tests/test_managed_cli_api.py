"""Managed alerts and heartbeats from the command line (real subprocesses) and over the
ops API (in-process): what they store, and bad input refused with the rule broken."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.models import CostSimAlertQueueModel, HeartbeatModel, ManagedAlertModel
from tests.support.clock import FakeClock
from tests.support.processes import alertq_env, run_alertq_async
from tests.test_api import AUTH, api_settings, serve

Factory = async_sessionmaker[AsyncSession]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def managed(factory: Factory) -> list[ManagedAlertModel]:
    async with factory() as s:
        return list((await s.scalars(select(ManagedAlertModel))).all())


async def queue(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        q = CostSimAlertQueueModel
        return list((await s.scalars(select(q).order_by(q.id))).all())


# --------------------------------------------------------------------------- CLI


async def test_cli_fire_resolve_heartbeat_and_listing(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    env = alertq_env(db_url)

    async def cli(*args: str) -> Any:
        return await run_alertq_async(list(args), env, cwd=tmp_path)

    fired = await cli(
        "fire", "alertname=DiskFull", "host=db1", "--annotation", "summary=disk 95% full",
        "--expires-in", "2h",
    )  # fmt: skip
    assert fired.returncode == 0, fired.describe()
    assert fired.stdout.startswith('fired: DiskFull{host="db1"}')
    (m,) = await managed(session_factory)
    assert m.labels == {"alertname": "DiskFull", "host": "db1"} and m.state == "firing"
    assert m.annotations == {"summary": "disk 95% full"} and m.expires_at is not None
    listed = await cli("alerts", "--managed", "--json")
    assert listed.returncode == 0 and '"state": "firing"' in listed.stdout
    resolved = await cli("resolve", "alertname=DiskFull", "host=db1")
    assert resolved.returncode == 0 and resolved.stdout.startswith("resolved:")
    again = await cli("resolve", "alertname=DiskFull", "host=db1")
    assert again.returncode == 0 and "not firing (nothing to do)" in again.stdout
    ping = await cli("heartbeat", "backup", "--within", "26h", "--label", "team=ops")
    assert ping.returncode == 0 and ping.stdout.startswith("ping recorded: backup")
    async with session_factory() as s:
        (hb,) = (await s.scalars(select(HeartbeatModel))).all()
    assert hb.window_seconds == 26 * 3600 and hb.labels == {"team": "ops"}
    assert [r.alert_type for r in await queue(session_factory)] == [
        "managed_firing",
        "managed_resolving",
    ]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fire", "alertname=A", "bad-name=x"], "labels: invalid label name 'bad-name'"),
        (["fire", "host=db1"], "labels.alertname: labels must include alertname"),
        (["fire", "alertname=A", "host="], "labels.host: label value must not be empty"),
        (["fire", "alertname"], "label 'alertname': expected name=value"),
        (["fire", "alertname=A", "--annotation", "1x=y"], "invalid annotation name '1x'"),
        (["fire", "alertname=A", "--expires-in", "0s"], "--expires-in: invalid duration"),
        (["fire", "alertname=A", "--expires-in", "9999d"], "at most 1000 days"),
        (["resolve", "alertname=A", "alertname=B"], "label 'alertname': given twice"),
        (["heartbeat", "backup", "--within", "soon"], "--within: invalid duration"),
        (["heartbeat", "backup", "--within", "1h", "-l", "heartbeat=x"], "set by alertq"),
        (["alerts"], "pass --managed"),
    ],
)
async def test_cli_bad_input_exits_2_with_the_rule_and_stores_nothing(
    db_url: str, session_factory: Factory, tmp_path: Path, args: list[str], message: str
) -> None:
    result = await run_alertq_async(args, alertq_env(db_url), cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert message in result.stderr, result.describe()
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert await managed(session_factory) == [] and await queue(session_factory) == []


async def test_cli_unreachable_database_exits_1_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://alertq:s3cr3t@127.0.0.1:1/alertq"
    result = await run_alertq_async(["fire", "alertname=A"], alertq_env(url), cwd=tmp_path)
    assert result.returncode == 1, result.describe()
    # The one message every command prints for an unreachable database (cli.main).
    assert "cannot reach the database at" in result.stderr and "s3cr3t" not in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- HTTP


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
