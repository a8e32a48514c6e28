"""The Alertmanager delivery adapter (alertq.delivery) against a fault-injecting stub and
against a real Alertmanager.

Split by test tier: these are the unit tests; see also ``tests/integration/test_delivery.py``
and ``tests/acceptance/test_delivery.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from alertq.delivery import (
    AlertmanagerClient,
    TargetResult,
    parse_retry_after,
    target_key,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("30", 30.0),
        (" 2.5 ", 2.5),
        ("-5", 0.0),  # clamped
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0),  # relative to `now` below
        ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),  # in the past: clamped
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now=now) == expected


def test_target_key_strips_userinfo_and_trailing_slash() -> None:
    assert target_key("http://u:pw@127.0.0.1:9093/") == "http://127.0.0.1:9093"
    assert target_key("HTTPS://am.example/prefix/") == "https://am.example/prefix"
    assert target_key("http://[::1]:9093") == "http://[::1]:9093"


def test_invalid_urls_are_rejected_without_echoing_credentials() -> None:
    for url in ("ftp://u:hunter2pw@host", "http://u:hunter2pw@host/?x=1", "http://u:hunter2pw@"):
        with pytest.raises(ValueError) as info:
            AlertmanagerClient([url])
        assert "hunter2pw" not in str(info.value)


def test_basic_and_bearer_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="not both"):
        AlertmanagerClient(["http://x"], username="u", password="p", bearer_token="t")


def test_repr_names_the_auth_kind_only() -> None:
    client = AlertmanagerClient(["http://u:pw123@127.0.0.1:9093"], bearer_token="abc-token")
    assert repr(client) == (
        "AlertmanagerClient(targets=['http://127.0.0.1:9093'], timeout=10.0, auth='bearer')"
    )


def test_result_type_is_frozen() -> None:
    result = TargetResult("http://x", True, None, 200, "", None, 0.1, None)
    with pytest.raises(AttributeError):
        result.ok = False  # type: ignore[misc]
