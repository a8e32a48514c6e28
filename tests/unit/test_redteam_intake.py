"""Findings of the red-team pass on the relay intake (issue 11 on top of issue 9): each
test failed on main before its fix.

Split by test tier: these are the unit tests; see also
``tests/integration/test_redteam_intake.py`` and ``tests/acceptance/test_redteam_intake.py``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from alertq.config import Settings
from alertq.db import redacted_url
from alertq.intake import parse_alerts_body
from alertq.relay import intake_auth_enabled


@pytest.mark.parametrize(
    "env",
    [
        {"ALERTQ_INTAKE_BEARER_TOKEN": ""},
        {"ALERTQ_INTAKE_BEARER_TOKEN": "   "},
        {"ALERTQ_INTAKE_USERNAME": "", "ALERTQ_INTAKE_PASSWORD": ""},
        {"ALERTQ_INTAKE_USERNAME": "prom", "ALERTQ_INTAKE_PASSWORD": ""},
        {"ALERTQ_INTAKE_USERNAME": "", "ALERTQ_INTAKE_PASSWORD": "pw"},
    ],
)
def test_empty_intake_credentials_are_refused_at_start_not_matched_by_an_empty_header(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    # With ALERTQ_INTAKE_BEARER_TOKEN= (set but empty) the intake counted as protected (no
    # open-intake warning) while "Authorization: Bearer" with no token was let in; empty
    # basic credentials let "Authorization: Basic Og==" in. The issue-9 rule for the API
    # token, applied to the intake: an empty credential is a mistake, refused at start-up.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match="ALERTQ_INTAKE_"):
        Settings(database_url="sqlite+aiosqlite://")


def test_intake_credentials_with_content_still_turn_intake_auth_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTQ_INTAKE_BEARER_TOKEN", "t0ken")
    assert intake_auth_enabled(Settings(database_url="sqlite+aiosqlite://"))


def test_the_count_limit_applies_before_per_alert_work() -> None:
    calls = 0

    def check(_alert: dict[str, object]) -> None:
        nonlocal calls
        calls += 1

    body = json.dumps([{"labels": {"a": str(i)}} for i in range(20)]).encode()
    result = parse_alerts_body(body, received_at=datetime.now(UTC), check=check, max_alerts=10)
    assert (result.status, calls, result.alerts) == (413, 0, [])


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql+asyncpg://redteam_x:S3cr3tP@ss@127.0.0.1:5432/db", "ss"),
        ("postgresql+asyncpg://u:p@ss#w0rd@db.internal/alertq", "ss#w0rd"),
        ("postgresql+asyncpg://u:a@b@c@db.internal/alertq", "b@c"),
    ],
)
def test_a_password_with_an_unescaped_at_sign_is_hidden_whole(url: str, secret: str) -> None:
    # SQLAlchemy ends the password at its first '@' and puts the rest in the host, which
    # the banner, "database unreachable at ..." and CLI errors printed: the password's tail.
    shown = redacted_url(url)
    assert secret not in shown, shown
    assert "***@" in shown and shown.count("@") == 1, shown
    assert redacted_url("postgresql+asyncpg://u:p%40ss@h/db") == "postgresql+asyncpg://u:***@h/db"
