"""alertq.intake without Alertmanager: the cases the differential test cannot compare (an
Alertmanager crash, alertq's deliberate refusals) and the guarantee that whatever the
parser returns for storage passes alerts.py's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alertq.intake import _go_decode, check_storable, parse_alerts_body
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


def go_decode_reference(raw: bytes) -> str:
    """Go's rule, the slow way: decode, and on an error put one U+FFFD for the first
    byte of the invalid sequence and go on from the next byte."""
    out, i = [], 0
    while i < len(raw):
        for width in (1, 2, 3, 4):
            try:
                out.append(raw[i : i + width].decode("utf-8"))
                i += width
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            [
                b"a",
                b"\xc3\xa9",
                b"\xe2\x82\xac",
                b"\xf0\x9f\x98\x80",
                b"\x80",
                b"\xbf",
                b"\xc2",
                b"\xe2",
                b"\xe2\x82",
                b"\xed\xa0\x80",
                b"\xf0\x9f\x98",
                b"\xf4\x90\x80\x80",
                b"\xc0\xaf",
                b"\xff",
            ]
        ),
        max_size=12,
    )
)
def test_invalid_utf8_becomes_one_replacement_per_byte_as_go_decodes_it(
    pieces: list[bytes],
) -> None:
    # Red-team pass 3: the rule now runs in C (surrogateescape, then one regular
    # expression); a Python error handler per invalid byte took 3.5 s on 4 MB of 0xff.
    raw = b"".join(pieces)
    assert _go_decode(raw) == go_decode_reference(raw), raw
