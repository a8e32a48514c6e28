"""Anything ``enqueue_alert`` accepts, a real Alertmanager 0.25 accepts (issue 9, finding 3).

Every body of ``tests/support/payload_corpus.py`` is POSTed to a real Alertmanager and given
to ``enqueue_alert`` on a real database (SQLite and PostgreSQL). alertq may refuse more than
Alertmanager (the corpus says why, case by case), never less. Each refusal must leave the
caller's transaction as it was: no row, and the next statement still runs.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import InvalidAlertPayload, parse_payload
from alertq.enqueue import enqueue_alert
from alertq.models import CostSimAlertQueueModel
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.payload_corpus import PayloadCase, build_corpus

pytestmark = pytest.mark.alertmanager

Q = CostSimAlertQueueModel
MIN_CORPUS = 60


async def _alertmanager_verdicts(
    am: AlertmanagerProcess, corpus: list[PayloadCase]
) -> dict[str, bool]:
    """POST each body; True for 200, False for 400/422 or a dropped connection."""
    verdicts: dict[str, bool] = {}
    async with httpx.AsyncClient(base_url=am.url, timeout=30, trust_env=False) as client:
        for case in corpus:
            try:
                response = await client.post(
                    "/api/v2/alerts",
                    content=case.body,
                    headers={"Content-Type": "application/json"},
                )
            except httpx.RemoteProtocolError:
                # 0.25's handler panics on some bodies (a null alert): no answer is a refusal,
                # but Alertmanager must still be serving for the next case.
                verdicts[case.id] = False
                ready = await client.get("/-/ready")
                assert ready.status_code == 200, f"{case.id}: Alertmanager did not survive"
                continue
            assert response.status_code in (200, 400, 422), (
                f"{case.id}: unexpected HTTP {response.status_code} {response.text[:200]!r}"
            )
            verdicts[case.id] = response.status_code == 200
    return verdicts


def _parses(case: PayloadCase, now: datetime) -> bool:
    try:
        parse_payload(case.body, now=now)
    except InvalidAlertPayload:
        return False
    return True


async def _count(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Q)) or 0)


async def _alertq_verdicts(
    factory: async_sessionmaker[AsyncSession], corpus: list[PayloadCase], now: datetime
) -> dict[str, bool]:
    """``enqueue_alert`` each body in one transaction; a refusal must change nothing in it."""
    verdicts: dict[str, bool] = {}
    async with factory() as session, session.begin():
        for case in corpus:
            before = await _count(session)
            try:
                await enqueue_alert(session, case.parsed(), "corpus", now=now)
            except InvalidAlertPayload:
                verdicts[case.id] = False
                # The count runs in the same transaction: on PostgreSQL it fails if any
                # statement of the refused enqueue had run and failed.
                assert await _count(session) == before, f"{case.id}: refused but left a row"
            else:
                verdicts[case.id] = True
                assert await _count(session) == before + 1, case.id
    async with factory() as session:
        stored = (await session.scalars(select(Q.payload))).all()
    stored_cases = {payload[0]["labels"].get("case") for payload in stored}
    accepted = {case.id for case in corpus if verdicts[case.id]}
    assert stored_cases == {
        case.parsed()[0]["labels"]["case"] for case in corpus if case.id in accepted
    }
    return verdicts


async def test_enqueue_alert_accepts_nothing_that_alertmanager_refuses(
    alertmanager: AlertmanagerProcess,
    session_factory: async_sessionmaker[AsyncSession],
    db_url: str,
    record_property: pytest.RecordProperty,
) -> None:
    now = datetime.now(UTC)
    corpus = build_corpus(now)  # for the fixture's resolve_timeout, 5m
    assert len(corpus) >= MIN_CORPUS
    assert len({case.id for case in corpus}) == len(corpus), "case ids must be unique"

    am = await _alertmanager_verdicts(alertmanager, corpus)
    aq = await _alertq_verdicts(session_factory, corpus, now)

    am_refused = [c.id for c in corpus if not am[c.id]]
    aq_refused = [c.id for c in corpus if not aq[c.id]]
    stricter = [c.id for c in corpus if am[c.id] and not aq[c.id]]
    summary = (
        f"payload corpus ({db_url.split(':')[0]}): {len(corpus)} bodies; Alertmanager 0.25 "
        f"refuses {len(am_refused)}, alertq refuses {len(aq_refused)} "
        f"({len(stricter)} only alertq: {', '.join(stricter)})"
    )
    print(summary)
    record_property("payload_corpus", summary)

    # The promise.
    violations = [c.id for c in corpus if aq[c.id] and not am[c.id]]
    assert not violations, f"alertq accepts what Alertmanager refuses: {violations}"
    # The same for the JSON-text entry point (CLI, relay), which also refuses duplicate keys.
    text_violations = [c.id for c in corpus if _parses(c, now) and not am[c.id]]
    assert not text_violations, (
        f"parse_payload accepts what Alertmanager refuses: {text_violations}"
    )
    # The corpus states what each peer does; a drift means the corpus (or a rule) is wrong.
    am_drift = [c.id for c in corpus if am[c.id] != c.alertmanager_accepts]
    assert not am_drift, f"Alertmanager's verdict differs from the corpus for {am_drift}"
    aq_drift = [c.id for c in corpus if aq[c.id] != c.alertq_accepts]
    assert not aq_drift, f"alertq's verdict differs from the corpus for {aq_drift}"
