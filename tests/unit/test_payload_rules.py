"""The payload rules issue 9 (finding 3) tightened, one by one: pure, no database, no network.

Each rule keeps alertq from queueing what Alertmanager 0.25 then refuses (the differential test
against a real Alertmanager is ``test_payload_differential.py``), or, for ``generatorURL``,
what the Alertmanager UI would render as a dangerous link.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from alertq.alerts import (
    FUTURE_STARTS_AT_TOLERANCE,
    InvalidAlertPayload,
    parse_payload,
    validate_payload,
)
from alertq.config import Settings

NOW = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def with_keys(**extra: Any) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": "A"}, **extra}]


def refusal(payload: object, now: datetime | None = None) -> InvalidAlertPayload:
    with pytest.raises(InvalidAlertPayload) as info:
        validate_payload(payload, now=now)
    return info.value


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------ non-ASCII digits


@pytest.mark.parametrize(
    "value",
    [
        "١٢٣٤-05-01T12:00:00Z",  # Arabic-Indic year (the example)
        "２０２４-05-01T12:00:00Z",  # fullwidth year
        "2024-0५-01T12:00:00Z",  # Devanagari month digit
        "2024-05-01T1２:00:00Z",  # fullwidth hour digit
        "2024-05-01T12:00:00.٥Z",  # Arabic-Indic fraction
        "2024-05-01T12:00:00+०५:३०",  # Devanagari offset
        "2024-05-01T12:00:0𝟘Z",  # mathematical double-struck zero (Nd)
    ],
)
@pytest.mark.parametrize("key", ["startsAt", "endsAt"])
def test_timestamps_with_non_ascii_digits_are_refused(key: str, value: str) -> None:
    error = refusal(with_keys(**{key: value}))
    assert (error.index, error.field) == (0, key)
    assert "RFC 3339" in error.rule


@pytest.mark.parametrize("name", ["a١", "x٣", "n２", "\u212a", "\u017fx", "é"])
def test_label_and_annotation_names_with_non_ascii_characters_are_refused(name: str) -> None:
    # [a-zA-Z] is ASCII in Python, but a case-insensitive or \w pattern would take these.
    assert refusal([{"labels": {"alertname": "A", name: "v"}}]).field == "labels"
    assert refusal(with_keys(annotations={name: "v"})).field == "annotations"


# ------------------------------------------------------------------ future startsAt


def test_future_starts_at_without_ends_at_is_refused() -> None:
    starts = NOW + FUTURE_STARTS_AT_TOLERANCE + timedelta(microseconds=1)
    error = refusal(with_keys(startsAt=iso(starts)), now=NOW)
    assert (error.index, error.field) == (0, "startsAt")
    assert "give an endsAt" in error.rule
    # Far ahead, and written in another zone, alike.
    later = (NOW + timedelta(hours=1)).astimezone(timezone(timedelta(hours=-5)))
    assert refusal(with_keys(startsAt=later.isoformat()), now=NOW).field == "startsAt"
    assert refusal(with_keys(startsAt="9999-12-31T23:59:59Z"), now=NOW).field == "startsAt"


def test_future_starts_at_is_compared_to_the_nanosecond() -> None:
    edge = NOW + FUTURE_STARTS_AT_TOLERANCE
    text = edge.strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert validate_payload(with_keys(startsAt=f"{text}000Z"), now=NOW)
    assert refusal(with_keys(startsAt=f"{text}001Z"), now=NOW).field == "startsAt"


@pytest.mark.parametrize(
    "extra",
    [
        {"startsAt": iso(NOW + FUTURE_STARTS_AT_TOLERANCE)},  # clock skew: inclusive
        {"startsAt": iso(NOW - timedelta(days=1))},
        {"startsAt": "0001-01-01T00:00:00Z"},  # Go's zero time: Alertmanager reads it as now
        {"startsAt": iso(NOW + timedelta(days=1)), "endsAt": iso(NOW + timedelta(days=2))},
        {"startsAt": iso(NOW + timedelta(days=1)), "endsAt": iso(NOW + timedelta(days=1))},
        {"endsAt": iso(NOW + timedelta(days=1))},  # Alertmanager: startsAt := endsAt
    ],
)
def test_start_times_alertmanager_always_accepts_pass(extra: dict[str, str]) -> None:
    assert validate_payload(with_keys(**extra), now=NOW) == with_keys(**extra)


def test_future_starts_at_with_a_zero_ends_at_is_refused() -> None:
    # Alertmanager reads a zero endsAt as unset: now + resolve_timeout, before this startsAt.
    payload = with_keys(startsAt=iso(NOW + timedelta(hours=1)), endsAt="0001-01-01T00:00:00Z")
    assert refusal(payload, now=NOW).field == "endsAt"


def test_parse_payload_applies_the_future_rule_too() -> None:
    raw = '[{"labels": {"alertname": "A"}, "startsAt": "2030-01-01T00:00:00Z"}]'
    with pytest.raises(InvalidAlertPayload, match=r"startsAt: startsAt \(2030"):
        parse_payload(raw, now=NOW)


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="naive"):
        validate_payload(with_keys(), now=datetime(2026, 1, 1))


# ------------------------------------------------------------------ generatorURL


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("javascript:alert(document.domain)", r"http\(s\) URL"),
        ("javascript://x/%0Aalert(1)", r"http\(s\) URL"),
        ("JavaScript://x/%0Aalert(1)", r"http\(s\) URL"),
        ("data:text/html,<script>alert(1)</script>", r"http\(s\) URL"),
        ("data://x/text/html;base64,PHNjcmlwdD4=", r"http\(s\) URL"),
        ("file:///etc/passwd", r"http\(s\) URL"),
        ("ftp://ftp.example/x", r"http\(s\) URL"),
        ("vbscript://x/msgbox", r"http\(s\) URL"),
        ("//evil.example/x", r"single /"),
        ("/\\evil.example/x", r"single /"),
        ("https://user:secret@prom.example/", r"user info"),
        ("https://prom.example@evil.example/", r"user info"),
        ("http:///graph", r"http\(s\) URL"),
        ("http:prom.example", r"http\(s\) URL"),
        ("https:/prom.example/x", r"http\(s\) URL"),
        ("https://prom.example/graph%zz", r"every %"),
        ("https://prom.example/graph%2", r"every %"),
        ("https://prom%zz.example/", r"every %"),
        ("https://prom.example#x/y", r"http\(s\) URL"),
        ("https://prom.example:http/", r"http\(s\) URL"),
        ("https://prom.example:65536/", r"http\(s\) URL"),
        ("https://[zz::1]/", r"http\(s\) URL"),
        ("https://prom.example/\u202egnp.exe", r"control characters"),
        ("https://prom.example/a\u200bb", r"control characters"),
        ("https://prom.example/a\x85b", r"control characters"),
        ("https://prom.example/a\u3000b", r"whitespace"),
    ],
)
def test_generator_url_other_than_http_or_a_path_is_refused(url: str, rule: str) -> None:
    error = refusal(with_keys(generatorURL=url))
    assert (error.index, error.field) == (0, "generatorURL")
    assert re.search(rule, error.rule), error.rule


@pytest.mark.parametrize(
    "url",
    [
        "/graph?g0.expr=up&g0.tab=1",  # Prometheus without --web.external-url
        "/",
        "/#/alerts?silenced=false",  # Alertmanager's own UI links
        "https://prometheus.example:9090/graph?g0.expr=up%7Bjob%3D%22x%22%7D",
        "HTTP://PROM.EXAMPLE/graph",
        "http://127.0.0.1:9090",
        "http://[::1]:9090/graph",
        "https://exämple.org/graph",
        "https://prom.example/graph?x=1#fragment",
        "https://prom.example?x=1",
    ],
)
def test_generator_url_http_or_a_path_is_accepted(url: str) -> None:
    assert validate_payload(with_keys(generatorURL=url))[0]["generatorURL"] == url


def test_generator_url_error_never_shows_a_password() -> None:
    error = refusal(with_keys(generatorURL="https://admin:hunter2@prom.example/%zz"))
    assert "hunter2" not in str(error)
    assert "admin" not in str(error)


# ------------------------------------------------------------------ the breaker's setting


def test_generator_url_setting_is_checked_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # The breaker puts ALERTQ_GENERATOR_URL in every alert it sends: a value the payload
    # rules refuse must stop start-up, not fail each breaker trip later.
    monkeypatch.setenv("ALERTQ_GENERATOR_URL", "javascript://x/%0Aalert(1)")
    with pytest.raises(ValidationError, match=r"generator_url[\s\S]*http\(s\) URL"):
        Settings()
    monkeypatch.setenv("ALERTQ_GENERATOR_URL", "https://u:hunter2@app.example/cb")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("ALERTQ_GENERATOR_URL", "/cb")
    assert Settings().generator_url == "/cb"


# ------------------------------------------------------------------ properties

_TEMPLATE = "2024-05-01T12:00:00.5+05:30"
# The zero of every script's decimal digits (Nd blocks run 0..9 in order); all lie below U+20000.
_ZEROS = [
    chr(i)
    for i in range(0x20000)
    if unicodedata.category(chr(i)) == "Nd" and unicodedata.digit(chr(i)) == 0
]


@st.composite
def _timestamps_in_mixed_scripts(draw: st.DrawFn) -> str:
    """The template with any of its digits written in another script (same value)."""
    out = []
    for char in _TEMPLATE:
        if char.isdigit():
            zero = draw(st.sampled_from(["0", *_ZEROS]))
            char = chr(ord(zero) + int(char))
        out.append(char)
    return "".join(out)


@settings(max_examples=200, deadline=None)
@given(_timestamps_in_mixed_scripts())
def test_an_accepted_timestamp_is_ascii(value: str) -> None:
    # Go's time.Parse reads ASCII digits only; anything alertq takes must be ASCII too.
    with contextlib.suppress(InvalidAlertPayload):
        validate_payload(with_keys(endsAt=value))
        assert value.isascii(), value


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=8))
def test_an_accepted_label_name_is_classic_ascii(name: str) -> None:
    with contextlib.suppress(InvalidAlertPayload):
        validate_payload([{"labels": {"alertname": "A", name: "v"}}])
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name, re.ASCII), name
