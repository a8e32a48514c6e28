"""Findings of the red-team pass on the relay intake (issue 11 on top of issue 9): each
test failed on main before its fix.

Split by test tier: these are the integration tests; see also
``tests/unit/test_redteam_intake.py`` and ``tests/acceptance/test_redteam_intake.py``.
"""

from __future__ import annotations

import pytest

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
