"""Hostile input, as tests: fuzzed enqueues and ops API requests, SQL metacharacters and
unicode carried verbatim to a real Alertmanager, a payload Alertmanager refuses, and
Alertmanagers that drip, babble or redirect.

The properties proved here:

* hostile input is either stored (normalised, verbatim) or refused, with
  ``InvalidAlertPayload`` at enqueue and a 4xx at the ops API: never another exception,
  never a 5xx, and a refusal changes nothing in the database;
* one row Alertmanager refuses never holds up the rows behind it;
* an Alertmanager that drips, answers garbage or redirects costs the worker at most its
  timeout per attempt, and the rows are classified for what happened.

Split by test tier: these are the integration tests; see also
``tests/acceptance/test_hostile_input.py``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import MAX_PAYLOAD_BYTES, InvalidAlertPayload, parse_payload, validate_payload
from alertq.api import create_app
from alertq.breaker import CircuitBreaker
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel, CostSimCBStateModel
from alertq.opsview import OpsContext
from alertq.policy import MISCONFIGURED_FLOOR
from tests.support import free_port
from tests.support.clock import FakeClock
from tests.support.stub import StubAlertmanager

Factory = async_sessionmaker[AsyncSession]


Q = CostSimAlertQueueModel


T = TypeVar("T")


CAP = MAX_PAYLOAD_BYTES


TOKEN = "hostile-token-5eed"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def json_size(payload: object) -> int:
    """The size the payload cap is defined on: compact UTF-8 JSON."""
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())


def run_property(db_url: str, test: Callable[[Factory, asyncio.Runner], None]) -> None:
    """Run a hypothesis property that needs the database, on one event loop and engine."""
    with asyncio.Runner() as runner:
        engine = create_engine(Settings(database_url=db_url))
        try:
            test(create_session_factory(engine), runner)
        finally:
            runner.run(engine.dispose())


async def queue_rows(session: AsyncSession) -> list[tuple[Any, ...]]:
    """Every column of every queue row, by id."""
    table = Q.__table__
    return [tuple(r) for r in (await session.execute(select(*table.c).order_by(Q.id))).all()]


async def all_rows(factory: Factory) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every row of the three tables."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    async with factory() as s:
        for model in (Q, CostSimCBIncidentModel, CostSimCBStateModel):
            table = model.__table__
            stmt = select(*table.c).order_by(*table.primary_key.columns)
            out[table.name] = [tuple(r) for r in (await s.execute(stmt)).all()]
    return out


_HOSTILE_STRINGS = ["\x00", "a\x00b", "\ud800", "x\udfffy", "\ud83d", "ok\x00\ud800"]


_NOT_STRINGS: list[object] = [
    0,
    -1,
    10**40,
    1.5,
    float("nan"),
    float("inf"),
    True,
    False,
    None,
    [],
    ["a"],
    {},
    {"a": "b"},
    b"bytes",
    ("t",),
]


_STRING_PLACES = [
    "label_value",
    "label_name",
    "annotation_value",
    "annotation_name",
    "alertname",
    "startsAt",
    "endsAt",
    "generatorURL",
    "alert_type",
    "circuit_breaker_name",
    "incident_id",
]


_INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",  # a 2-byte lead without its continuation
    b"\xa0\xa1",  # continuation bytes alone
    b"\xe2\x28\xa1",
    b"\xed\xa0\x80",  # an encoded surrogate (CESU-8), invalid in UTF-8
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xc0\xaf",  # overlong '/'
    b"\xf0\x9f\x9a",  # truncated emoji
]


_ESCAPES = ["\\u0000", "\\ud800", "\\udfff", "\\ud83d\\u0041", "\\ud83d\\ude80", "\\u202e"]


_CHARS = ["x", "é", "日", "🚨"]  # 1 to 4 UTF-8 bytes


@dataclass(frozen=True)
class Recipe:
    kind: str
    where: str = ""
    size: int = 0
    count: int = 0
    text: str = ""
    raw: bytes = b""
    value: object = None


_sizes = st.one_of(
    st.integers(CAP - 400, CAP + 400), st.integers(1, CAP), st.sampled_from([2 * CAP, 5 * CAP])
)


_RECIPES = st.one_of(
    st.builds(
        Recipe,
        kind=st.just("huge_value"),
        where=st.sampled_from(["label_value", "annotation_value", "alertname", "annotation_name"]),
        size=_sizes,
        text=st.sampled_from(_CHARS),
    ),
    st.builds(
        Recipe,
        kind=st.just("huge_text"),
        where=st.sampled_from(["str", "bytes"]),
        size=st.integers(CAP - 50, 3 * CAP),
    ),
    st.builds(
        Recipe,
        kind=st.just("many_alerts"),
        count=st.one_of(st.integers(1, 300), st.sampled_from([255, 256, 257])),
        size=_sizes,
    ),
    st.builds(
        Recipe,
        kind=st.just("many_labels"),
        count=st.integers(1, 20_000),
        size=_sizes,
    ),
    st.builds(
        Recipe,
        kind=st.just("deep_text"),
        where=st.sampled_from(["payload", "labels", "label_value", "annotation_value", "extra"]),
        size=st.integers(2, 100_000),
        text=st.sampled_from(["[", "{"]),
    ),
    st.builds(
        Recipe,
        kind=st.just("deep_object"),
        where=st.sampled_from(["payload", "alert", "labels", "label_value", "annotations"]),
        size=st.integers(1, 5000),
    ),
    st.builds(
        Recipe,
        kind=st.just("bad_bytes"),
        where=st.sampled_from(["label_value", "label_name", "annotation_value", "outside"]),
        raw=st.one_of(st.sampled_from(_INVALID_UTF8), st.binary(min_size=1, max_size=12)),
    ),
    st.builds(
        Recipe,
        kind=st.just("escaped"),
        where=st.sampled_from(["label_value", "label_name", "annotation_value", "alertname"]),
        text=st.sampled_from(_ESCAPES),
    ),
    st.builds(
        Recipe,
        kind=st.just("hostile_string"),
        where=st.sampled_from(_STRING_PLACES),
        text=st.sampled_from(_HOSTILE_STRINGS),
    ),
    st.builds(
        Recipe,
        kind=st.just("not_a_string"),
        where=st.sampled_from([*_STRING_PLACES, "labels", "annotations", "alert", "payload"]),
        value=st.sampled_from(_NOT_STRINGS),
    ),
    st.builds(
        Recipe,
        kind=st.just("long_number"),
        where=st.sampled_from(["label_value", "annotation_value", "payload"]),
        size=st.integers(1, 10_000),
    ),
)


def _fill(size: int, char: str) -> str:
    """``char`` repeated to about ``size`` UTF-8 bytes."""
    return char * max(1, size // len(char.encode("utf-8", "surrogatepass")))


def _base_alert() -> dict[str, Any]:
    return {
        "labels": {"alertname": "Hostile", "severity": "warning"},
        "annotations": {"summary": "s"},
        "startsAt": "2024-05-01T12:00:00Z",
        "endsAt": "2030-01-01T00:00:00Z",
        "generatorURL": "https://prom.example/graph",
    }


def _place(alert: dict[str, Any], args: list[Any], where: str, value: Any) -> None:
    """Put ``value`` at ``where`` in ``alert`` (or the enqueue arguments)."""
    if where == "label_value":
        alert["labels"]["team"] = value
    elif where == "label_name":
        alert["labels"][value] = "v"
    elif where == "alertname":
        alert["labels"]["alertname"] = value
    elif where == "annotation_value":
        alert["annotations"]["description"] = value
    elif where == "annotation_name":
        alert["annotations"][value] = "v"
    elif where in ("startsAt", "endsAt", "generatorURL", "labels", "annotations"):
        alert[where] = value
    elif where == "alert_type":
        args[0] = value
    elif where == "circuit_breaker_name":
        args[1] = value
    elif where == "incident_id":
        args[2] = value
    else:
        raise AssertionError(where)


def _json_text(alert: dict[str, Any], marker: str, fragment: str) -> str:
    """The payload as JSON text with the string ``"marker"`` replaced by raw ``fragment``."""
    return json.dumps([alert]).replace(json.dumps(marker), fragment)


def _nested(depth: int, leaf: object, kind: str = "dict") -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return value


def build(recipe: Recipe) -> tuple[object, list[Any]]:
    """The hostile input: a payload (Python objects, or JSON text for parse_payload) and
    the other enqueue arguments (alert_type, circuit_breaker_name, incident_id)."""
    alert = _base_alert()
    args: list[Any] = ["disable", "cb", "inc"]
    marker = "@@MARKER@@"
    kind, where = recipe.kind, recipe.where
    if kind == "huge_value":
        _place(alert, args, where, _fill(recipe.size, recipe.text))
        return [alert], args
    if kind == "huge_text":
        text = json.dumps([alert])
        text += " " * max(0, recipe.size - len(text))  # valid JSON, padded with whitespace
        return (text.encode() if where == "bytes" else text), args
    if kind == "many_alerts":  # about recipe.size bytes in all
        filler = "x" * max(1, recipe.size // recipe.count - 60)
        alerts = [
            {"labels": {"alertname": "Many", "n": str(i)}, "annotations": {"d": filler}}
            for i in range(recipe.count)
        ]
        return alerts, args
    if kind == "many_labels":  # about recipe.size bytes in all
        value = "v" * max(1, recipe.size // recipe.count - 10)
        alert["labels"].update({f"l{i}": value for i in range(recipe.count)})
        return [alert], args
    if kind == "deep_text":
        opener, closer = ("[", "]") if recipe.text == "[" else ('{"a":', "}")
        deep = opener * recipe.size + "1" + closer * recipe.size
        if where == "payload":
            return deep, args
        if where == "extra":
            alert["extra"] = marker
        else:
            _place(alert, args, where, marker)
        return _json_text(alert, marker, deep), args
    if kind == "deep_object":
        deep = _nested(recipe.size, "leaf", "list" if where == "payload" else "dict")
        if where == "payload":
            return deep, args
        if where == "alert":
            return [_nested(recipe.size, alert)], args
        _place(alert, args, where, deep)
        return [alert], args
    if kind == "bad_bytes":
        if where == "outside":
            return json.dumps([alert]).encode() + recipe.raw, args
        _place(alert, args, where, marker)
        before, _, after = json.dumps([alert]).encode().partition(marker.encode())
        return before + b"x" + recipe.raw + b"x" + after, args
    if kind == "escaped":
        _place(alert, args, where, marker)
        return _json_text(alert, marker, f'"x{recipe.text}x"'), args
    if kind in ("hostile_string", "not_a_string"):
        value = recipe.text if kind == "hostile_string" else recipe.value
        if where == "payload":
            return value, args
        if where == "alert":
            return [value], args
        if where in ("label_name", "annotation_name") and isinstance(value, list | dict):
            value = repr(value)  # unhashable: not a possible dict key
        _place(alert, args, where, value)
        return [alert], args
    if kind == "long_number":
        digits = "1" * recipe.size
        if where == "payload":
            return digits, args
        _place(alert, args, where, marker)
        return _json_text(alert, marker, digits), args
    raise AssertionError(kind)


SEEDED = [
    [{"labels": {"alertname": f"Seeded{i}"}, "annotations": {"summary": "seed"}}] for i in range(3)
]


GOOD = [{"labels": {"alertname": "AfterTheRefusal"}}]


async def enqueue_hostile(factory: Factory, recipe: Recipe) -> str:
    """Enqueue the recipe's input the way a producer would, and check the outcome.

    Either the normalised payload is stored verbatim (and only that row is added), or
    ``InvalidAlertPayload`` is raised with no trace left and the caller's transaction still
    usable. Any other exception fails the test.
    """
    raw, args = build(recipe)
    async with factory() as s:
        await s.begin()
        before = await queue_rows(s)
        try:
            payload = parse_payload(raw) if isinstance(raw, str | bytes) else raw
            row = await enqueue_alert(s, payload, *args)
        except InvalidAlertPayload:
            assert await queue_rows(s) == before
            # On PostgreSQL a failed statement would have aborted the caller's transaction.
            await enqueue_alert(s, GOOD, "disable")
            outcome = "rejected"
        else:
            stored = await s.scalar(select(Q.payload).where(Q.id == row.id))
            assert stored == validate_payload(payload)
            assert json_size(stored) <= CAP
            after = await queue_rows(s)
            assert after[:-1] == before and after[-1][0] == row.id
            assert (row.alert_type, row.circuit_breaker_name, row.incident_id) == tuple(args)
            outcome = "stored"
        await s.rollback()
    return outcome


def test_hostile_payloads_are_stored_verbatim_or_refused_with_invalid_alert_payload(
    db_url: str,
) -> None:
    outcomes: dict[str, int] = {"stored": 0, "rejected": 0}

    def check(factory: Factory, runner: asyncio.Runner) -> None:
        async def seed() -> None:
            async with transaction(factory) as s:
                for payload in SEEDED:
                    await enqueue_alert(s, payload, "disable")

        runner.run(seed())
        committed = runner.run(all_rows(factory))

        @settings(FUZZ, max_examples=120)
        @given(recipe=_RECIPES)
        def holds(recipe: Recipe) -> None:
            outcomes[runner.run(enqueue_hostile(factory, recipe))] += 1

        holds()
        assert runner.run(all_rows(factory)) == committed

    run_property(db_url, check)
    assert outcomes["stored"] >= 5 and outcomes["rejected"] >= 20, outcomes


def _at_size(target: int) -> list[dict[str, Any]]:
    """A valid payload whose compact UTF-8 JSON is exactly ``target`` bytes (emoji filler)."""
    alert: dict[str, Any] = {"labels": {"alertname": "AtTheCap"}, "annotations": {"d": ""}}
    overhead = json_size([alert])
    emoji, rest = divmod(target - overhead, 4)
    alert["annotations"]["d"] = "🚨" * emoji + "x" * rest
    assert json_size([alert]) == target
    return [alert]


@pytest.mark.parametrize(("size", "stored"), [(CAP, True), (CAP + 1, False)])
async def test_payload_cap_is_exact_and_a_payload_at_the_cap_is_stored_whole(
    session_factory: Factory, size: int, stored: bool
) -> None:
    payload = _at_size(size)
    async with session_factory() as s, s.begin():
        if stored:
            row = await enqueue_alert(s, payload, "disable")
            assert await s.scalar(select(Q.payload).where(Q.id == row.id)) == payload
        else:
            with pytest.raises(InvalidAlertPayload, match=f"too large: {CAP + 1} bytes"):
                await enqueue_alert(s, payload, "disable")
            assert await queue_rows(s) == []


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('[{"labels": {"alertname": ' + "7" * 5000 + "}}]", "not valid JSON"),
        (b'[{"labels": {"alertname": "\xed\xa0\x80"}}]', "not valid UTF-8"),
        ('[{"labels": {"alertname": "\\ud800"}}]', "lone surrogate"),
        ('[{"labels": {"alertname": "a\\u0000"}}]', "NUL"),
        ('[{"labels": {"alertname": "A", "team": 7}}]', "must be a string (got int)"),
        ("[" + ",".join([f'{{"labels": {{"alertname": "A{i}"}}}}' for i in range(257)]) + "]",
         "too many alerts"),
        (" " * (CAP + 1), "too large"),
    ],
    ids=["deep", "long-number", "cesu8-surrogate", "escaped-surrogate", "escaped-nul",
         "number-label", "too-many", "huge-text"],
)  # fmt: skip
async def test_hostile_json_text_is_refused_before_the_database(
    session_factory: Factory, raw: str | bytes, rule: str
) -> None:
    async with session_factory() as s, s.begin():
        with pytest.raises(InvalidAlertPayload) as info:
            await enqueue_alert(s, parse_payload(raw), "disable")
        assert rule in str(info.value) and len(str(info.value)) < 300
        assert await queue_rows(s) == []


def am_settings(db_url: str, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "alertmanager_urls": [url],
        "alertmanager_timeout": 5.0,
        "lease_seconds": 10.0,
        "concurrency": 1,
        "poll_interval": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


META = [
    "'; DROP TABLE costsim_cb_state; --",
    "held'--",
    "held\x00",
    "held%00",
    "%",
    "%25",
    "%2F",
    "\\",
    "$1",
    "..",
    "../../etc/passwd",
    "a/b",
    "?x=1",
    "#frag",
    " ",
    "🚨",
    "\u202eheld",
    "\ud800",
    "x" * 300,
    "1e3",
    "0x10",
    "-1",
    "00001",
    "9" * 40,
    "held ",
    "HELD",
]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


_field_values = st.one_of(
    _json_values,
    st.sampled_from(
        [
            "1d", "0d", "-1d", "1D", "1 d", "10000d", "9999w", "1.5h", "nan", "inf", "1d\n",
            "1d; DROP TABLE costsim_alert_queue", "", " ", "\x00", "a\x00b", "\ud800",
            "pending", "sent", "failed", "superseded", "x" * 1001, "é" * 1000,
        ]
    ),
    st.integers(-(2**70), 2**70),
    st.lists(st.sampled_from(["pending", "sent", "failed", "superseded", "gone", "", 1]),
             max_size=5),
)  # fmt: skip


_shaped = st.dictionaries(
    st.sampled_from(["max_retries", "older_than", "statuses", "reason", "until", "extra"]),
    _field_values,
    max_size=4,
)


@dataclass(frozen=True)
class ApiCall:
    endpoint: str
    param: str
    body: str  # kind
    value: object = None
    size: int = 0
    raw: bytes = b""
    content_type: str | None = "application/json"


_CALLS = st.builds(
    ApiCall,
    endpoint=st.sampled_from(["retry-failed", "retry-one", "purge", "trip", "reset"]),
    param=st.one_of(
        st.sampled_from(["failed", "sent", "pending", "held", "closed", "fresh"]),
        st.sampled_from(META),
        st.text(max_size=30),
        st.integers(-(2**70), 2**70).map(str),
    ),
    body=st.sampled_from(["json", "shaped", "shaped", "valid", "valid", "huge", "deep",
                          "long_number", "bytes", "empty"]),
    value=st.one_of(_json_values, _shaped),
    size=st.integers(1, 5_000_000),
    raw=st.one_of(
        st.binary(max_size=40),
        st.sampled_from(_INVALID_UTF8).map(lambda b: b'{"reason": "' + b + b'"}'),
    ),
    content_type=st.sampled_from(
        [
            *["application/json"] * 5,
            None,
            "text/plain",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=zz",
            "application/problem+json",
        ]
    ),
)  # fmt: skip


def request_body(call: ApiCall) -> bytes:
    if call.body == "valid":  # well-formed, with metacharacters where text is free
        text = "'; DROP TABLE costsim_cb_state; -- 100% $1 \\ 🚨 \u202eRTL"
        valid: dict[str, Any] = {
            "retry-failed": {"max_retries": 1 + call.size % 1000},
            "retry-one": {"max_retries": 1 + call.size % 1000},
            "purge": {"older_than": f"{1 + call.size % 9999}h", "statuses": ["sent"]},
            "trip": {"reason": text, "until": "2h"},
            "reset": {"reason": text},
        }
        return json.dumps(valid[call.endpoint]).encode()
    if call.body in ("json", "shaped"):
        return json.dumps(call.value).encode("utf-8", "surrogatepass")
    if call.body == "huge":
        field = {"retry-failed": "max_retries", "purge": "older_than"}.get(call.endpoint, "reason")
        return json.dumps({field: "x" * call.size, "statuses": ["sent"] * 3}).encode()
    if call.body == "deep":
        depth = min(call.size, 200_000)
        return b"[" * depth + b"]" * depth
    if call.body == "long_number":
        return b'{"max_retries": ' + b"9" * min(call.size, 100_000) + b', "reason": 1}'
    if call.body == "bytes":
        return call.raw
    return b""


def request_path(call: ApiCall, ids: dict[str, int]) -> str:
    param = str(ids.get(call.param, call.param))
    quoted = quote(param, safe="", errors="surrogatepass")
    return {
        "retry-failed": "/api/alerts/retry-failed",
        "retry-one": f"/api/alerts/{quoted}/retry",
        "purge": "/api/alerts/purge",
        "trip": f"/api/breakers/{quoted}/trip",
        "reset": f"/api/breakers/{quoted}/reset",
    }[call.endpoint]


def api_settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        alertmanager_urls=[f"http://127.0.0.1:{free_port()}"],
        api_token=TOKEN,
        stats_cache_seconds=0,
        alertmanager_timeout=2.0,
        lease_seconds=5.0,
        concurrency=1,
        max_attempts=3,
    )


async def seed_api(settings_: Settings, factory: Factory) -> dict[str, int]:
    """A fresh state: old pending, failed and sent rows, an open and a closed breaker."""
    async with transaction(factory) as s:
        for model in (Q, CostSimCBIncidentModel, CostSimCBStateModel):
            await s.execute(delete(model))
    now = datetime.now(UTC)
    old = now - timedelta(days=3)
    async with transaction(factory) as s:
        ids = {
            status: (
                await enqueue_alert(s, [{"labels": {"alertname": f"Seed-{status}"}}], "x", now=old)
            ).id
            for status in ("failed", "sent", "pending")
        }
    async with transaction(factory) as s:
        driver = get_alert_driver(s)
        token = 4242
        claimed = await driver.alerts_claim(now, 10, now + timedelta(seconds=5), token, "seed")
        assert len(claimed) == 3
        await driver.alerts_mark_failed([ids["failed"]], token, "HTTP 400: seeded", [])
        await driver.alerts_mark_sent([ids["sent"]], token, now, ["seed"])
        await driver.alerts_release([ids["pending"]], token, old)
    breaker = CircuitBreaker(settings_, factory)
    await breaker.disable("held", "seeded open", "test")
    await breaker.disable("closed", "seeded", "test")
    await breaker.enable("closed", "test", "seeded closed")
    return ids


def test_ops_api_fuzzed_mutations_never_answer_5xx_and_refusals_change_nothing(
    db_url: str,
) -> None:
    answers: dict[str, int] = {"accepted": 0, "refused": 0}
    settings_ = api_settings(db_url)

    def check(factory: Factory, runner: asyncio.Runner) -> None:
        app = create_app(OpsContext(settings_, factory))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        )
        ids = runner.run(seed_api(settings_, factory))

        async def call(api_call: ApiCall) -> None:
            nonlocal ids
            before = await all_rows(factory)
            headers = dict(AUTH)
            if api_call.content_type is not None:
                headers["Content-Type"] = api_call.content_type
            response = await client.post(
                request_path(api_call, ids), content=request_body(api_call), headers=headers
            )
            assert response.status_code < 500, response.text[:500]
            if response.status_code >= 400:
                answers["refused"] += 1
                assert "detail" in response.json()
            if not response.is_success:
                assert await all_rows(factory) == before
            else:
                answers["accepted"] += 1
                ids = await seed_api(settings_, factory)

        @settings(FUZZ, max_examples=200)
        @given(api_call=_CALLS)
        def holds(api_call: ApiCall) -> None:
            runner.run(call(api_call))

        try:
            holds()
        finally:
            runner.run(client.aclose())

    run_property(db_url, check)
    assert answers["refused"] >= 50 and answers["accepted"] >= 3, answers


@pytest.mark.parametrize(
    ("path", "body", "content_type", "field"),
    [
        ("/api/breakers/b/trip", b"\x80\xff not UTF-8", "text/plain", "body"),
        ("/api/breakers/b/trip", b"\x80\xff not UTF-8", None, "body"),
        ("/api/breakers/b/trip", b'{"reason": "\\ud800"}', "application/json", "reason"),
        ("/api/alerts/retry-failed", b'{"max_retries": NaN}', "application/json", "max_retries"),
        ("/api/alerts/retry-failed", b'{"max_retries": -Infinity}', "application/json",
         "max_retries"),
        ("/api/alerts/retry-failed", b'{"max_retries": ' + b"[" * 500 + b"]" * 500 + b"}",
         "application/json", "max_retries"),
        ("/api/breakers/b/trip", json.dumps({"reason": "x" * 2_000_000}).encode(),
         "application/json", "reason"),
    ],
    ids=["bytes-text-plain", "bytes-no-type", "lone-surrogate", "nan", "infinity", "deep",
         "two-megabytes"],
)  # fmt: skip
async def test_ops_api_refuses_unprintable_or_huge_input_with_a_short_422(
    db_url: str,
    session_factory: Factory,
    path: str,
    body: bytes,
    content_type: str | None,
    field: str,
) -> None:
    """FastAPI's own handler answered the first five with a 500 (echoing the input failed)
    and echoed the last one whole."""
    settings_ = api_settings(db_url)
    await seed_api(settings_, session_factory)
    before = await all_rows(session_factory)
    headers = dict(AUTH) | ({"Content-Type": content_type} if content_type else {})
    transport = httpx.ASGITransport(app=create_app(OpsContext(settings_, session_factory)))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 1000
    [error] = response.json()["detail"]
    assert error["loc"][-1] == field
    assert await all_rows(session_factory) == before


TIMEOUT = 1.0


MARGIN = 1.0  # claim + record transactions and scheduling, on a busy 2-core machine


BASE = 2.0


@pytest.mark.parametrize(
    ("mode", "error", "min_delay", "max_delay"),
    [
        ("drip", f"timeout after {TIMEOUT}s", BASE / 2, BASE),
        ("garbage", "protocol error", BASE / 2, BASE),
        ("redirect", "redirect", MISCONFIGURED_FLOOR, MISCONFIGURED_FLOOR),
    ],
)
async def test_a_dripping_babbling_or_redirecting_alertmanager_costs_one_timeout_per_attempt(
    db_url: str,
    session_factory: Factory,
    stub: StubAlertmanager,
    mode: str,
    error: str,
    min_delay: float,
    max_delay: float,
) -> None:
    {"drip": lambda: stub.drip(interval=1.0), "garbage": stub.garbage,
     "redirect": stub.redirect_loop}[mode]()  # fmt: skip
    clock = FakeClock()
    settings_ = am_settings(
        db_url,
        stub.url,
        alertmanager_timeout=TIMEOUT,
        lease_seconds=5.0,
        backoff_base=BASE,
        backoff_cap=300.0,
    )
    worker = AlertWorker(settings_, session_factory, clock=clock, rng=random.Random(7))
    async with transaction(session_factory) as s:
        ids = [
            (await enqueue_alert(s, [{"labels": {"alertname": f"R{i}"}}], "x", now=clock.now)).id
            for i in range(5)
        ]
    async with AlertmanagerClient.from_settings(settings_) as client:
        elapsed, claimed = await timed(worker.run_once(client))
        # Five rows, one POST, one timeout at most: never a timeout per row.
        assert claimed == 5 and stub.requests == 1
        assert elapsed < TIMEOUT + MARGIN, f"{mode}: run_once took {elapsed:.2f}s"

        async with session_factory() as s:
            rows = [r for r in await get_alert_driver(s).alerts_list(limit=10) if r.id in ids]
        for row in rows:
            assert (row.status, row.attempts, row.leased_until) == ("pending", 1, None)
            assert error in (row.last_error or ""), row.last_error
            delay = (row.next_attempt_at - clock.now).total_seconds()
            assert min_delay <= delay <= max_delay, (mode, delay)
        # Not retried hot: nothing is due until the delay has passed.
        assert await worker.run_once(client) == 0
        assert stub.requests == 1


async def timed(work: Awaitable[T]) -> tuple[float, T]:
    start = time.monotonic()
    result = await work
    return time.monotonic() - start, result
