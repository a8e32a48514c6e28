"""The circuit breaker's transitions (on SQLite and PostgreSQL) and its alert builders.

Split by test tier: these are the unit tests; see also ``tests/integration/test_breaker.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alertq.alerts import (
    BREAKER_ALERTNAME,
    breaker_firing_payload,
    breaker_resolved_payload,
    label_fingerprint,
    validate_payload,
    with_ends_at,
)
from alertq.breaker import IncidentView

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def incident(**overrides: Any) -> IncidentView:
    values: dict[str, Any] = {
        "id": "abc123def456",
        "circuit_breaker_name": "costsim_v2",
        "timestamp": T0,
        "reason": "drift 0.6 above 0.2 for 3 consecutive reports",
        "severity": "P1",
        "drift_score": 0.6,
        "sample_count": 10,
        "details": None,
        "resolved": False,
        "resolved_at": None,
        "resolved_by": None,
        "resolution_notes": None,
        "alert_sent": False,
        "alert_sent_at": None,
        "alert_response": None,
    }
    values.update(overrides)
    return IncidentView(**values)


BUILD = {"instance": "prod-1", "runbook_url": "https://runbooks.example.com/cb"}


def test_firing_and_resolving_alerts_carry_identical_labels() -> None:
    open_ = incident()
    firing = breaker_firing_payload(open_, now=T0, resend_interval=60, **BUILD)
    closed = replace(open_, resolved=True, resolved_at=T0 + timedelta(hours=1), resolved_by="me")
    resolving = breaker_resolved_payload(closed, **BUILD)
    assert len(firing) == len(resolving) == 1
    assert firing[0]["labels"] == resolving[0]["labels"]
    assert firing[0]["labels"] == {
        "alertname": BREAKER_ALERTNAME,
        "circuit_breaker": "costsim_v2",
        "severity": "P1",
        "component": "circuit_breaker",
        "instance": "prod-1",
        "incident_id": "abc123def456",
    }
    assert label_fingerprint(firing[0]["labels"]) == label_fingerprint(resolving[0]["labels"])
    for alert in (firing[0], resolving[0]):
        assert alert["annotations"]["runbook_url"] == BUILD["runbook_url"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_labels_do_not_change_between_sends() -> None:
    """Nothing time- or attempt-dependent in the labels: every send is the same alert."""
    sends = [
        breaker_firing_payload(
            incident(), now=T0 + timedelta(minutes=m), resend_interval=60, **BUILD
        )
        for m in (0, 1, 90)
    ]
    assert len({label_fingerprint(p[0]["labels"]) for p in sends}) == 1
    assert len({p[0]["endsAt"] for p in sends}) == 3


def test_firing_alert_starts_at_the_trip_and_ends_four_intervals_from_now() -> None:
    now = T0 + timedelta(minutes=7)
    payload = breaker_firing_payload(incident(), now=now, resend_interval=5, **BUILD)
    assert validate_payload(payload) == payload
    assert parse(payload[0]["startsAt"]) == T0
    assert parse(payload[0]["endsAt"]) == now + timedelta(seconds=20)
    assert "generatorURL" not in payload[0]
    with_url = breaker_firing_payload(
        incident(), now=now, resend_interval=5, generator_url="https://app.example.com/cb", **BUILD
    )
    assert with_url[0]["generatorURL"] == "https://app.example.com/cb"


def test_resolving_alert_ends_at_the_resolution_time() -> None:
    resolved_at = T0 + timedelta(hours=2, seconds=3)
    closed = incident(
        resolved=True, resolved_at=resolved_at, resolved_by="ops", resolution_notes="ok"
    )
    payload = breaker_resolved_payload(closed, **BUILD)
    assert validate_payload(payload) == payload
    assert parse(payload[0]["startsAt"]) == T0
    assert parse(payload[0]["endsAt"]) == resolved_at
    assert "ops" in payload[0]["annotations"]["description"]
    with pytest.raises(ValueError, match="not resolved"):
        breaker_resolved_payload(incident(), **BUILD)


def test_refreshing_ends_at_keeps_labels_and_never_precedes_start() -> None:
    payload = breaker_firing_payload(incident(), now=T0, resend_interval=60, **BUILD)
    later = with_ends_at(payload, T0 + timedelta(hours=5))
    assert later[0]["labels"] == payload[0]["labels"]
    assert later[0]["annotations"] == payload[0]["annotations"]
    assert parse(later[0]["endsAt"]) == T0 + timedelta(hours=5)
    earlier = with_ends_at(payload, T0 - timedelta(hours=1))
    assert parse(earlier[0]["endsAt"]) == T0
