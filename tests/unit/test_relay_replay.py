"""Restart replay, acceptance: 5,000 relayed live alerts and an Alertmanager restart (its
memory wiped): all the firing ones are listed again within 15 s, and the resolved ones
come back as resolved, on SQLite and PostgreSQL. Plus the detection rules of
:class:`ReplayService` and the liveness rule.

Split by test tier: these are the unit tests; see also
``tests/acceptance/test_relay_replay.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alertq.config import Settings
from alertq.replay import is_live

JSON = {"Content-Type": "application/json"}


def test_liveness_follows_prometheus_retention() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    retention = timedelta(minutes=15)
    firing = {"endsAt": "2026-01-01T12:01:00Z"}
    just_resolved = {"endsAt": "2026-01-01T11:50:00Z"}
    long_resolved = {"endsAt": "2026-01-01T11:40:00Z"}
    assert is_live(firing, now - timedelta(days=1), now, retention)
    assert is_live(just_resolved, now, now, retention)
    assert not is_live(long_resolved, now, now, retention)
    # No endsAt: Alertmanager's resolve_timeout (5 min) from when it was received.
    assert is_live({}, now - timedelta(minutes=4), now, retention)
    assert not is_live({}, now - timedelta(minutes=6), now, retention)


def test_replay_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ALERTQ_REPLAY_INTERVAL", "7.5")
    assert Settings().replay_interval == 7.5
