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

Split by test tier: these are the acceptance tests; see also
``tests/integration/test_hostile_input.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver import get_alert_driver
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from tests.integration.test_hostile_input import FUZZ, Factory, am_settings, run_property
from tests.support.alertmanager import AlertmanagerProcess
from tests.support.processes import alertq_env, run_alertq_async

TRICKY = {
    "drop": "'; DROP TABLE costsim_alert_queue; --",
    "percent": "100% done %s %% _ LIKE '%'",
    "backslash": "C:\\temp\\new \\' \\\" \\\\ \\u0041",
    "dollar": "$1 $$ $body$ ${HOME} ?1 :name",
    "quotes": 'it\'s "double" `back` ‘curly’ “both”',
    "emoji": "🚨🔥 👩\u200d💻 🇺🇳",
    "rtl": "\u202eevil\u202c שלום مرحبا",
    "matcher": 'x{a="b",c=~".*"}!~',
    "control": "tab\there\nnewline\r\n\x07bell",
    "json": '{"a": [1, null]} null',
}


def tricky_payloads(run: str) -> list[list[dict[str, Any]]]:
    """One row per tricky value (it is the alertname too), and one with them all."""
    rows = [
        [
            {
                "labels": {"alertname": value, "run": run, "case": case, "value": value},
                "annotations": {"summary": value, "description": f"{case}: {value}"},
            }
        ]
        for case, value in TRICKY.items()
    ]
    everything = {"alertname": "AllAtOnce", "run": run, **TRICKY}
    rows.append([{"labels": everything, "annotations": dict(TRICKY)}])
    return rows


def canonical(alerts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Labels and annotations of alerts, comparable regardless of order."""
    return sorted(
        (
            json.dumps(a["labels"], sort_keys=True, ensure_ascii=False),
            json.dumps(a.get("annotations", {}), sort_keys=True, ensure_ascii=False),
        )
        for a in alerts
    )


async def statuses(factory: Factory) -> dict[int, str]:
    async with factory() as s:
        return {r.id: r.status for r in await get_alert_driver(s).alerts_list(limit=10_000)}


@pytest.mark.alertmanager
async def test_sql_metacharacters_and_unicode_in_labels_reach_alertmanager_verbatim(
    db_url: str, session_factory: Factory, alertmanager: AlertmanagerProcess
) -> None:
    run = uuid.uuid4().hex
    payloads = tricky_payloads(run)
    async with transaction(session_factory) as s:
        for payload in payloads:
            await enqueue_alert(s, payload, "disable", "cb'; --", "inc-%$1")
    worker = AlertWorker(am_settings(db_url, alertmanager.url), session_factory)
    await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 60)

    assert set((await statuses(session_factory)).values()) == {"sent"}
    async with session_factory() as s:
        stored = [r.payload for r in await get_alert_driver(s).alerts_list(limit=100)]
    expected = [a for p in payloads for a in p]
    assert canonical([a for p in stored for a in p]) == canonical(expected)
    received = alertmanager.alerts(filter=f'run="{run}"')
    assert canonical(received) == canonical(expected)
    # The table survived the DROP TABLE label.
    assert len(await statuses(session_factory)) == len(payloads)


# Anything the validator accepts as a label value must come back from Alertmanager as is.
_VALUES = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=40,
)


@pytest.mark.alertmanager
def test_any_accepted_label_value_reaches_alertmanager_verbatim(
    db_url: str, alertmanager: AlertmanagerProcess
) -> None:
    def check(factory: Factory, runner: asyncio.Runner) -> None:
        settings_ = am_settings(db_url, alertmanager.url)
        worker = AlertWorker(settings_, factory)

        async def deliver(values: list[str]) -> None:
            run = uuid.uuid4().hex
            expected = [
                {"labels": {"alertname": "Fuzzed", "run": run, "n": str(i), "value": v},
                 "annotations": {"summary": v}}
                for i, v in enumerate(values)
            ]  # fmt: skip
            async with transaction(factory) as s:
                for alert in expected:
                    await enqueue_alert(s, [alert], "disable")
            async with AlertmanagerClient.from_settings(settings_) as client:
                assert await worker.run_once(client) == len(values)
            received = await asyncio.to_thread(alertmanager.alerts, None, f'run="{run}"')
            assert canonical(received) == canonical(expected)

        @settings(FUZZ, max_examples=25)
        @given(values=st.lists(_VALUES, min_size=1, max_size=8, unique=True))
        def holds(values: list[str]) -> None:
            runner.run(deliver(values))

        holds()

    run_property(db_url, check)


@pytest.mark.alertmanager
async def test_a_row_alertmanager_refuses_never_blocks_the_rows_behind_it(
    db_url: str, session_factory: Factory, alertmanager: AlertmanagerProcess, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex
    # A legacy row, inserted without validation as the old system could have: Alertmanager
    # refuses it (endsAt before startsAt).
    legacy = [
        {
            "labels": {"alertname": "LegacyBackwards", "run": run},
            "startsAt": "2024-01-02T00:00:00Z",
            "endsAt": "2024-01-01T00:00:00Z",
        }
    ]
    async with transaction(session_factory) as s:
        bad = await get_alert_driver(s).insert_alert(legacy, "disable", None, None)
    async with transaction(session_factory) as s:
        good = [
            (
                await enqueue_alert(
                    s, [{"labels": {"alertname": "Behind", "run": run, "n": str(i)}}], "disable"
                )
            ).id
            for i in range(50)
        ]

    env = alertq_env(db_url, alertmanager.url, alertmanager_timeout=5, lease_seconds=10)
    result = await run_alertq_async(["worker", "--drain"], env, cwd=tmp_path, within=120)
    assert result.returncode == 0, result.describe()

    async with session_factory() as s:
        rows = {r.id: r for r in await get_alert_driver(s).alerts_list(limit=1000)}
    assert rows[bad.id].status == "failed"
    assert rows[bad.id].attempts == 1  # refused once means refused: dead-lettered at once
    assert "start time must be before end time" in (rows[bad.id].last_error or "")
    assert {rows[i].status for i in good} == {"sent"}
    received = alertmanager.alerts(filter=f'run="{run}"')
    assert sorted(int(a["labels"]["n"]) for a in received) == list(range(50))
    assert all(a["labels"]["alertname"] == "Behind" for a in received)
