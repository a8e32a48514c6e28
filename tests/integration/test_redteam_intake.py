"""Findings of the red-team pass on the relay intake (issue 11 on top of issue 9): each
test failed on main before its fix.

Split by test tier: these are the integration tests; see also
``tests/unit/test_redteam_intake.py`` and ``tests/acceptance/test_redteam_intake.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.test_cli_hardening import alertq
from tests.integration.test_relay_api import alert, relay, relay_settings


async def test_a_body_with_more_alerts_than_the_limit_is_refused_before_any_is_parsed(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One 4 MiB body of 165,586 tiny alerts took 44 s and froze the whole server (the
    # probes answered after 22 s): parsing ran on the event loop with no count limit.
    monkeypatch.setenv("ALERTQ_INTAKE_MAX_ALERTS", "50")
    settings = relay_settings(db_url)
    assert settings.intake_max_alerts == 50
    async with relay(settings) as r:
        too_many = [alert(f"a{i}") for i in range(51)]
        answer = await r.post(too_many)
        assert answer.status_code == 413
        assert answer.json()["code"] == 413
        assert "ALERTQ_INTAKE_MAX_ALERTS" in answer.json()["message"]
        assert await r.rows() == []
        assert (await r.post(too_many[:50])).status_code == 200
        assert len(await r.rows()) == 50


async def test_bidi_and_line_separators_in_a_reason_are_shown_escaped_by_the_cli(
    db_url: str, tmp_path: Path
) -> None:
    # The CLI escaped C0/C1 controls only, while the text logs also escape format and
    # line-separator characters: a reason with U+202E (right-to-left override) printed
    # reversed text on the operator's terminal ("Trojan Source"). One rule for both now.
    reason = "ok \u202egnp.exe\u202c and \u2028 a new line"
    trip = await alertq(db_url, tmp_path, "breaker", "trip", "cb3", "--reason", reason)
    assert trip.returncode == 0, trip.describe()
    for command in (["breaker", "status"], ["breaker", "incidents"]):
        result = await alertq(db_url, tmp_path, *command)
        assert result.returncode == 0, result.describe()
        assert "\u202e" not in result.stdout and "\u2028" not in result.stdout, result.describe()
        assert "\\u202egnp.exe" in result.stdout, result.describe()
