"""Keep-alive of managed alerts and heartbeat deadlines, on real databases with a fake clock:
Prometheus's re-send semantics, expiry, the two-row bound, a pass that reads only what is
due, and missed heartbeats fired exactly once across concurrent passes.

Split by test tier: these are the unit tests; see also
``tests/integration/test_managed_keepalive.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alertq.managed import (
    keepalive_step,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def step(**overrides: Any) -> tuple[str, datetime | None, datetime | None]:
    values: dict[str, Any] = {
        "state": "firing",
        "row_status": "sent",
        "sent_at": T0,
        "last_attempt_at": T0,
        "starts_at": T0,
        "resolved_at": None,
        "expires_at": None,
        "now": T0 + timedelta(seconds=60),
        "resend_interval": 60.0,
        "resolved_retention": 900.0,
    }
    values.update(overrides)
    s = keepalive_step(**values)
    return s.action, s.next_at, s.ends_at


NOW = T0 + timedelta(seconds=60)


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


@pytest.mark.parametrize(
    ("case", "overrides", "expected"),
    [
        ("firing, sent an interval ago", {}, ("rearm", NOW + sec(55), NOW + sec(240))),
        ("firing, sent 30 s ago", {"sent_at": T0 + sec(30)}, ("wait", T0 + sec(85), None)),
        (
            "firing, sent one tick less than an interval ago",
            {"sent_at": T0 + sec(5)},
            ("rearm", NOW + sec(55), NOW + sec(240)),
        ),
        ("not quite", {"sent_at": T0 + sec(6)}, ("wait", NOW + sec(1), None)),
        ("firing, pending", {"row_status": "pending"}, ("wait", NOW + sec(5), None)),
        (
            "failed an interval ago",
            {"row_status": "failed", "sent_at": None},
            ("rearm", NOW + sec(55), NOW + sec(240)),
        ),
        (
            "failed just now",
            {"row_status": "failed", "sent_at": None, "last_attempt_at": NOW},
            ("wait", NOW + sec(55), None),
        ),
        # Another producer's row went first; the managed alert is re-sent on its cadence.
        (
            "superseded, attempted an interval ago",
            {"row_status": "superseded"},
            ("rearm", NOW + sec(55), NOW + sec(240)),
        ),
        (
            "superseded before any attempt",
            {"row_status": "superseded", "last_attempt_at": None},
            ("rearm", NOW + sec(55), NOW + sec(240)),
        ),
        (
            "superseded, attempted just now",
            {"row_status": "superseded", "last_attempt_at": NOW},
            ("wait", NOW + sec(55), None),
        ),
        ("row purged", {"row_status": None}, ("enqueue", NOW + sec(55), NOW + sec(240))),
        (
            "expiry soon caps endsAt and the next look",
            {"expires_at": NOW + sec(20)},
            ("rearm", NOW + sec(20), NOW + sec(20)),
        ),
        ("expired", {"expires_at": NOW}, ("expire", NOW + sec(55), None)),
        (
            "resolved within retention",
            {"state": "resolved", "resolved_at": T0 + sec(1)},
            ("rearm", NOW + sec(55), T0 + sec(1)),
        ),
        (
            "resolved at the end of retention",
            {"state": "resolved", "resolved_at": NOW - sec(900)},
            ("done", None, None),
        ),
    ],
)
def test_keepalive_step(
    case: str, overrides: dict[str, Any], expected: tuple[str, datetime | None, datetime | None]
) -> None:
    assert step(**overrides) == expected, case
