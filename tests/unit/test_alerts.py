"""Payload rules and fingerprints (alertq.alerts): pure, no database, no network."""

from __future__ import annotations

import contextlib
import json
import operator
import pickle
import re
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alertq.alerts import (
    MAX_ALERTS_PER_PAYLOAD,
    MAX_PAYLOAD_BYTES,
    InvalidAlertPayload,
    label_fingerprint,
    parse_payload,
    payload_fingerprint,
    validate_payload,
)


def alert(**labels: Any) -> dict[str, Any]:
    return {"labels": {"alertname": "A", **labels}}


def with_keys(**extra: Any) -> list[dict[str, Any]]:
    return [{"labels": {"alertname": "A"}, **extra}]


# --------------------------------------------------------------------- rejection table

# (case id, payload, expected index, expected field, a regex the rule must match)
REJECTED: list[tuple[str, object, int | None, str | None, str]] = [
    ("not-a-list", {"labels": {"alertname": "A"}}, None, None, r"JSON array .*got dict"),
    ("string", "[]", None, None, r"JSON array .*got str"),
    ("null", None, None, None, r"JSON array .*got null"),
    ("empty-list", [], None, None, r"at least one alert"),
    ("too-many", [alert(i=str(i)) for i in range(257)], None, None, r"too many alerts: 257"),
    ("alert-not-object", [alert(), ["x"]], 1, None, r"must be a JSON object \(got list\)"),
    ("alert-null", [None], 0, None, r"JSON object \(got null\)"),
    ("unknown-key", with_keys(label={}), 0, None, r"unknown key 'label'; allowed keys: labels,"),
    ("unknown-key-status", with_keys(status="firing"), 0, None, r"unknown key 'status'"),
    ("labels-missing", [{"annotations": {}}], 0, "labels", r"labels is required"),
    ("labels-null", [{"labels": None}], 0, "labels", r"labels is required"),
    ("labels-list", [{"labels": ["alertname"]}], 0, "labels", r"must be an object .*got list"),
    ("labels-empty", [{"labels": {}}], 0, "labels", r"must not be empty"),
    ("no-alertname", [{"labels": {"severity": "P1"}}], 0, "labels.alertname", r"alertname"),
    ("label-int", [alert(), alert(x="1", severity=2)], 1, "labels.severity", r"string \(got int\)"),
    ("label-float", [alert(v=1.5)], 0, "labels.v", r"must be a string \(got float\)"),
    ("label-bool", [alert(v=True)], 0, "labels.v", r"must be a string \(got bool\)"),
    ("label-null", [alert(v=None)], 0, "labels.v", r"must be a string \(got null\)"),
    ("label-dict", [alert(v={})], 0, "labels.v", r"must be a string \(got dict\)"),
    ("label-empty-value", [alert(team="")], 0, "labels.team", r"must not be empty.*drops"),
    ("label-name-dash", [alert(**{"foo-bar": "x"})], 0, "labels", r"invalid label name 'foo-bar'"),
    ("label-name-digit", [alert(**{"1x": "x"})], 0, "labels", r"\[a-zA-Z_\]\[a-zA-Z0-9_\]\*"),
    ("label-name-empty", [alert(**{"": "x"})], 0, "labels", r"invalid label name ''"),
    ("label-name-unicode", [alert(**{"é": "x"})], 0, "labels", r"invalid label name"),
    ("label-name-space", [alert(**{"a b": "x"})], 0, "labels", r"invalid label name 'a b'"),
    ("label-name-nonstr", [{"labels": {"alertname": "A", 1: "x"}}], 0, "labels", r"got int"),
    ("label-surrogate", [alert(v="a\ud800b")], 0, "labels.v", r"not valid UTF-8"),
    ("label-nul", [alert(v="a\x00b")], 0, "labels.v", r"must not contain NUL"),
    ("ann-not-object", with_keys(annotations="x"), 0, "annotations", r"must be an object"),
    ("ann-int", with_keys(annotations={"summary": 3}), 0, "annotations.summary", r"got int"),
    ("ann-null-value", with_keys(annotations={"s": None}), 0, "annotations.s", r"got null"),
    ("ann-name", with_keys(annotations={"run-book": "x"}), 0, "annotations", r"annotation name"),
    ("ann-surrogate", with_keys(annotations={"s": "\udfff"}), 0, "annotations.s", r"UTF-8"),
    ("starts-int", with_keys(startsAt=1700000000), 0, "startsAt", r"RFC 3339 .*got int"),
    ("starts-no-tz", with_keys(startsAt="2024-01-01T00:00:00"), 0, "startsAt", r"timezone"),
    ("starts-date", with_keys(startsAt="2024-01-01"), 0, "startsAt", r"RFC 3339"),
    ("starts-space", with_keys(startsAt="2024-01-01 00:00:00Z"), 0, "startsAt", r"RFC 3339"),
    ("starts-lower", with_keys(startsAt="2024-01-01t00:00:00z"), 0, "startsAt", r"RFC 3339"),
    ("starts-month", with_keys(startsAt="2024-13-01T00:00:00Z"), 0, "startsAt", r"valid RFC"),
    ("starts-feb30", with_keys(startsAt="2024-02-30T00:00:00Z"), 0, "startsAt", r"valid RFC"),
    ("starts-leap-sec", with_keys(startsAt="2024-01-01T23:59:60Z"), 0, "startsAt", r"valid"),
    ("starts-bad-off", with_keys(startsAt="2024-01-01T00:00:00+00:75"), 0, "startsAt", r"valid"),
    ("starts-10-frac", with_keys(startsAt="2024-01-01T00:00:00.0123456789Z"), 0, "startsAt", r""),
    ("ends-bool", with_keys(endsAt=False), 0, "endsAt", r"got bool"),
    (
        "ends-before-starts",
        with_keys(startsAt="2024-01-01T00:00:01Z", endsAt="2024-01-01T00:00:00Z"),
        0,
        "endsAt",
        r"must not be before startsAt",
    ),
    (
        "ends-before-starts-offsets",
        with_keys(startsAt="2024-01-01T02:00:00+02:00", endsAt="2024-01-01T00:59:59+01:00"),
        0,
        "endsAt",
        r"before startsAt",
    ),
    (
        "ends-before-starts-nanos",
        with_keys(
            startsAt="2024-01-01T00:00:00.000000002Z", endsAt="2024-01-01T00:00:00.000000001Z"
        ),
        0,
        "endsAt",
        r"before startsAt",
    ),
    ("url-relative-word", with_keys(generatorURL="graph?x=1"), 0, "generatorURL", r"http\(s\)"),
    ("url-no-host", with_keys(generatorURL="http://"), 0, "generatorURL", r"with a host"),
    ("url-no-scheme", with_keys(generatorURL="example.com/x"), 0, "generatorURL", r"http\(s\)"),
    ("url-words", with_keys(generatorURL="not a url"), 0, "generatorURL", r"whitespace"),
    ("url-empty", with_keys(generatorURL=""), 0, "generatorURL", r"http\(s\) URL"),
    ("url-port", with_keys(generatorURL="http://h:99999/"), 0, "generatorURL", r"http\(s\)"),
    ("url-ipv6", with_keys(generatorURL="http://[::1/x"), 0, "generatorURL", r"http\(s\)"),
    ("url-int", with_keys(generatorURL=5), 0, "generatorURL", r"got int"),
    (
        "duplicate-label-set",
        [alert(a="1", b="2"), alert(c="3"), {"labels": {"b": "2", "alertname": "A", "a": "1"}}],
        2,
        "labels",
        r"duplicate label set: same labels as alert\[0\]",
    ),
    (
        "too-large",
        [alert(i=str(i), big="x" * 5000) for i in range(MAX_ALERTS_PER_PAYLOAD)],
        None,
        None,
        r"payload too large: \d+ bytes \(max 1000000\)",
    ),
]


