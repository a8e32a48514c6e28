"""The relay's Alertmanager API in-process (httpx over ASGI), on SQLite and PostgreSQL:
one durable row per alert, one transaction per body, superseding, the source of each row,
the probes, intake auth, and the settings behind them.

Split by test tier: these are the integration tests; see also ``tests/unit/test_relay_api.py``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, select

from alertq import wakeup
from alertq.alerts import label_fingerprint
from alertq.api import create_app
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.models import CostSimAlertQueueModel as Q
from alertq.opsview import OpsContext
from tests.support import free_port

JSON = {"Content-Type": "application/json", "User-Agent": "Prometheus/2.42.0"}


def relay_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [f"http://127.0.0.1:{free_port()}"],  # nobody listens
        "stats_cache_seconds": 0,
        "alertmanager_timeout": 2.0,
        "lease_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


class Relay:
    def __init__(self, client: httpx.AsyncClient, engine: Any, factory: Any) -> None:
        self.client, self.engine, self.factory = client, engine, factory
        self.woken = 0

    async def post(self, alerts: Any, **headers: str) -> httpx.Response:
        return await self.client.post("/api/v2/alerts", json=alerts, headers={**JSON, **headers})

    async def rows(self) -> list[Q]:
        async with transaction(self.factory) as session:
            return list((await session.scalars(select(Q).order_by(Q.id))).all())


@asynccontextmanager
async def relay(settings: Settings) -> AsyncIterator[Relay]:
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    app = create_app(OpsContext(settings, factory))
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 5000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = Relay(client, engine, factory)

            def wake() -> None:
                r.woken += 1

            unsubscribe = wakeup.subscribe(wake)  # as a worker of this process would
            try:
                yield r
            finally:
                unsubscribe()
    finally:
        await engine.dispose()


def alert(name: str, **extra: Any) -> dict[str, Any]:
    return {"labels": {"alertname": name, "job": "api"}, **extra}


async def test_each_alert_is_its_own_durable_row_with_its_source(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        response = await r.post([alert("A"), alert("B", annotations={"s": "x"})])
        assert response.status_code == 200 and response.content == b""
        assert "content-type" not in response.headers
        rows = await r.rows()  # committed: visible to a new session
        assert [row.payload[0]["labels"]["alertname"] for row in rows] == ["A", "B"]
        for row in rows:
            assert row.alert_type == "relay" and row.status == "pending"
            assert row.fingerprint == label_fingerprint(row.payload[0]["labels"])
            assert row.source_addr == "192.0.2.7"
            assert row.source_agent == "Prometheus/2.42.0"
        assert r.woken == 1  # the in-process worker is woken once per body


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("grafana/ü-测试".encode(), "grafana/ü-测试"),
        (b"bad \xff\xfe bytes", "bad \ufffd\ufffd bytes"),
        ("esc\x1b[31m rtl\u202e".encode(), "esc\\x1b[31m rtl\\u202e"),
        ("测".encode() * 1000, "测" * 200),
    ],
)
async def test_the_user_agent_is_decoded_as_utf8_escaped_and_capped(
    db_url: str, sent: bytes, stored: str
) -> None:
    async with relay(relay_settings(db_url)) as r:
        response = await r.client.post(
            "/api/v2/alerts",
            json=[alert("A")],
            headers=[(b"Content-Type", b"application/json"), (b"User-Agent", sent)],
        )
        assert response.status_code == 200
        (row,) = await r.rows()
        assert row.source_agent == stored


async def test_a_newer_alert_supersedes_the_pending_row_of_its_label_set(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        assert (await r.post([alert("A"), alert("Other")])).status_code == 200
        resolved = alert("A", endsAt="2024-01-01T00:00:00Z")
        assert (await r.post([resolved])).status_code == 200
        by_status = {(row.payload[0]["labels"]["alertname"], row.status) for row in await r.rows()}
        assert by_status == {("A", "superseded"), ("Other", "pending"), ("A", "pending")}


async def test_the_same_labels_twice_in_one_body_keep_the_last(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        body = [alert("A", annotations={"n": "1"}), alert("A", annotations={"n": "2"})]
        assert (await r.post(body)).status_code == 200
        rows = await r.rows()
        assert [row.payload[0]["annotations"] for row in rows] == [{"n": "2"}]


async def test_a_256_alert_body_is_one_transaction_of_set_based_statements(
    db_url: str, is_postgres: bool
) -> None:
    async with relay(relay_settings(db_url)) as r:
        statements: list[str] = []

        def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            verb = sql.split(None, 1)[0].upper()
            if verb != "BEGIN":  # SQLite's BEGIN IMMEDIATE opens the one transaction
                statements.append(verb)

        event.listen(r.engine.sync_engine, "before_cursor_execute", count)
        body = [alert(f"Bulk{i}") for i in range(256)]
        assert (await r.post(body)).status_code == 200
        event.remove(r.engine.sync_engine, "before_cursor_execute", count)
        # PostgreSQL: one WITH … INSERT … unnest; SQLite: one INSERT … RETURNING, one
        # executemany for the rest, one UPDATE. Not 256 round trips.
        assert len(statements) == (1 if is_postgres else 3), statements
        assert len(await r.rows()) == 256


async def test_payloads_holding_the_statements_separators_are_stored_exactly(
    db_url: str,
) -> None:
    """PostgreSQL gets a body's payloads and fingerprints as one text each, split on
    U+001E and ','; values holding those (and quotes, backslashes, non-ASCII) survive."""
    odd = ["a,b", "x\u001ey", "\u001e", '"q" \\ \n', "测,\u001e,ü", ","]
    body = [
        alert(f"Odd{i}", annotations={"summary": value}) | {"labels": {"alertname": value}}
        for i, value in enumerate(odd)
    ]
    async with relay(relay_settings(db_url)) as r:
        assert (await r.post(body)).status_code == 200
        rows = await r.rows()
        assert [row.payload[0]["labels"] for row in rows] == [{"alertname": v} for v in odd]
        assert [row.payload[0]["annotations"]["summary"] for row in rows] == odd
        assert [row.fingerprint for row in rows] == [
            label_fingerprint({"alertname": v}) for v in odd
        ]


async def test_partially_invalid_body_stores_the_valid_alerts_and_answers_400(
    db_url: str,
) -> None:
    async with relay(relay_settings(db_url)) as r:
        body = [alert("Good"), {"labels": {"alertname": "Bad", "a-b": "v"}}]
        response = await r.post(body)
        assert response.status_code == 400
        assert response.json() == 'invalid label set: invalid name "a-b"'
        assert [row.payload[0]["labels"]["alertname"] for row in await r.rows()] == ["Good"]


async def test_database_down_answers_500_not_200(tmp_path: Any) -> None:
    settings = relay_settings(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db")
    async with relay(settings) as r:
        response = await r.post([alert("A")])
        assert response.status_code == 500
        assert (await r.client.get("/-/ready")).status_code == 503
        assert (await r.client.get("/-/healthy")).status_code == 200


async def test_ready_while_every_alertmanager_is_down(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        ready = await r.client.get("/-/ready")
        assert ready.status_code == 200 and ready.text == "OK"
        assert (await r.client.get("/readyz")).status_code == 503  # not delivering
        assert (await r.client.head("/-/healthy")).status_code == 200


async def test_status_has_the_fields_amtool_and_grafana_require(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        body = (await r.client.get("/api/v2/status")).json()
        assert body["cluster"] == {"status": "disabled", "peers": []}
        assert set(body["versionInfo"]) == {
            "version",
            "revision",
            "branch",
            "buildUser",
            "buildDate",
            "goVersion",
        }
        assert isinstance(body["config"]["original"], str)
        assert body["uptime"].endswith("Z")


async def test_non_json_content_type_is_415_as_alertmanager(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        response = await r.client.post(
            "/api/v2/alerts", content=b"[]", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 415 and response.json()["code"] == 415


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_intake_bearer_token_is_required_when_configured(db_url: str) -> None:
    async with relay(relay_settings(db_url, intake_bearer_token="s3cret-token")) as r:
        missing = await r.post([alert("A")])
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"  # the scheme it wants
        wrong = await r.post([alert("A")], Authorization="Bearer s3cret-tokeX")
        assert wrong.status_code == 401 and "s3cret" not in wrong.text
        assert (await r.post([alert("A")], Authorization="Bearer s3cret-token")).status_code == 200
        assert (await r.client.get("/-/ready")).status_code == 200  # probes stay open
        assert len(await r.rows()) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_intake_basic_auth_is_required_when_configured(db_url: str) -> None:
    settings = relay_settings(db_url, intake_username="prom", intake_password="pa:ss")

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async with relay(settings) as r:
        wrong = await r.post([alert("A")], Authorization=basic("prom", "nope"))
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Basic realm="alertq"'
        assert (await r.post([alert("A")], Authorization="Bearer pa:ss")).status_code == 401
        assert (await r.post([alert("A")], Authorization=basic("prom", "pa:ss"))).status_code == 200


async def test_intake_per_source_shows_on_the_status_page_and_in_metrics(db_url: str) -> None:
    async with relay(relay_settings(db_url)) as r:
        before = (await r.client.get("/metrics")).text
        assert (await r.post([alert("A"), alert("B")])).status_code == 200
        grafana = {"User-Agent": "Grafana/10.0 <script>"}
        assert (await r.post([alert("C"), {"labels": {}}], **grafana)).status_code == 400
        page = (await r.client.get("/")).text
        assert "Relay intake by source" in page and "192.0.2.7" in page
        assert "Prometheus/2.42.0" in page
        assert "Grafana/10.0 &lt;script&gt;" in page  # escaped, never markup
        after = (await r.client.get("/metrics")).text

    def sample(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    name = "alertq_intake_alerts_total"
    for outcome, delta in (("stored", 3), ("invalid", 1)):
        assert sample(after, name, outcome=outcome) - sample(before, name, outcome=outcome) == delta
    count = "alertq_intake_request_seconds_count"
    assert sample(after, count) - sample(before, count) == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_concurrent_large_bodies_on_sqlite_take_turns_instead_of_failing(
    db_url: str,
) -> None:
    # Red-team pass 3: writers racing for SQLite's lock each retry every millisecond and
    # the luckiest wins; a small body that kept losing to large ones hit the busy timeout
    # and got a 500, which Prometheus does not retry. In turn, each waits only for those
    # ahead of it. A busy timeout far shorter than one large body's insert makes any
    # race fail.
    settings = relay_settings(db_url, sqlite_busy_timeout_ms=20)
    async with relay(settings) as r:

        async def big(n: int) -> httpx.Response:
            body = [
                {"labels": {"alertname": "Big", "n": str(n), "i": str(i)}} for i in range(3_000)
            ]
            return await r.post(body)

        answers = await asyncio.gather(*(big(n) for n in range(5)), r.post([alert("Small")]))
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert len(await r.rows()) == 5 * 3_000 + 1
