"""Request bodies for ``POST /api/v2/alerts``: what senders send, valid and invalid.

Each case is (name, body bytes). Every alert carries a ``case`` label unique to its case, so
what Alertmanager lists afterwards can be compared across the corpus as one set. The
expectations are not written here: the differential test takes them from a real
Alertmanager 0.25. ``DELIBERATE`` are the cases where alertq answers differently on purpose
(docs/relay.md), with what it answers.
"""

from __future__ import annotations

import json

FUTURE = "2099-01-01T00:00:00Z"


def _j(value: object) -> bytes:
    return json.dumps(value).encode()


def _a(case: str, **extra: object) -> dict[str, object]:
    labels = {"alertname": "Corpus", "case": case}
    labels.update(extra.pop("labels", {}))  # type: ignore[call-overload]
    return {"labels": labels, **extra}


CASES: list[tuple[str, bytes]] = [
    ("one_minimal", _j([_a("one_minimal")])),
    ("null_body", b"null"),
    ("empty_list", b"[]"),
    ("empty_body", b""),
    ("whitespace_body", b"  \n "),
    ("object_body", _j({"labels": {"alertname": "x"}})),
    ("string_body", b'"alerts"'),
    ("number_body", b"42"),
    ("truncated_json", b'[{"labels":{"alertname":"Corpus","case":"truncated"}'),
    ("trailing_garbage", b'[{"labels":{"alertname":"Corpus","case":"trailing_garbage"}}] xyz'),
    ("two_values", b'[{"labels":{"alertname":"Corpus","case":"two_values"}}][]'),
    ("nan_value", b'[{"labels":{"alertname":"Corpus","case":"nan"},"x":NaN}]'),
    (
        "huge_number_unknown_field",
        b'[{"labels":{"alertname":"Corpus","case":"huge_number"},"x":1e999999,"y":'
        + b"9" * 5000
        + b"}]",
    ),
    ("element_number", b"[1]"),
    ("element_array", b"[[]]"),
    ("element_empty_object", b"[{}]"),
    ("labels_null", _j([{"labels": None}])),
    ("labels_missing_with_others", _j([_a("lm_ok"), {"annotations": {"a": "b"}}])),
    ("labels_string", _j([{"labels": "x"}])),
    ("labels_array", _j([{"labels": []}])),
    ("labels_empty", _j([{"labels": {}}])),
    ("labels_all_empty_values", _j([{"labels": {"a": "", "b": ""}}])),
    ("empty_label_values", _j([_a("empty_label_values", labels={"team": "", "x": "1"})])),
    ("null_label_value", _j([_a("null_label_value", labels={"team": None})])),
    ("number_label_value", _j([_a("number_label_value", labels={"n": 1})])),
    ("bool_label_value", _j([_a("bool_label_value", labels={"n": True})])),
    ("no_alertname", _j([{"labels": {"case": "no_alertname", "job": "x"}}])),
    ("bad_label_name_dash", _j([_a("bad_dash", labels={"a-b": "v"})])),
    ("bad_label_name_digit", _j([_a("bad_digit", labels={"1a": "v"})])),
    ("bad_label_name_unicode", _j([_a("bad_unicode", labels={"ünï": "v"})])),
    ("unicode_label_value", _j([_a("unicode_value", labels={"city": "Zürich ✓ 東京"})])),
    ("bad_annotation_name", _j([_a("bad_annotation", annotations={"a.b": "v"})])),
    ("annotation_number", _j([_a("annotation_number", annotations={"a": 1})])),
    ("annotation_empty_value", _j([_a("annotation_empty", annotations={"summary": ""})])),
    ("annotations_null", _j([_a("annotations_null", annotations=None)])),
    ("annotations_array", _j([_a("annotations_array", annotations=[])])),
    ("unknown_fields", _j([_a("unknown_fields", fingerprint="abc", receivers=[1], x={"y": [1]})])),
    ("status_field", _j([_a("status_field", status="resolved")])),
    ("status_object", _j([_a("status_object", status={"state": "suppressed"})])),
    (
        "case_insensitive_keys",
        _j(
            [
                {
                    "Labels": {"alertname": "Corpus", "case": "ci_keys"},
                    "ENDSAT": FUTURE,
                    "StartsAt": "2024-01-01T00:00:00Z",
                    "generatorurl": "http://h/x",
                }
            ]
        ),
    ),
    (
        "duplicate_labels_key_merges",
        b'[{"labels":{"alertname":"Corpus","case":"dup_merge"},"labels":{"extra":"1"}}]',
    ),
    (
        "duplicate_label_name_last_wins",
        b'[{"labels":{"alertname":"Corpus","case":"dup_name","v":"1","v":"2"}}]',
    ),
    (
        "duplicate_startsat_last_wins",
        b'[{"labels":{"alertname":"Corpus","case":"dup_starts"},"startsAt":"garbage",'
        b'"startsAt":"2024-03-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z"}]',
    ),
    (
        "duplicate_labels_then_null",
        b'[{"labels":{"alertname":"Corpus","case":"dup_null"},"labels":null}]',
    ),
    (
        "duplicate_alerts_same_labels",
        _j([_a("dup_alerts", annotations={"n": "1"}), _a("dup_alerts", annotations={"n": "2"})]),
    ),
    ("generator_url_http", _j([_a("url_http", generatorURL="http://prom:9090/graph?g0.expr=up")])),
    (
        "generator_url_https_escaped",
        _j([_a("url_https", generatorURL="https://prom.é.example:9090/g?e=up%20%3D%3D%200&x=é")]),
    ),
    ("generator_url_relative", _j([_a("url_relative", generatorURL="/graph?g0.expr=up")])),
    ("generator_url_empty", _j([_a("url_empty", generatorURL="")])),
    ("generator_url_null", _j([_a("url_null", generatorURL=None)])),
    ("generator_url_colon", _j([_a("url_colon", generatorURL="::")])),
    ("generator_url_space_in_host", _j([_a("url_space", generatorURL="http://a b/")])),
    ("generator_url_bad_escape", _j([_a("url_escape", generatorURL="http://h/%zz")])),
    ("generator_url_bad_port", _j([_a("url_port", generatorURL="http://h:x/")])),
    ("generator_url_fragment_only", _j([_a("url_fragment", generatorURL="#frag")])),
    ("generator_url_number", _j([_a("url_number", generatorURL=5)])),
    ("generator_url_control_char", _j([_a("url_ctrl", generatorURL="http://h/\u0001")])),
    (
        "starts_zero_amtool",
        _j([_a("starts_zero", startsAt="0001-01-01T00:00:00Z", endsAt="0001-01-01T00:00:00Z")]),
    ),
    ("starts_missing_ends_future", _j([_a("ends_only", endsAt=FUTURE)])),
    ("starts_missing_ends_past", _j([_a("ends_past", endsAt="2024-01-01T00:00:00Z")])),
    ("starts_null", _j([_a("starts_null", startsAt=None)])),
    ("starts_empty_string", _j([_a("starts_empty", startsAt="", endsAt=FUTURE)])),
    ("starts_future_no_end", _j([_a("starts_future", startsAt=FUTURE)])),
    (
        "ends_before_starts",
        _j([_a("ends_before", startsAt="2024-01-02T00:00:00Z", endsAt="2024-01-01T00:00:00Z")]),
    ),
    (
        "timestamp_no_zone",
        _j([_a("no_zone", startsAt="2024-01-01T00:00:00", endsAt="2099-01-01T00:00:00.123")]),
    ),
    ("timestamp_space", _j([_a("space_ts", startsAt="2024-01-01 10:00:00.5", endsAt=FUTURE)])),
    ("timestamp_minutes", _j([_a("minutes_ts", startsAt="2024-01-01T10:00Z", endsAt=FUTURE)])),
    (
        "timestamp_offset",
        _j(
            [
                _a(
                    "offset_ts",
                    startsAt="2024-01-01T10:00:00+05:30",
                    endsAt="2099-01-01T00:00:00-08:00",
                )
            ]
        ),
    ),
    (
        "timestamp_offset_nocolon",
        _j([_a("nocolon", startsAt="2024-01-01T10:00:00.123+0100", endsAt=FUTURE)]),
    ),
    (
        "timestamp_nanos",
        _j([_a("nanos", startsAt="2024-01-01T10:00:00.123456789123Z", endsAt=FUTURE)]),
    ),
    ("timestamp_comma", _j([_a("comma", startsAt="2024-01-01T10:00:00,25Z", endsAt=FUTURE)])),
    ("timestamp_date_only", _j([_a("date_only", startsAt="2024-01-01")])),
    ("timestamp_lowercase", _j([_a("lower_ts", startsAt="2024-01-01t00:00:00z")])),
    ("timestamp_feb_30", _j([_a("feb30", startsAt="2024-02-30T00:00:00Z")])),
    ("timestamp_arabic_digits", _j([_a("arabic_ts", startsAt="٢٠٢٤-01-01T00:00:00Z")])),
    ("timestamp_number", _j([_a("ts_number", startsAt=1700000000)])),
    ("timestamp_garbage", _j([_a("ts_garbage", endsAt="soon")])),
    ("year_one_not_zero", _j([_a("year_one", startsAt="0001-06-01T00:00:00Z", endsAt=FUTURE)])),
    (
        "resolved_alert",
        _j([_a("resolved", startsAt="2024-01-01T00:00:00Z", endsAt="2024-01-01T01:00:00Z")]),
    ),
    (
        "invalid_utf8",
        b'[{"labels":{"alertname":"Corpus","case":"bad_utf8","v":"a\xffb\xe2\x82"},'
        b'"annotations":{"s":"\xc3"}}]',
    ),
    ("lone_surrogate", b'[{"labels":{"alertname":"Corpus","case":"surrogate","v":"a\\ud800b"}}]'),
    ("escaped_pair", b'[{"labels":{"alertname":"Corpus","case":"pair","v":"\\ud83d\\ude00"}}]'),
    (
        "partial_batch",
        _j(
            [
                _a("partial_ok1"),
                _a("partial_bad", startsAt="2024-01-02T00:00:00Z", endsAt="2024-01-01T00:00:00Z"),
                _a("partial_bad2", labels={"b-ad": "v"}),
                _a("partial_ok2", endsAt=FUTURE),
            ]
        ),
    ),
    ("three_hundred_alerts", _j([_a(f"bulk{i}", endsAt=FUTURE) for i in range(300)])),
    ("long_annotation", _j([_a("long_annotation", annotations={"d": "x" * 100_000})])),
    (
        "deep_unknown_field",
        b'[{"labels":{"alertname":"Corpus","case":"deep"},"x":' + b"[" * 200 + b"]" * 200 + b"}]",
    ),
]

DELIBERATE: dict[str, bytes] = {
    # name → body; alertq answers 400 and stores none of the refused alerts (docs/relay.md).
    "nul_in_label_value": b'[{"labels":{"alertname":"Corpus","case":"nul","v":"a\\u0000b"}},'
    b'{"labels":{"alertname":"Corpus","case":"nul_neighbour"}}]',
    "generator_url_javascript": _j([_a("url_js", generatorURL="javascript:alert(1)")]),
    "generator_url_mailto": _j([_a("url_mailto", generatorURL="mailto:a@b")]),
    # alerts.py's generatorURL rule: links that mislead or leak in a notification.
    "generator_url_space_stray_percent": _j(
        [_a("url_sp", generatorURL="https://h.example/a b?q=%")]
    ),
    "generator_url_protocol_relative": _j([_a("url_netpath", generatorURL="//other-host/graph")]),
    "generator_url_hostless_http": _j([_a("url_hostless", generatorURL="http://")]),
    "generator_url_userinfo": _j([_a("url_userinfo", generatorURL="https://user:pw@h.example/")]),
    "year_zero": _j([_a("year_zero", startsAt="0000-01-01T00:00:00Z", endsAt=FUTURE)]),
}