@pytest.mark.parametrize(
    ("payload", "index", "field", "rule"),
    [pytest.param(p, i, f, r, id=case) for case, p, i, f, r in REJECTED],
)
def test_rejected(payload: object, index: int | None, field: str | None, rule: str) -> None:
    with pytest.raises(InvalidAlertPayload) as info:
        validate_payload(payload)
    exc = info.value
    assert (exc.index, exc.field) == (index, field), str(exc)
    assert re.search(rule, exc.rule), exc.rule
    where = "payload" if index is None else f"alert[{index}]"
    if field:
        where += f".{field}"
    assert str(exc) == f"{where}: {exc.rule}"
    assert "\n" not in str(exc)
    assert len(str(exc)) < 400
    assert isinstance(exc, ValueError)


def test_message_example_from_the_issue() -> None:
    payload = [alert(), alert(x="1"), alert(severity=1)]
    with pytest.raises(InvalidAlertPayload) as info:
        validate_payload(payload)
    assert str(info.value) == ("alert[2].labels.severity: label value must be a string (got int)")


def test_huge_values_are_not_echoed() -> None:
    with pytest.raises(InvalidAlertPayload) as info:
        validate_payload(with_keys(startsAt="y" * 100_000))
    assert len(str(info.value)) < 300
    assert "(100000 chars)" in str(info.value)


