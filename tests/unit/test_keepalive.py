"""Keep-alive: incident alerts are re-sent through the queue, reusing their rows.

Split by test tier: these are the unit tests; see also ``tests/integration/test_keepalive.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alertq.keepalive import keepalive_decision, keepalive_tick

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def decision(**overrides: Any) -> tuple[bool, datetime | None]:
    values: dict[str, Any] = {
        "alert_type": "disable",
        "status": "sent",
        "sent_at": T0,
        "last_attempt_at": T0,
        "incident_resolved": False,
        "incident_resolved_at": None,
        "now": T0 + timedelta(seconds=60),
        "resend_interval": 60.0,
        "resolved_retention": 900.0,
    }
    values.update(overrides)
    d = keepalive_decision(**values)
    assert d.reason
    return d.rearm, d.ends_at


NOW = T0 + timedelta(seconds=60)


LATER = NOW + timedelta(seconds=240)


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("open incident, sent an interval ago", {}, (True, LATER)),
        ("open incident, sent 30 s ago", {"sent_at": T0 + timedelta(seconds=30)}, (False, None)),
        ("within one tick of the interval", {"sent_at": T0 + timedelta(seconds=5)}, (True, LATER)),
        ("not quite", {"sent_at": T0 + timedelta(seconds=6)}, (False, None)),
        ("still pending", {"status": "pending"}, (False, None)),
        ("superseded", {"status": "superseded"}, (False, None)),
        ("failed an interval ago", {"status": "failed", "sent_at": None}, (True, LATER)),
        (
            "failed just now",
            {"status": "failed", "sent_at": None, "last_attempt_at": NOW},
            (False, None),
        ),
        (
            "firing row of a resolved incident",
            {"incident_resolved": True, "incident_resolved_at": T0},
            (False, None),
        ),
        (
            "resolving row within retention",
            {"alert_type": "enable", "incident_resolved": True, "incident_resolved_at": T0},
            (True, None),
        ),
        (
            "resolving row at the end of retention",
            {
                "alert_type": "enable",
                "incident_resolved": True,
                "incident_resolved_at": NOW - timedelta(seconds=900),
            },
            (False, None),
        ),
        (
            "resolving row of an open incident",
            {"alert_type": "enable", "incident_resolved": False},
            (False, None),
        ),
        ("other alert types", {"alert_type": "canary_fail"}, (False, None)),
    ],
)
def test_keepalive_decision(
    case: str, overrides: dict[str, Any], expected: tuple[bool, datetime | None]
) -> None:
    assert decision(**overrides) == expected, case


@pytest.mark.parametrize(("interval", "tick"), [(60, 5.0), (5, 1.0), (1, 0.2), (3600, 5.0)])
def test_keepalive_tick_is_a_fifth_of_the_interval_at_most_five_seconds(
    interval: float, tick: float
) -> None:
    assert keepalive_tick(interval) == tick
