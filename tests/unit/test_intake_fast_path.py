"""The intake's fast path (orjson and a few cheap checks) against its exact path (Go's
decoding rules and alerts.py's full ``validate_payload`` per alert), which the
differential tests hold to a real Alertmanager: for any body, the same answer."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from alertq import intake
from alertq.alerts import InvalidAlertPayload, check_generator_url
from alertq.intake import (
    _SAFE_URL_RE,
    _go_request_uri,
    check_storable,
    parse_alerts_body,
    parse_common,
    parse_exact,
)
from tests.support.relay_corpus import CASES, DELIBERATE

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def exact(body: bytes) -> Any:
    """What the intake answered before the fast path: the exact path, full rules."""
    return parse_exact(body, received_at=NOW, check=check_storable)


def prometheus_body(count: int, first: int = 0) -> bytes:
    return json.dumps(
        [
            {
                "labels": {"alertname": "HighLoad", "instance": f"node-{i}:9100", "job": "node"},
                "annotations": {"summary": f"load is high on node {i}"},
                "startsAt": "2026-12-01T11:58:00.123456789Z",
                "endsAt": "2026-12-01T12:04:00.5Z",
                "generatorURL": "http://prom:9090/graph?g0.expr=load1%20%3E%204&g0.tab=1",
            }
            for i in range(first, first + count)
        ]
    ).encode()


@pytest.mark.parametrize(("name", "body"), CASES + list(DELIBERATE.items()))
def test_every_corpus_body_gets_the_exact_paths_answer(name: str, body: bytes) -> None:
    assert parse_alerts_body(body, received_at=NOW) == exact(body)


def test_prometheus_shaped_bodies_take_the_fast_path() -> None:
    body = prometheus_body(256)
    assert parse_common(body, received_at=NOW) is not None
    # Go's encoder escapes & < > (\u0026 ...): still the fast path.
    escaped = body.replace(b"&", b"\\u0026")
    assert parse_common(escaped, received_at=NOW) == parse_alerts_body(body, received_at=NOW)


@pytest.mark.parametrize(
    "body",
    [
        # Go merges a repeated labels object into the first; orjson keeps the last.
        b'[{"labels":{"alertname":"A"},"labels":{"job":"x"}}]',
        b'[{"labels":{"alertname":"A","alertname":"B"}}]',
        b'[{"labels":{"alertname":"A"},"startsAt":5,"startsAt":"2026-12-01T11:00:00Z"}]',
        # A colon made by an escape could hide a duplicate's from the count.
        b'[{"labels":{"alertname":"A\\u003a"},"labels":{"job":"x"}}]',
        b'[{"Labels":{"alertname":"A"}}]',
        b'[{"labels":{"alertname":"A\\u0000"}}]',
        b'[{"labels":{"alertname":"A"}}] trailing',
    ],
)
def test_bodies_orjson_would_read_otherwise_leave_the_fast_path(body: bytes) -> None:
    assert parse_common(body, received_at=NOW) is None
    assert parse_alerts_body(body, received_at=NOW) == exact(body)


def test_an_alert_over_the_payload_size_limit_is_still_refused() -> None:
    big = {"labels": {"alertname": "Big"}, "annotations": {"a": "x" * 1_100_000}}
    body = json.dumps([big, {"labels": {"alertname": "Small"}}]).encode()
    result = parse_alerts_body(body, received_at=NOW)
    assert result == exact(body)
    assert result.status == 400
    assert [a["labels"]["alertname"] for a in result.alerts] == ["Small"]
    assert "payload too large" in json.loads(result.body)


# ------------------------------------------------------------------------------ properties

_NAMES = ["alertname", "job", "instance", "a", "_x", "0bad", "a-b", "", "ünï", "a:b"]
_VALUES = ["x", "", "node-1:9100", "a\x00b", "é ✓", "\ud800", "a\\b", 'q"', "\u2028"]
_TIMES = [
    "2026-12-01T11:00:00Z",
    "2026-12-01T11:00:00.123456789Z",
    "2026-12-01T11:00:00,5Z",
    "2026-12-01T13:00:00+01:00",
    "2026-12-01T11:00:00.123+0100",
    "2026-12-01 11:00:00",
    "2026-12-01T11:00Z",
    "0001-01-01T00:00:00Z",
    "0000-12-31T23:00:00-01:00",
    "9999-12-31T23:59:59-01:00",
    "2099-01-01T00:00:00Z",
    "2026-12-01T12:04:59Z",
    "2026-12-01T12:05:01Z",
    "2026-13-01T00:00:00Z",
    "",
]
_URLS = [
    "http://prom:9090/graph?g0.expr=up%3D%3D0&g0.tab=1",
    "https://h",
    "https://h?x=1",
    "HTTP://h/x",
    "/graph?g0=1",
    "/",
    "//evil/x",
    "/\\evil",
    "http://u:p@h/",
    "http://h?x@y",
    "http://h:99999/",
    "http://h:65535/",
    "http://h:/x",
    "http://[::1]:80/",
    "http://h/%zz",
    "http://h/%",
    "http://h/ x",
    "http://h\u202e/",
    "http://h#frag",
    "javascript:alert(1)",
    "mailto:a@b",
    "a/b",
    "?q",
    "http://",
    "http:///x",
    "",
]
_URL_CHARS = "aZ09.-_~:/?#[]@!$&'()*+,;=% \\\t\"<>é\u202e"


def _scalar() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.integers(-3, 3), st.booleans(), st.sampled_from(_VALUES))


def _pairs(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(st.tuples(st.sampled_from(keys), values), max_size=4).map(_Obj)


class _Obj(list[tuple[str, Any]]):
    """A JSON object as pairs, so a body can repeat a key."""


def _encode(value: Any, style: tuple[bool, bool]) -> str:
    """JSON text of ``value``; ``style``: escape non-ASCII as Go's encoder does not, and
    write every ':' inside a string as ``\\u003a``."""
    ascii_only, escape_colons = style
    if isinstance(value, _Obj):
        return "{" + ",".join(f"{_encode(k, style)}:{_encode(v, style)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_encode(v, style) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.replace(":", "\\u003a") if escape_colons and isinstance(value, str) else text


_string_map = st.one_of(
    _pairs(_NAMES, st.one_of(st.sampled_from(_VALUES), st.text(max_size=5), _scalar())),
    _scalar(),
)
_time = st.one_of(st.sampled_from(_TIMES), st.none(), st.integers(0, 1))
_url = st.one_of(
    st.sampled_from(_URLS),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from(["http://h", "https://h:80", "/", "", "http:", "ftp://h"]),
        st.text(alphabet=_URL_CHARS, max_size=12),
    ),
    st.none(),
    st.integers(0, 1),
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "labels": _string_map,
    "annotations": _string_map,
    "startsAt": _time,
    "endsAt": _time,
    "generatorURL": _url,
}


_KEYS = st.lists(st.sampled_from([*_FIELDS, "Labels", "ENDSAT", "status"]), max_size=6)
_OTHER = _scalar()


@st.composite
def _alert(draw: st.DrawFn) -> Any:
    keys = draw(_KEYS)
    pairs = _Obj()
    for key in keys:
        field = _FIELDS.get({"Labels": "labels", "ENDSAT": "endsAt"}.get(key, key), _OTHER)
        pairs.append((key, draw(field)))
    return pairs


# The ordinary alert's parts, built once: built inside the composite on every draw, they
# cost more than the test itself (the unit tier has 30 s).
_ORDINARY_NAMES = st.sampled_from(["alertname", "job", "instance", "severity", "a_b"])
_ORDINARY_LABELS = st.dictionaries(
    _ORDINARY_NAMES,
    st.one_of(st.sampled_from(["x", "node-1:9100", "é ✓"]), st.text(min_size=1, max_size=4)),
    min_size=1,
    max_size=4,
)
_ORDINARY_ANNOTATIONS = st.dictionaries(_ORDINARY_NAMES, st.text(max_size=6), max_size=3)
_ORDINARY_TIME = st.sampled_from(_TIMES[:8] + _TIMES[10:13])
_ORDINARY_URL = st.sampled_from(_URLS[:6] + _URLS[8:12])


@st.composite
def _ordinary_alert(draw: st.DrawFn) -> Any:
    """Mostly well-formed alerts, so the fast path answers and is compared."""
    labels = draw(_ORDINARY_LABELS)
    alert = _Obj([("labels", _Obj(labels.items()))])
    if draw(st.booleans()):
        annotations = draw(_ORDINARY_ANNOTATIONS)
        alert.append(("annotations", _Obj(annotations.items())))
    for key in ("startsAt", "endsAt"):
        if draw(st.booleans()):
            alert.append((key, draw(_ORDINARY_TIME)))
    if draw(st.booleans()):
        alert.append(("generatorURL", draw(_ORDINARY_URL)))
    return alert


def _body(alerts: st.SearchStrategy[Any], *, odd: bool = True) -> st.SearchStrategy[bytes]:
    top = st.lists(alerts, min_size=1, max_size=4)
    return st.builds(
        lambda items, style, pad: (pad + _encode(items, style)).encode("utf-8", "surrogatepass"),
        st.one_of(top, st.none(), _alert()) if odd else top,
        st.tuples(st.booleans(), st.booleans() if odd else st.just(False)),
        st.sampled_from(["", " \n"]),
    )


@PROPERTY
@given(_body(_alert()))
def test_any_body_gets_the_exact_paths_answer(body: bytes) -> None:
    fast = parse_common(body, received_at=NOW)
    event("fast path" if fast is not None else "exact path")
    assert parse_alerts_body(body, received_at=NOW) == exact(body)


@PROPERTY
@given(_body(_ordinary_alert(), odd=False))
def test_ordinary_bodies_get_the_exact_paths_answer(body: bytes) -> None:
    fast = parse_common(body, received_at=NOW)
    event("fast path" if fast is not None else "exact path")
    assert parse_alerts_body(body, received_at=NOW) == exact(body)
    if fast is not None:
        assert fast == exact(body)


@PROPERTY
@given(_url.filter(lambda u: isinstance(u, str)))
def test_a_url_the_fast_path_takes_passes_every_url_rule(url: str) -> None:
    match = _SAFE_URL_RE.fullmatch(url)
    if match is None or (match["port"] and int(match["port"]) > 65535) or not url:
        return
    assert _go_request_uri(url)
    check_generator_url(url)
    scheme, sep, _ = url.partition(":")
    assert not sep or scheme in ("http", "https") or "/" in scheme


@PROPERTY
@given(_body(_alert()))
def test_the_cheap_storage_check_refuses_what_validate_payload_refuses(body: bytes) -> None:
    assert parse_exact(body, received_at=NOW) == exact(body)


def test_the_url_check_is_what_the_cheap_storage_check_adds() -> None:
    # Go accepts it; alerts.py does not (an IPv6 literal alerts.py cannot parse).
    body = json.dumps([{"labels": {"alertname": "A"}, "generatorURL": "http://[::g]/"}]).encode()
    result = parse_alerts_body(body, received_at=NOW)
    assert result == exact(body)
    assert result.status == 400
    with pytest.raises(InvalidAlertPayload):
        check_generator_url("http://[::g]/")


def test_the_fast_paths_caches_keep_no_long_strings() -> None:
    # 4,096 entries of a 4 MiB body each would be gigabytes.
    long_name = "n" * 1000
    long_time = "2026-12-01T11:00:00." + "0" * 1000 + "Z"
    body = json.dumps([{"labels": {long_name: "v"}, "startsAt": long_time}]).encode()
    result = parse_common(body, received_at=NOW)
    assert result is not None
    assert result == exact(body)
    assert long_name not in intake._VALID_NAMES
    assert long_time not in intake._TIMES


def test_a_large_body_of_ordinary_alerts_takes_the_fast_path() -> None:
    alerts = [
        {"labels": {"alertname": "Big", "i": str(i)}, "annotations": {"text": "é" * 3000}}
        for i in range(100)
    ]
    body = json.dumps(alerts, ensure_ascii=False).encode()
    assert len(body) > 400_000  # past the bound below which no alert can be too large
    result = parse_common(body, received_at=NOW)
    assert result is not None
    assert result == exact(body)


@pytest.mark.parametrize(("name", "body"), [*CASES[:40], ("prometheus", prometheus_body(256))])
@pytest.mark.parametrize("inline_bytes", [0, intake.INLINE_PARSE_BYTES])
async def test_the_event_loops_parse_answers_as_parse_alerts_body(
    name: str, body: bytes, inline_bytes: int
) -> None:
    got = await intake.parse_alerts_body_async(body, received_at=NOW, inline_bytes=inline_bytes)
    assert got == parse_alerts_body(body, received_at=NOW)


async def test_only_a_small_bodys_fast_path_runs_on_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay calls one function; which path may block the loop is decided there."""
    threads: dict[str, int] = {}

    def spy(name: str) -> Any:
        real = getattr(intake, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads[name] = threading.get_ident()
            return real(*args, **kwargs)

        monkeypatch.setattr(intake, name, wrapper)

    for name in ("parse_common", "parse_exact", "parse_alerts_body"):
        spy(name)
    loop_thread = threading.get_ident()

    await intake.parse_alerts_body_async(prometheus_body(4), received_at=NOW)
    assert threads == {"parse_common": loop_thread}

    threads.clear()  # the fast path says no: the exact path in a thread, fast path not rerun
    await intake.parse_alerts_body_async(b'[{"Labels":{"alertname":"A"}}]', received_at=NOW)
    assert threads["parse_common"] == loop_thread
    assert set(threads) == {"parse_common", "parse_exact"}
    assert threads["parse_exact"] != loop_thread

    threads.clear()  # over the inline size: everything in a thread
    await intake.parse_alerts_body_async(prometheus_body(4), received_at=NOW, inline_bytes=16)
    assert "parse_alerts_body" in threads
    assert loop_thread not in threads.values()