def test_message_for_an_enqueue_argument() -> None:
    exc = InvalidAlertPayload("must be a non-empty string", field="alert_type")
    assert str(exc) == "alert_type: must be a non-empty string"


def test_exception_pickles() -> None:
    exc = InvalidAlertPayload("a rule", index=3, field="labels.x")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.rule, copy.index, copy.field, str(copy)) == (
        "a rule",
        3,
        "labels.x",
        "alert[3].labels.x: a rule",
    )


# --------------------------------------------------------------------- accepted payloads


def test_valid_payload_round_trips_normalised() -> None:
    given_payload: list[dict[str, Any]] = [
        {
            "generatorURL": "https://alertq.example.com/incidents/42?x=1#f",
            "endsAt": "2024-05-01T12:05:00+02:00",
            "startsAt": "2024-05-01T10:00:00.123456789Z",
            "annotations": {"summary": "Drift 0.7 ✓ 日本", "empty": ""},
            "labels": {"alertname": "CostSimDrift", "severity": "P1", "_x9": "v"},
        },
        {"labels": {"alertname": "Other"}, "annotations": None, "endsAt": None},
    ]
    result = validate_payload(given_payload)
    assert result == [
        {
            "labels": {"alertname": "CostSimDrift", "severity": "P1", "_x9": "v"},
            "annotations": {"summary": "Drift 0.7 ✓ 日本", "empty": ""},
            "startsAt": "2024-05-01T10:00:00.123456789Z",
            "endsAt": "2024-05-01T12:05:00+02:00",
            "generatorURL": "https://alertq.example.com/incidents/42?x=1#f",
        },
        {"labels": {"alertname": "Other"}},
    ]
    assert list(result[0]) == ["labels", "annotations", "startsAt", "endsAt", "generatorURL"]
    # A copy: changing it leaves the input alone, and it validates to itself.
    result[0]["labels"]["severity"] = "P2"
    assert given_payload[0]["labels"]["severity"] == "P1"
    assert validate_payload(result) == result
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize(
    "extra",
    [
        {"startsAt": "2024-01-01T00:00:00Z", "endsAt": "2024-01-01T00:00:00Z"},  # equal is fine
        {"startsAt": "2024-01-01T01:00:00+01:00", "endsAt": "2024-01-01T00:00:00Z"},  # same instant
        {"endsAt": "2024-01-01T00:00:00.5-05:30"},
        {"generatorURL": "http://[::1]:9090/graph"},
        {"generatorURL": "/graph?g0.expr=up"},  # what Prometheus sends without an external URL
        {"annotations": {}},
    ],
)
def test_accepted_edge_cases(extra: dict[str, Any]) -> None:
    assert validate_payload(with_keys(**extra)) == with_keys(**extra)


def test_cap_is_inclusive_and_tuple_accepted() -> None:
    payload = tuple(alert(i=str(i)) for i in range(MAX_ALERTS_PER_PAYLOAD))
    assert len(validate_payload(payload)) == MAX_ALERTS_PER_PAYLOAD


# --------------------------------------------------------------------- parse_payload


