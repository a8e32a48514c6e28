"""``enqueue_alert`` against real databases: validation before any statement, the caller's
transaction left intact, values stored verbatim, supersession, and NOTIFY on commit only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import (
    InvalidAlertPayload,
    label_fingerprint,
    parse_payload,
    payload_fingerprint,
    validate_payload,
)
from alertq.config import Settings
from alertq.db import EnqueueListener, create_engine, create_session_factory, transaction
from alertq.driver import get_queue_driver
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel

Factory = async_sessionmaker[AsyncSession]
Q = CostSimAlertQueueModel


def one(**labels: str) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": "A", **labels}}]


def with_keys(**extra: Any) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": "A"}, **extra}]


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Q)) or 0)


# One case per rule: (id, payload, the exact prefix naming index and field, a rule fragment).
REJECTED: list[tuple[str, object, str, str]] = [
    ("wrong-top-level-object", {"labels": {"alertname": "A"}}, "payload: ", "JSON array"),
    ("wrong-top-level-string", "[]", "payload: ", "JSON array of alerts (got str)"),
    ("empty-list", [], "payload: ", "at least one alert"),
    ("too-many", [{"labels": {"alertname": f"A{i}"}} for i in range(257)], "payload: ", "max"),
    ("alert-not-object", [*one(), 7], "alert[1]: ", "JSON object (got int)"),
    ("labels-missing", [{"annotations": {"a": "b"}}], "alert[0].labels: ", "required"),
    ("labels-empty", [{"labels": {}}], "alert[0].labels: ", "must not be empty"),
    ("no-alertname", [{"labels": {"severity": "P1"}}], "alert[0].labels.alertname: ", "alertname"),
    ("label-not-string", [*one(), {"labels": {"alertname": "B", "n": 3}}], "alert[1].labels.n: ",
     "must be a string (got int)"),
    ("label-empty-value", one(team=""), "alert[0].labels.team: ", "must not be empty"),
    ("label-name", one(**{"bad-name": "x"}), "alert[0].labels: ", "[a-zA-Z_][a-zA-Z0-9_]*"),
    ("annotation-name", with_keys(annotations={"run book": "x"}), "alert[0].annotations: ",
     "invalid annotation name"),
    ("annotation-value", with_keys(annotations={"summary": ["x"]}),
     "alert[0].annotations.summary: ", "must be a string (got list)"),
    ("starts-not-rfc3339", with_keys(startsAt="2024-05-01 12:00:00"), "alert[0].startsAt: ",
     "RFC 3339"),
    ("ends-no-timezone", with_keys(endsAt="2024-05-01T12:00:00"), "alert[0].endsAt: ", "timezone"),
    ("ends-before-starts",
     with_keys(startsAt="2024-05-01T12:00:00Z", endsAt="2024-05-01T11:59:59Z"),
     "alert[0].endsAt: ", "must not be before startsAt"),
    ("generator-javascript", with_keys(generatorURL="javascript://x/%0Aalert(1)"),
     "alert[0].generatorURL: ", "http(s) URL"),
    ("generator-not-string", with_keys(generatorURL=42), "alert[0].generatorURL: ", "got int"),
    ("duplicate-label-set", [*one(x="1"), {"labels": {"x": "1", "alertname": "A"}}],
     "alert[1].labels: ", "duplicate label set: same labels as alert[0]"),
    ("unknown-key", with_keys(status="firing"), "alert[0]: ", "unknown key 'status'"),
    ("nul-in-value", one(v="a\x00b"), "alert[0].labels.v: ", "NUL"),
    ("lone-surrogate", one(v="a\ud800"), "alert[0].labels.v: ", "UTF-8"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "where", "rule"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
async def test_bad_payload_is_rejected_with_a_clear_message_and_changes_nothing(
    session_factory: Factory, payload: object, where: str, rule: str
) -> None:
    async with transaction(session_factory) as s:
        await enqueue_alert(s, one(), "disable")
    async with session_factory() as s, s.begin():
        # The caller's own work in the same transaction, before the bad enqueue.
        kept = await enqueue_alert(s, one(ok="kept"), "disable")
        before = await count(s)
        with pytest.raises(InvalidAlertPayload) as info:
            await enqueue_alert(s, payload, "disable")
        message = str(info.value)
        assert message.startswith(where) and rule in message, message
        # The transaction is still usable (on PostgreSQL a failed statement would abort
        # it), and the bad enqueue left nothing behind.
        assert await count(s) == before
    async with session_factory() as s:
        ids = list((await s.scalars(select(Q.id).order_by(Q.id))).all())
    assert ids == [1, kept.id] and kept.id == 2


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[NaN]", "NaN is not a JSON value"),
        ('"just a string"', "JSON array of alerts (got str)"),
        ('{"labels": {"alertname": "A"}}', "JSON array of alerts (got dict)"),
        ("42", "JSON array of alerts (got int)"),
    ],
)
async def test_non_json_and_wrong_top_level_text_is_rejected_before_the_database(
    session_factory: Factory, raw: str, rule: str
) -> None:
    async with session_factory() as s, s.begin():
        with pytest.raises(InvalidAlertPayload) as info:
            await enqueue_alert(s, parse_payload(raw), "disable")
        assert str(info.value).startswith("payload: ") and rule in str(info.value)
        assert await count(s) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("",), "alert_type: must be a non-empty string"),
        (("disable", "cb\x00"), "circuit_breaker_name: must not contain NUL"),
        (("disable", None, 12), "incident_id: must be a string (got int)"),
    ],
)
async def test_bad_enqueue_arguments_are_rejected_and_change_nothing(
    session_factory: Factory, args: tuple[Any, ...], message: str
) -> None:
    async with session_factory() as s, s.begin():
        with pytest.raises(InvalidAlertPayload, match=re.escape(message)):
            await enqueue_alert(s, one(), *args)
        assert await count(s) == 0
        await enqueue_alert(s, one(), "disable")  # the transaction is still usable
    async with session_factory() as s:
        assert await count(s) == 1


# --------------------------------------------------------------------------- hypothesis

_NAMES = st.sampled_from(["severity", "team", "_x", "a1", "instance", "1a", "bad-name", "", "é"])
_TEXT = st.text(max_size=8) | st.sampled_from(["", "\x00", "x\ud800", "ok", "'; --"])
_VALUE = st.one_of(_TEXT, _TEXT, _TEXT, st.integers(), st.none(), st.booleans())
_TIME = st.sampled_from(
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00.123456789+02:00",
        "2030-01-01T00:00:00Z",
        "2024-05-01 12:00:00",
        "2024-02-30T00:00:00Z",
        "",
        17,
        None,
    ]
)
_URL = st.sampled_from(["https://prom.example/graph?g0.expr=up", "http://h:9090", "/rel", 5, None])
_GOOD_LABELS = st.builds(
    lambda name, extra: {"alertname": name, **extra},
    st.text(min_size=1, max_size=6).filter(lambda t: "\x00" not in t),
    st.dictionaries(st.sampled_from(["severity", "team", "_x"]), st.text(min_size=1, max_size=4)),
)
_ANY_LABELS = st.one_of(
    _GOOD_LABELS,
    _GOOD_LABELS,
    st.dictionaries(_NAMES, _VALUE, max_size=3),
    st.builds(lambda d: {"alertname": "A", **d}, st.dictionaries(_NAMES, _VALUE, max_size=2)),
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)
_ALERT = st.fixed_dictionaries(
    {"labels": _ANY_LABELS},
    optional={
        "annotations": st.dictionaries(_NAMES, _VALUE, max_size=2),
        "startsAt": _TIME,
        "endsAt": _TIME,
        "generatorURL": _URL,
        "status": st.just("firing"),
    },
)
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
_GOOD_ALERT = st.fixed_dictionaries(
    {"labels": _GOOD_LABELS},
    optional={
        "annotations": st.dictionaries(st.sampled_from(["summary", "runbook_url"]), st.text()),
        "startsAt": st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00.5+02:00"]),
        "endsAt": st.sampled_from(["2030-01-01T00:00:00Z", "2024-05-01T09:00:00-01:00"]),
        "generatorURL": st.sampled_from(["https://prom.example/graph?g0.expr=up", "http://h:1"]),
    },
)
_PAYLOADS = st.one_of(
    st.lists(_GOOD_ALERT, min_size=1, max_size=3),
    st.lists(st.one_of(_GOOD_ALERT, _ALERT), min_size=1, max_size=3),
    st.lists(st.one_of(_ALERT, _JSONISH), max_size=3),
    _JSONISH,
)


def test_random_payloads_are_stored_or_rejected_with_only_invalid_alert_payload(
    db_url: str,
) -> None:
    outcomes = {"stored": 0, "rejected": 0}

    async def check(factory: Factory, payload: object) -> None:
        async with factory() as s:
            before = await count(s)
            try:
                row = await enqueue_alert(s, payload, "disable")
            except InvalidAlertPayload:
                outcomes["rejected"] += 1
                assert await count(s) == before  # nothing behind, transaction usable
            else:
                outcomes["stored"] += 1
                normalised = validate_payload(payload)
                stored = await s.scalar(select(Q.payload).where(Q.id == row.id))
                assert stored == normalised
                assert await count(s) == before + 1
            await s.rollback()

    with asyncio.Runner() as runner:
        engine = create_engine(Settings(database_url=db_url))
        factory = create_session_factory(engine)

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(payload=_PAYLOADS)
        def property_holds(payload: object) -> None:
            runner.run(check(factory, payload))

        async def remaining() -> int:
            async with factory() as s:
                return await count(s)

        try:
            property_holds()
            assert runner.run(remaining()) == 0
        finally:
            runner.run(engine.dispose())
    # Both branches were really exercised.
    assert outcomes["stored"] >= 10 and outcomes["rejected"] >= 10, outcomes


# --------------------------------------------------------------------------- storage


TRICKY = {
    "alertname": "Robert'); DROP TABLE costsim_alert_queue;--",
    "quote": "it's \"double\" and 'single'",
    "backslash": "C:\\path\\to\\n\\x00-not-a-nul",
    "percent": "100% _like_ %s %(name)s $1 ? :param",
    "json": '{"a": [1, 2]} null true',
    "unicode": "ünïcødé — 日本語 🚨 עברית \u200b zero-width",
    "newline": "line1\nline2\ttab\r\n",
    "combining": "e\u0301 vs é",
}


async def test_sql_metacharacters_and_unicode_are_stored_and_read_back_verbatim(
    session_factory: Factory,
) -> None:
    payload = [
        {
            "labels": TRICKY,
            "annotations": {"summary": TRICKY["alertname"], "description": TRICKY["unicode"]},
            "generatorURL": "https://prom.example/graph?g0.expr=up%7Bjob%3D%22x%22%7D&x='y'",
        }
    ]
    async with transaction(session_factory) as s:
        row = await enqueue_alert(s, payload, "disable", "cb'; --", "inc-ü")
    async with session_factory() as s:
        stored = await s.get(Q, row.id)
        assert stored is not None
        assert stored.payload == payload
        assert stored.payload[0]["labels"] == TRICKY
        assert (stored.circuit_breaker_name, stored.incident_id) == ("cb'; --", "inc-ü")
        assert stored.fingerprint == label_fingerprint(TRICKY)
        # The table survived the "DROP TABLE" label.
        assert await count(s) == 1


async def test_newer_enqueue_supersedes_the_older_pending_row_with_the_same_labels(
    session_factory: Factory,
) -> None:
    now = datetime.now(UTC)
    firing = [{"labels": {"alertname": "Breaker", "cb": "x"}, "annotations": {"v": "1"}}]
    resolved = [{**firing[0], "annotations": {"v": "2"}, "endsAt": "2026-01-01T00:00:00Z"}]
    other = [{"labels": {"alertname": "Breaker", "cb": "y"}}]
    async with transaction(session_factory) as s:
        old = await enqueue_alert(s, firing, "disable", now=now)
        unrelated = await enqueue_alert(s, other, "disable", now=now)
    async with transaction(session_factory) as s:
        new = await enqueue_alert(s, resolved, "enable", now=now + timedelta(seconds=1))
    async with session_factory() as s:
        rows = {r.id: r for r in (await s.scalars(select(Q))).all()}
    assert rows[old.id].status == "superseded"
    assert "superseded" in (rows[old.id].last_error or "")
    assert rows[new.id].status == "pending"
    assert rows[unrelated.id].status == "pending"  # different labels: untouched
    assert rows[old.id].fingerprint == rows[new.id].fingerprint != rows[unrelated.id].fingerprint


async def test_an_older_sent_row_is_not_touched_by_a_newer_enqueue(
    session_factory: Factory,
) -> None:
    async with transaction(session_factory) as s:
        old = await enqueue_alert(s, one(cb="x"), "disable")
    async with transaction(session_factory) as s:
        row = await s.get(Q, old.id)
        assert row is not None
        row.status = "sent"
    async with transaction(session_factory) as s:
        await enqueue_alert(s, one(cb="x"), "enable")
    async with session_factory() as s:
        statuses = list((await s.scalars(select(Q.status).order_by(Q.id))).all())
    assert statuses == ["sent", "pending"]


# --------------------------------------------------------------------------- NOTIFY


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_notify_wakes_a_listener_only_when_the_enqueue_commits(
    db_url: str, session_factory: Factory
) -> None:
    woken = asyncio.Event()
    listener = EnqueueListener(db_url, woken.set, timeout=Settings(database_url=db_url).db_timeout)
    await listener.start()
    try:
        # The listener calls back once when its LISTEN is in place.
        await asyncio.wait_for(woken.wait(), 10)
        woken.clear()

        async with session_factory() as s:
            await enqueue_alert(s, one(n="rolled-back"), "disable", notify_throttle=0)
            await s.rollback()
        # Absence cannot be awaited: a bounded wait is the only way to see it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), 1.0)
        assert not woken.is_set(), "a rolled-back enqueue notified the workers"

        async with session_factory() as s, s.begin():
            await enqueue_alert(s, one(n="committed"), "disable", notify_throttle=0)
        await asyncio.wait_for(woken.wait(), 10)
    finally:
        await listener.stop()


async def test_the_enqueue_stores_exactly_what_sqlalchemys_own_insert_stores(
    session_factory: Factory,
) -> None:
    # SQLite's enqueue runs plain sqlite3 statements (one hand-off to aiosqlite's thread):
    # every column must be stored as the ORM's insert stores it, and the row it returns
    # must equal the row read back.
    # Not UTC: the stored and returned timestamps must be UTC all the same.
    now = datetime(2026, 12, 2, 3, 2, 3, 456789, tzinfo=timezone(timedelta(hours=2)))
    payload = validate_payload(
        [{"labels": {"alertname": "Same", "t": "ü'\"; --"}, "annotations": {"a": "b"}}], now=now
    )
    async with transaction(session_factory) as s:
        fast = await enqueue_alert(s, payload, "disable", "cb", "inc", now=now, max_attempts=7)
        fast_id = fast.id
        # repr: equal instants in other offsets compare equal, and must not pass.
        returned = {c.key: repr(getattr(fast, c.key)) for c in Q.__table__.c}
    async with transaction(session_factory) as s:
        orm = await get_queue_driver(s).alerts_insert(
            payload,
            "disable",
            "cb",
            "inc",
            fingerprint=payload_fingerprint(payload),
            max_attempts=7,
            now=now,
        )
        orm_id = orm.id
    async with session_factory() as s:
        stored = {
            r[0]: tuple(r[1:])
            for r in (await s.execute(text("SELECT * FROM costsim_alert_queue"))).all()
        }
        loaded = await s.get(Q, fast_id)
        assert loaded is not None
        assert {c.key: repr(getattr(loaded, c.key)) for c in Q.__table__.c} == returned
    assert stored[fast_id] == stored[orm_id]
