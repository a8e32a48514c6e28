"""alertq.intake without Alertmanager: the cases the differential test cannot compare (an
Alertmanager crash, alertq's deliberate refusals) and the guarantee that whatever the
parser returns for storage passes alerts.py's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from alertq.intake import check_storable, parse_alerts_body
from tests.support.relay_corpus import CASES, DELIBERATE

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("name", "body"), CASES + list(DELIBERATE.items()))
def test_every_alert_returned_for_storage_passes_the_payload_rules(name: str, body: bytes) -> None:
    result = parse_alerts_body(body, received_at=NOW)
    for alert in result.alerts:
        check_storable(alert)
        assert "\x00" not in json.dumps(alert)
    assert len(result.fingerprints) == len(result.alerts)


def test_a_null_alert_is_a_422_where_alertmanager_0_25_drops_the_connection() -> None:
    result = parse_alerts_body(b"[null]", received_at=NOW)
    assert result.status == 422
    assert json.loads(result.body) == {"code": 602, "message": "0.labels in body is required"}


def test_amtool_zero_start_becomes_the_time_received_and_year_one_is_kept() -> None:
    body = json.dumps(
        [
            {"labels": {"a": "1"}, "startsAt": "0001-01-01T00:00:00Z"},
            {
                "labels": {"a": "2"},
                "startsAt": "0001-06-01T00:00:00Z",
                "endsAt": "2099-01-01T00:00:00Z",
            },
        ]
    ).encode()
    result = parse_alerts_body(body, received_at=NOW)
    assert [a["startsAt"] for a in result.alerts] == [
        "2026-12-01T12:00:00Z",
        "0001-06-01T00:00:00Z",
    ]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "mailto:a@b", "data:text/html,x", "a:b"])
def test_non_http_generator_urls_are_refused_alone(url: str) -> None:
    body = json.dumps(
        [{"labels": {"alertname": "Bad"}, "generatorURL": url}, {"labels": {"alertname": "Ok"}}]
    ).encode()
    result = parse_alerts_body(body, received_at=NOW)
    assert result.status == 400
    assert [a["labels"]["alertname"] for a in result.alerts] == ["Ok"]
    assert "is not http or https" in json.loads(result.body)


def test_naive_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        parse_alerts_body(b"[]", received_at=datetime(2026, 1, 1))