def test_parse_payload_accepts_text_and_bytes() -> None:
    text = '[{"labels": {"alertname": "A", "x": "\\u00e9"}}]'
    expected = [{"labels": {"alertname": "A", "x": "é"}}]
    assert parse_payload(text) == expected
    assert parse_payload(text.encode()) == expected


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"\xff[]", r"not valid UTF-8"),
        (b'[{"labels": {"alertname": "\xc3"}}]', r"not valid UTF-8"),
        ("", r"not valid JSON"),
        ("[{]", r"not valid JSON: .*line 1"),
        ('[{"labels": {"alertname": "A"}}] x', r"not valid JSON"),
        ("[NaN]", r"NaN is not a JSON value"),
        ('[{"labels": {"alertname": "A", "v": Infinity}}]', r"Infinity"),
        ('{"labels": {"alertname": "A"}}', r"JSON array .*got dict"),
        ('"[]"', r"JSON array .*got str"),
        ("[" * 100_000 + "]" * 100_000, r"nested too deeply"),
        ('[{"labels": {"alertname": "A", "alertname": "B"}}]', r"duplicate JSON object key"),
        (" " * (MAX_PAYLOAD_BYTES + 1), r"payload too large"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), r"payload too large"),
    ],
)
def test_parse_payload_rejects(raw: str | bytes, rule: str) -> None:
    with pytest.raises(InvalidAlertPayload) as info:
        parse_payload(raw)
    assert info.value.index is None
    assert re.search(rule, info.value.rule), info.value.rule
    assert "\n" not in str(info.value)


def test_parse_payload_rejects_json_escaped_lone_surrogate() -> None:
    # JSON can spell a lone surrogate; Alertmanager (Go, UTF-8) cannot take it.
    with pytest.raises(InvalidAlertPayload) as info:
        parse_payload('[{"labels": {"alertname": "A", "v": "\\ud83d"}}]')
    assert (info.value.index, info.value.field) == (0, "labels.v")


# --------------------------------------------------------------------- fingerprints

# Vectors from prometheus/common model/signature_test.go (TestLabelsToSignature,
# BenchmarkLabelToSignature*), as %016x of the uint64 there. The same algorithm is
# LabelSet.Fingerprint, which Alertmanager uses for an alert's identity.
PROMETHEUS_COMMON_VECTORS: list[tuple[dict[str, str], str]] = [
    ({}, "cbf29ce484222325"),  # 14695981039346656037, FNV-1a 64 offset basis
    ({"name": "garland, briggs", "fear": "love is not enough"}, "507a62d79ee76c9a"),
    ({"first-label": "first-label-value"}, "476b44f5db3e21f9"),
    (
        {"first-label": "first-label-value", "second-label": "second-label-value"},
        "2c59c33dd8453b1d",
    ),
    (
        {
            "first-label": "first-label-value",
            "second-label": "second-label-value",
            "third-label": "third-label-value",
        },
        "c01c58139d52b4b9",
    ),
]

# Read back from a live Alertmanager 0.25.0 (Debian prometheus-alertmanager): POSTed to
# /api/v2/alerts, `fingerprint` from GET /api/v2/alerts. The last one was posted with an
# extra `"empty": ""` label, which Alertmanager dropped before fingerprinting.
ALERTMANAGER_0_25_VECTORS: list[tuple[dict[str, str], str]] = [
    ({"alertname": "HighLatency"}, "73dbeed5635ea4e4"),
    (
        {"alertname": "HighLatency", "severity": "critical", "instance": "db-1:9100"},
        "c7491a10608db6b3",
    ),
    (
        {"alertname": "DiskFull", "severity": "warning", "mount": "/var/lib/ünïcødé ✓ 日本"},
        "9e990953a2687ca3",
    ),
    (
        {"alertname": "x", "name": "garland, briggs", "fear": "love is not enough"},
        "18fa9ee14c367277",
    ),
    (
        {"alertname": "CircuitBreakerTripped", "circuit_breaker": "costsim", "severity": "P1"},
        "a8138b63b23507eb",
    ),
]


@pytest.mark.parametrize(
    ("labels", "expected"), PROMETHEUS_COMMON_VECTORS + ALERTMANAGER_0_25_VECTORS
)
def test_label_fingerprint_vectors(labels: dict[str, str], expected: str) -> None:
    assert label_fingerprint(labels) == expected
    assert label_fingerprint(dict(reversed(list(labels.items())))) == expected


def test_empty_valued_label_is_dropped() -> None:
    labels = {"alertname": "CircuitBreakerTripped", "circuit_breaker": "costsim", "severity": "P1"}
    assert label_fingerprint({**labels, "empty": ""}) == "a8138b63b23507eb"
    assert label_fingerprint({"a": ""}) == label_fingerprint({})


def test_fingerprint_is_not_ambiguous_across_boundaries() -> None:
    # The 0xff separator keeps name/value boundaries apart.
    assert label_fingerprint({"ab": "c"}) != label_fingerprint({"a": "bc"})
    assert label_fingerprint({"a": "b", "c": "d"}) != label_fingerprint({"a": "bc", "": "d"})


def test_payload_fingerprint() -> None:
    a, b, c = alert(x="1"), alert(x="2"), alert(x="3")
    assert payload_fingerprint([a]) == label_fingerprint(a["labels"])
    group = payload_fingerprint([a, b, c])
    assert re.fullmatch(r"[0-9a-f]{32}", group)
    assert payload_fingerprint([c, a, b]) == group
    assert payload_fingerprint([a, b]) != group
    assert payload_fingerprint([a, b]) != payload_fingerprint([a])
    with pytest.raises(InvalidAlertPayload):
        payload_fingerprint([])


# --------------------------------------------------------------------- hypothesis

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()  # includes lone surrogates and NUL
)
json_like = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
key = st.sampled_from(["labels", "annotations", "startsAt", "endsAt", "generatorURL", "x"])
alert_like = st.dictionaries(key, json_like, max_size=5) | st.fixed_dictionaries(
    {"labels": st.dictionaries(st.sampled_from(["alertname", "a", "b", "1"]), json_like)},
    optional={"startsAt": json_like, "endsAt": json_like, "generatorURL": json_like},
)
payload_like = json_like | st.lists(alert_like | json_like, max_size=4)


@settings(max_examples=400, deadline=None)
@given(payload_like)
def test_validate_never_raises_anything_else(payload: object) -> None:
    try:
        result = validate_payload(payload)
    except InvalidAlertPayload as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(result, list) and result
    assert validate_payload(result) == result
    json.dumps(result, allow_nan=False).encode("utf-8")
    payload_fingerprint(result)


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_parse_never_raises_anything_else(raw: str | bytes) -> None:
    with contextlib.suppress(InvalidAlertPayload):
        parse_payload(raw)


# [a-zA-Z_][a-zA-Z0-9_]{0,15}, built from two draws: st.from_regex took two thirds of this
# file's run time (the unit tier has 30 s).
label_names = st.builds(
    operator.add,
    st.sampled_from(string.ascii_letters + "_"),
    st.text(alphabet=string.ascii_letters + string.digits + "_", max_size=15),
)
# Valid UTF-8 text without NUL: no surrogates (Cs), no NUL.
label_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=20,
)
label_sets = st.builds(
    lambda extra, name: {**extra, "alertname": name},
    st.dictionaries(label_names, label_values, max_size=6),
    label_values,
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(label_sets, min_size=1, max_size=8, unique_by=lambda d: frozenset(d.items())),
    st.randoms(),
)
def test_valid_generated_payloads(label_list: list[dict[str, str]], rnd: Any) -> None:
    payload = [{"labels": labels} for labels in label_list]
    assert validate_payload(payload) == payload
    assert parse_payload(json.dumps(payload)) == payload

    def shuffled(labels: dict[str, str]) -> dict[str, str]:
        items = list(labels.items())
        rnd.shuffle(items)
        return dict(items)

    reordered = [{"labels": shuffled(a["labels"])} for a in payload]
    rnd.shuffle(reordered)
    assert payload_fingerprint(reordered) == payload_fingerprint(payload)
    for original, moved in zip(
        payload, [{"labels": shuffled(a["labels"])} for a in payload], strict=True
    ):
        fp = label_fingerprint(original["labels"])
        assert fp == label_fingerprint(moved["labels"])
        assert re.fullmatch(r"[0-9a-f]{16}", fp)


@settings(max_examples=100, deadline=None)
@given(label_sets, st.text(alphabet=string.ascii_letters, min_size=1, max_size=5))
def test_fingerprint_changes_with_any_label_value(labels: dict[str, str], suffix: str) -> None:
    name = sorted(labels)[0]
    assert label_fingerprint({**labels, name: labels[name] + suffix}) != label_fingerprint(labels)
