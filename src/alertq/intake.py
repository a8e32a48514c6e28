"""Parse a ``POST /api/v2/alerts`` body exactly as Alertmanager 0.25 does. Pure: no I/O.

Read from Alertmanager 0.25's ``api/v2/api.go`` (``postAlertsHandler``), its OpenAPI
models (``PostableAlert``, ``Alert``) and go-openapi's runtime, then checked against the
0.25 binary (``tests/acceptance/test_relay_differential.py`` replays a corpus against both):

1. **Decode** (Go ``encoding/json`` through go-openapi): the first JSON value of the body
   (trailing bytes are ignored), invalid UTF-8 and lone surrogates replaced by U+FFFD one
   byte at a time, object keys matched case-insensitively, the last duplicate key winning,
   except that a repeated ``labels``/``annotations`` object *merges* into the first (Go
   reuses the map). ``null`` and a missing key mean unset; a ``null`` label value is ``""``.
   A type mismatch, a bad timestamp or malformed JSON → **400** ``{"code":400,...}``.
   An empty body → **422** ``{"code":602,"message":"alerts in body is required"}``;
   a ``null`` body → 200 with nothing stored.
2. **Schema** (go-openapi validation, first error only) → **422**: ``labels`` missing or
   null (``602``), a ``generatorURL`` that Go's ``url.ParseRequestURI`` refuses (``601``).
3. **Per alert** (``types.Alert.Validate`` after the defaults): ``startsAt`` unset (the
   zero instant ``0001-01-01T00:00:00Z``) → ``endsAt`` if set, else the time received;
   empty-valued labels dropped; ``endsAt`` before ``startsAt`` (an unset ``endsAt`` counts
   as *received + resolve_timeout*), a bad label or annotation name, or no label left →
   that alert is refused, the others are stored, and the answer is **400** with a JSON
   string of the errors joined by ``"; "``.

Deliberate differences, where accepting would be unsafe (``docs/relay.md``), are refused
per alert like (3): a NUL character anywhere (PostgreSQL cannot store it), a
``generatorURL`` that alerts.py's rule refuses (a ``javascript:`` or ``//other-host`` link
in every notification), and a timestamp outside years 1–9999 UTC (no Python datetime
holds it).
A body ``[null]`` makes Alertmanager 0.25 drop the connection (a nil-pointer panic); here
it is the 422 of an alert without labels.

Every alert returned passes :func:`alertq.alerts.validate_payload`, except for its
``alertname`` rule (Alertmanager accepts alerts without one, so the relay stores them as
sent; see :func:`check_storable`). Its ``generatorURL`` rule applies in full: beyond a
non-http(s) scheme it refuses links that are unsafe in a notification (protocol-relative
``//host``, no host, whitespace or invisible characters, user info, a stray ``%``), which
Alertmanager would store; the alert is refused alone, as above.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from alertq.alerts import (
    MAX_PAYLOAD_BYTES,
    InvalidAlertPayload,
    check_generator_url,
    label_fingerprints,
    validate_payload,
)

__all__ = [
    "DEFAULT_RESOLVE_TIMEOUT",
    "INLINE_PARSE_BYTES",
    "IntakeResult",
    "check_storable",
    "parse_alerts_body",
    "parse_alerts_body_async",
    "parse_common",
    "parse_exact",
]

DEFAULT_RESOLVE_TIMEOUT = timedelta(minutes=5)
"""Alertmanager's default ``global.resolve_timeout``: the ``endsAt`` it gives an alert sent
without one, which is also the bound its ``endsAt >= startsAt`` check uses."""
DEFAULT_MAX_ALERTS = 10_000
"""Alerts in one body, unless ``ALERTQ_INTAKE_MAX_ALERTS`` says otherwise."""
INLINE_PARSE_BYTES = 128 * 1024
"""Bodies up to this size try the fast path on the event loop (at most ~15 ms of CPU)."""

_KEYS = {
    "labels": "labels",
    "annotations": "annotations",
    "startsat": "startsAt",
    "endsat": "endsAt",
    "generatorurl": "generatorURL",
}
_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_ECHO_MAX = 120

# strfmt.DateTime's layouts (go-openapi/strfmt 0.21): RFC 3339 with any fraction and a
# Z/±hh:mm zone; millis/micros (exactly 3 or 6 digits) with a ±hhmm zone; no zone (UTC);
# minutes only with a literal Z or no zone; a space instead of T, no zone.
_DATE = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
_HMS = r"(?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})"
# re.ASCII: \d would also match non-ASCII digits (\u0662...), which Go refuses.
_LAYOUTS = [
    re.compile(_DATE + "T" + _HMS + r"(?:[.,](?P<f>\d+))?(?P<z>Z|[+-]\d{2}:\d{2})", re.ASCII),
    re.compile(_DATE + "T" + _HMS + r"[.,](?P<f>\d{3}|\d{6})(?P<z>Z|[+-]\d{4})", re.ASCII),
    re.compile(_DATE + "T" + _HMS + r"(?:[.,](?P<f>\d+))?", re.ASCII),
    re.compile(_DATE + r"T(?P<h>\d{2}):(?P<mi>\d{2})(?P<z>Z)?", re.ASCII),
    re.compile(_DATE + " " + _HMS + r"(?:[.,](?P<f>\d+))?", re.ASCII),
]
_ZERO = datetime(1, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _BodyError(Exception):
    """The body cannot be decoded into alerts: Alertmanager's 400 parse error."""


class _SchemaError(Exception):
    """An OpenAPI schema failure: Alertmanager's 422 with a 6xx code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Time:
    """An instant as Go holds it: UTC to the microsecond plus the nanoseconds beyond."""

    moment: datetime
    nanos: int = 0

    @property
    def key(self) -> tuple[datetime, int]:
        return (self.moment, self.nanos)

    def render(self) -> str:
        frac = f"{self.moment.microsecond * 1000 + self.nanos:09d}".rstrip("0")
        m = self.moment
        base = f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
        return f"{base}.{frac}Z" if frac else f"{base}Z"


@dataclass(frozen=True)
class IntakeResult:
    """What Alertmanager would store and answer for one body.

    ``alerts`` are the normalised alerts to store, in body order, each with its
    ``fingerprints`` entry (Alertmanager's label fingerprint). ``errors`` are the per-alert
    errors. ``status``/``body`` is the answer once the alerts are stored: 200 with no body,
    400 with a JSON string (some alerts refused), or the 400/422 of a body that stores
    nothing. ``content_type`` is None for an empty body.
    """

    status: int
    body: bytes = b""
    alerts: list[dict[str, Any]] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str | None:
        return "application/json" if self.body else None


_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")


def _go_decode(raw: bytes) -> str:
    """UTF-8 as Go's decoder reads it: each byte of an invalid sequence becomes its own
    U+FFFD (Python's "replace" would merge a truncated sequence into one).

    ``surrogateescape`` (C) maps each such byte to one U+DC80–U+DCFF, which valid UTF-8
    never decodes to, and one regular expression replaces them. A Python error handler
    called per invalid byte cost 3.5 s for a 4 MB body of 0xff (red-team pass 3).
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _ESCAPED_BYTE_RE.sub("\ufffd", raw.decode("utf-8", "surrogateescape"))


def _quote(value: str) -> str:
    """A Go ``%q``-like rendering, shortened for an error message."""
    if len(value) > _ECHO_MAX:
        value = value[:_ECHO_MAX] + "..."
    return json.dumps(_clean(value), ensure_ascii=False)


def _clean(value: str) -> str:
    return _SURROGATE_RE.sub("\ufffd", value) if _SURROGATE_RE.search(value) else value


# ------------------------------------------------------------------------------ decode


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs in order, so duplicates can be resolved as Go does."""


def _decode_json(text: str) -> Any:
    def refuse_constant(name: str) -> Any:
        raise _BodyError(f"invalid character {name[0]!r} looking for beginning of value")

    decoder = json.JSONDecoder(
        object_pairs_hook=_Pairs,
        parse_constant=refuse_constant,
        parse_int=lambda s: float(0),  # a number is a number; its size does not matter
        parse_float=lambda s: float(0),
    )
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        value, _ = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text):
            raise _BodyError("unexpected EOF") from None
        raise _BodyError(f"{exc.msg} (offset {exc.pos})") from None
    except RecursionError:
        raise _BodyError("exceeded max depth") from None
    return value


def _kind(value: object) -> str:
    if isinstance(value, _Pairs):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "null"


def _string_map(value: object, into: dict[str, str] | None, what: str) -> dict[str, str] | None:
    """Decode a JSON object into a Go ``map[string]string``, reusing ``into`` as Go does."""
    if value is None:
        return None  # null sets the map to nil
    if not isinstance(value, _Pairs):
        raise _BodyError(f"cannot unmarshal {_kind(value)} into field {what} of type LabelSet")
    result = into if into is not None else {}
    for key, item in value:
        if item is None:
            item = ""  # null into a string map element: its zero value
        elif not isinstance(item, str):
            raise _BodyError(f"cannot unmarshal {_kind(item)} into field {what} of type string")
        result[_clean(key)] = _clean(item)
    return result


def _parse_time(value: object, what: str) -> _Time | None:
    """strfmt.DateTime: None for null (unset); the epoch for ``""`` (strfmt's NewDateTime)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _BodyError(f"cannot unmarshal {_kind(value)} into field {what} of type string")
    if value == "":
        return _Time(_EPOCH)
    for layout in _LAYOUTS:
        match = layout.fullmatch(value)
        if match is not None:
            break
    else:
        raise _BodyError(f"parsing time {_quote(value)}: not a date-time")
    parts = match.groupdict()
    try:
        naive = datetime(
            int(parts["y"]),
            int(parts["mo"]),
            int(parts["d"]),
            int(parts["h"]),
            int(parts["mi"]),
            int(parts.get("s") or 0),
        )
    except ValueError as exc:
        if int(parts["y"]) == 0 and "year" in str(exc):
            raise _OutOfRange(value) from None
        raise _BodyError(f"parsing time {_quote(value)}: {exc}") from None
    zone = parts.get("z") or "Z"
    offset = timedelta(0)
    if zone != "Z":
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 24 or minutes > 60:
            raise _BodyError(f"parsing time {_quote(value)}: time zone offset out of range")
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    try:
        moment = (naive - offset).replace(tzinfo=UTC)
    except OverflowError:
        raise _OutOfRange(value) from None
    digits = (parts.get("f") or "")[:9].ljust(9, "0")
    return _Time(moment.replace(microsecond=int(digits[:6])), int(digits[6:]))


class _OutOfRange(Exception):
    """A timestamp Go holds but Python cannot (before year 1 or after 9999 in UTC)."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class _Alert:
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    starts: _Time | None = None
    ends: _Time | None = None
    url: str = ""
    out_of_range: str | None = None


def _decode_alert(value: object) -> _Alert | None:
    if value is None:
        return None
    if not isinstance(value, _Pairs):
        raise _BodyError(f"cannot unmarshal {_kind(value)} into Go value of type PostableAlert")
    alert = _Alert()
    for raw_key, item in value:
        name = _KEYS.get(raw_key.lower())
        try:
            if name == "labels":
                alert.labels = _string_map(item, alert.labels, "Alert.labels")
            elif name == "annotations":
                alert.annotations = _string_map(item, alert.annotations, ".annotations")
            elif name == "startsAt":
                alert.starts = _parse_time(item, ".startsAt")
            elif name == "endsAt":
                alert.ends = _parse_time(item, ".endsAt")
            elif name == "generatorURL":
                if item is not None and not isinstance(item, str):
                    raise _BodyError(
                        f"cannot unmarshal {_kind(item)} into field Alert.generatorURL "
                        "of type string"
                    )
                alert.url = _clean(item or "")
        except _OutOfRange as exc:
            alert.out_of_range = exc.value
    return alert


# ------------------------------------------------------------------------------ schema

_HOST_OK = set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'()*+,;=:[]<>\""
)
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9a-fA-F]{2})")
_ESCAPE_RE = re.compile(r"%([0-9a-fA-F])[0-9a-fA-F]")
_HOST_BAD_RE = re.compile(
    "["
    + re.escape("".join(chr(c) for c in range(0x80) if chr(c) not in _HOST_OK and c != 0x25))
    + "]"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SCHEME_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*")


def _valid_escapes(text: str, *, host: bool) -> bool:
    """Go's ``unescape``: every ``%`` starts two hex digits; in a host, only the characters
    of ``shouldEscape(encodeHost)`` (ASCII) and no escape below ``%80`` but ``%25``."""
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        return False
    if not host:
        return True
    if _HOST_BAD_RE.search(text):
        return False
    return all(m.group(0) == "%25" or m.group(1) >= "8" for m in _ESCAPE_RE.finditer(text))


def _go_request_uri(value: str) -> bool:
    """Whether Go's ``url.ParseRequestURI`` (go-openapi's ``uri`` format) accepts ``value``."""
    if _CONTROL_RE.search(value):
        return False
    rest = value
    scheme = ""
    for i, char in enumerate(value):
        if char == ":":
            if i == 0:
                return False  # missing protocol scheme
            scheme, rest = value[:i], value[i + 1 :]
            break
        if not (
            char.isascii() and (char.isalpha() or (i > 0 and (char.isdigit() or char in "+-.")))
        ):
            break
    rest = rest.split("?", 1)[0]
    if not rest.startswith("/"):
        return bool(scheme)  # an opaque URI (mailto:x) needs a scheme; "?q" and "#x" fail
    if scheme and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        host = authority.rpartition("@")[2]
        if host.startswith("["):
            close = host.find("]")
            if close < 0:
                return False
            port = host[close + 1 :]
            if port and not ((port.startswith(":") and port[1:].isdigit()) or port == ":"):
                return False
        else:
            colon = host.rfind(":")
            if colon >= 0:
                port = host[colon + 1 :]
                if port and not (port.isascii() and port.isdigit()):
                    return False
        if not _valid_escapes(host, host=True):
            return False
        rest = slash + path
    return _valid_escapes(rest, host=False)


def _schema_check(alerts: list[_Alert | None]) -> None:
    """go-openapi's validation of PostableAlerts: the first failure, as a 422."""
    for index, alert in enumerate(alerts):
        if alert is None:
            # Alertmanager 0.25 panics here and drops the connection; answer what `{}` gets.
            raise _SchemaError(602, f"{index}.labels in body is required")
        if alert.url and not _go_request_uri(alert.url):
            raise _SchemaError(
                601, f"{index}.generatorURL in body must be of type uri: {_quote(alert.url)}"
            )
        if alert.labels is None:
            raise _SchemaError(602, f"{index}.labels in body is required")


# ------------------------------------------------------------------------------ per alert


def _invalid_name(names: dict[str, str]) -> str | None:
    for name in sorted(names):  # Go reports whichever its map iteration meets first
        if not _NAME_RE.fullmatch(name):
            return name
    return None


def _unsafe(alert: _Alert) -> str | None:
    """alertq's deliberate refusals (see the module docstring)."""
    if alert.out_of_range is not None:
        return f"timestamp {_quote(alert.out_of_range)} is outside years 1-9999 UTC"
    texts = [alert.url]
    for mapping in (alert.labels or {}, alert.annotations or {}):
        for key, value in mapping.items():
            texts += (key, value)
    if any("\x00" in text for text in texts):
        return "NUL character (\\u0000) in a label, annotation or generatorURL"
    if alert.url:
        scheme, sep, _ = alert.url.partition(":")
        if sep and _SCHEME_RE.fullmatch(scheme) and scheme.lower() not in ("http", "https"):
            return f"generatorURL scheme {_quote(scheme)} is not http or https"
    return None


def _normalise(
    alert: _Alert, received: _Time, resolve_timeout: timedelta
) -> tuple[dict[str, Any] | None, str | None]:
    """Apply Alertmanager's defaults and ``Validate``: (alert to store, None) or (None, error)."""
    starts, ends = alert.starts, alert.ends
    if starts is None or starts.key == (_ZERO, 0):
        starts = ends if ends is not None and ends.key != (_ZERO, 0) else received
    if ends is not None and ends.key == (_ZERO, 0):
        ends = None
    labels = {k: v for k, v in (alert.labels or {}).items() if v != ""}
    effective_end = ends if ends is not None else _Time(received.moment + resolve_timeout)
    if effective_end.key < starts.key:
        return None, "start time must be before end time"
    bad = _invalid_name(labels)
    if bad is not None:
        return None, f"invalid label set: invalid name {_quote(bad)}"
    if not labels:
        return None, "at least one label pair required"
    bad = _invalid_name(alert.annotations or {})
    if bad is not None:
        return None, f"invalid annotations: invalid name {_quote(bad)}"
    unsafe = _unsafe(alert)
    if unsafe is not None:
        return None, f"refused by alertq: {unsafe}"
    result: dict[str, Any] = {"labels": labels}
    if alert.annotations:
        result["annotations"] = dict(alert.annotations)
    result["startsAt"] = starts.render()
    if ends is not None:
        result["endsAt"] = ends.render()
    if alert.url:
        result["generatorURL"] = alert.url
    return result, None


def check_storable(alert: dict[str, Any]) -> None:
    """Raise :class:`InvalidAlertPayload` unless ``alert`` passes alerts.py's rules.

    One of those rules is alertq's own, not Alertmanager's, and the relay must accept what
    Alertmanager accepts: ``alertname`` is required. It is waived here; everything else
    (names, values, UTF-8, NUL, timestamps, ``endsAt >= startsAt``, the ``generatorURL``
    rule) is checked by :func:`validate_payload` itself. Its future-``startsAt`` rule needs
    a ``now`` and is left to :func:`parse_alerts_body`, which applies Alertmanager's own
    bound (received + ``resolve_timeout``).
    """
    probe = dict(alert)
    probe["labels"] = {"alertname": "relay", **alert["labels"]}
    validate_payload([probe])


# An alert's compact JSON is at most 3 bytes per byte of its body (an invalid byte becomes
# U+FFFD) plus a few hundred (a startsAt and alertname added): below this body size no
# alert can pass validate_payload's size limit.
_SMALL_BODY = (MAX_PAYLOAD_BYTES - 1024) // 3


def _check_normalised(alert: dict[str, Any], *, small: bool) -> None:
    """:func:`check_storable` for an alert :func:`_normalise` returned, in one cheap step.

    ``_normalise`` has already applied every rule of ``validate_payload`` but two: the
    ``generatorURL`` rule and the payload size. The size can only fail in a large body.
    ``tests/unit/test_intake_fast_path.py`` checks that this refuses exactly what
    :func:`check_storable` refuses.
    """
    if not small:
        check_storable(alert)
    elif "generatorURL" in alert:
        check_generator_url(alert["generatorURL"])


# ------------------------------------------------------------------------------ fast path
#
# Senders post well-formed alerts with exactly the five keys, spelt as in the schema. For
# such a body orjson's decode gives what Go's does, and the rules reduce to a few cheap
# checks. Anything else (a decode error, odd keys, a duplicate key, an escape that makes
# NUL, a surrogate or a colon, a refused alert, a URL outside a plainly safe shape, an
# alert that might pass the size limit) goes to the exact path, which answers as
# Alertmanager does.

_FAST_KEYS = frozenset(_KEYS.values())
_ODD_ESCAPE_RE = re.compile(rb"\\u(?:0000|003[aA]|[dD][89a-fA-F])")
# Accepted by Go's url.ParseRequestURI and by alerts.py's generatorURL rule alike
# (ASCII, no whitespace, no user info, every % an escape, a path with one leading /).
# Possessive: runs of safe characters in one step, and no backtracking on a failure.
_SAFE_URL_RE = re.compile(
    r"(?:https?://[A-Za-z0-9._~-]++(?::(?P<port>[0-9]{1,5}))?(?=[/?]|\Z)|(?=/(?!/)))"
    r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]++|%[0-9A-Fa-f]{2})*+"
)
_ZERO_KEY = (_ZERO, 0)
_CACHE_MAX = 4096
_CACHED_CHARS = 64  # a longer name or timestamp (a 1 MB fraction) is checked, not kept
# Label and annotation names seen valid, and parsed timestamps: both repeat across alerts.
_VALID_NAMES: set[str] = set()
_TIMES: dict[str, tuple[tuple[datetime, int], str]] = {}


def _names_ok(mapping: Mapping[str, object]) -> bool:
    for name in mapping:
        if name not in _VALID_NAMES:
            if _NAME_RE.fullmatch(name) is None:
                return False
            if len(_VALID_NAMES) < _CACHE_MAX and len(name) <= _CACHED_CHARS:
                _VALID_NAMES.add(name)
    return True


def _time(value: object) -> tuple[tuple[datetime, int], str] | None:
    """(key, rendering) of a timestamp string, None for anything the fast path leaves."""
    if type(value) is not str:
        return None
    hit = _TIMES.get(value)
    if hit is None:
        try:
            parsed = _parse_time(value, "")
        except (_BodyError, _OutOfRange):
            return None
        assert parsed is not None
        hit = (parsed.key, parsed.render())
        if len(value) <= _CACHED_CHARS:
            if len(_TIMES) >= _CACHE_MAX:
                _TIMES.clear()
            _TIMES[value] = hit
    return hit


def parse_common(
    raw: bytes,
    *,
    received_at: datetime,
    resolve_timeout: timedelta = DEFAULT_RESOLVE_TIMEOUT,
    max_alerts: int = DEFAULT_MAX_ALERTS,
) -> IntakeResult | None:
    """:func:`parse_exact`'s answer for a body of ordinary, valid alerts; None for any
    other. About 10 µs per alert, so the relay runs it on the event loop for small bodies.
    """
    if received_at.tzinfo is None:
        raise ValueError(f"naive datetime {received_at!r}: pass an aware UTC datetime")
    if b"\\u" in raw and _ODD_ESCAPE_RE.search(raw):
        return None
    small = len(raw) <= _SMALL_BODY
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(value) is not list or len(value) > max_alerts:
        return None
    received = _Time(received_at.astimezone(UTC))
    now = (received.key, received.render())
    default_end = _Time(received.moment + resolve_timeout).key
    # orjson keeps the last of duplicate keys silently, where Go may merge or fail. Every
    # ':' outside a string separates a key from its value, and no escape left makes one,
    # so the body has exactly as many ':' as the decoded pairs and strings hold.
    colons = 0
    alerts: list[dict[str, Any]] = []
    for item in value:
        if type(item) is not dict or not item.keys() <= _FAST_KEYS:
            return None
        labels = item.get("labels")
        if type(labels) is not dict or not labels or not _names_ok(labels):
            return None
        try:
            text = "\n".join(labels.values())
        except TypeError:  # a value that is not a string
            return None
        if "" in labels.values():
            return None
        colons += len(item) + len(labels) + text.count(":")
        alert: dict[str, Any] = {"labels": labels}
        annotations = item.get("annotations")
        if annotations is not None:
            if type(annotations) is not dict or not _names_ok(annotations):
                return None
            try:
                text = "\n".join(annotations.values())
            except TypeError:
                return None
            colons += len(annotations) + text.count(":")
            if annotations:
                alert["annotations"] = annotations
        starts = ends = None
        if item.get("startsAt") is not None:
            starts = _time(item["startsAt"])
            if starts is None:
                return None
            colons += item["startsAt"].count(":")
        if item.get("endsAt") is not None:
            ends = _time(item["endsAt"])
            if ends is None:
                return None
            colons += item["endsAt"].count(":")
        # _normalise's defaults and its endsAt >= startsAt check.
        if starts is None or starts[0] == _ZERO_KEY:
            starts = ends if ends is not None and ends[0] != _ZERO_KEY else now
        if ends is not None and ends[0] == _ZERO_KEY:
            ends = None
        if (ends[0] if ends is not None else default_end) < starts[0]:
            return None
        alert["startsAt"] = starts[1]
        if ends is not None:
            alert["endsAt"] = ends[1]
        url = item.get("generatorURL")
        if url is not None:
            if type(url) is not str:
                return None
            if url:
                match = _SAFE_URL_RE.fullmatch(url)
                if match is None or (match["port"] and int(match["port"]) > 65535):
                    return None
                colons += url.count(":")
                alert["generatorURL"] = url
        # validate_payload's size: json.dumps writes at most 6 bytes for each one of
        # orjson's (an escape), plus the alertname it adds.
        if not small and len(orjson.dumps(alert)) * 6 + 1024 > MAX_PAYLOAD_BYTES:
            return None
        alerts.append(alert)
    if raw.count(b":") != colons:
        return None
    fingerprints = label_fingerprints([a["labels"] for a in alerts])
    return IntakeResult(200, b"", alerts, fingerprints, [])


# ------------------------------------------------------------------------------ entry


def parse_alerts_body(
    raw: bytes,
    *,
    received_at: datetime,
    resolve_timeout: timedelta = DEFAULT_RESOLVE_TIMEOUT,
    check: Callable[[dict[str, Any]], None] | None = None,
    max_alerts: int = DEFAULT_MAX_ALERTS,
) -> IntakeResult:
    """Decode, validate and default one request body, as Alertmanager 0.25 would.

    ``received_at`` (aware) replaces an unset ``startsAt``. A body of more than
    ``max_alerts`` alerts is refused whole (413) before any alert is looked at: per-alert
    work is what costs. ``check`` replaces the storage check of each alert (by default
    what :func:`check_storable` refuses, checked cheaply); given one, the exact path runs
    every time. Never raises for any input.
    """
    if received_at.tzinfo is None:
        raise ValueError(f"naive datetime {received_at!r}: pass an aware UTC datetime")
    data = bytes(raw)
    if check is None:
        common = parse_common(
            data, received_at=received_at, resolve_timeout=resolve_timeout, max_alerts=max_alerts
        )
        if common is not None:
            return common
    return parse_exact(
        data,
        received_at=received_at,
        resolve_timeout=resolve_timeout,
        check=check,
        max_alerts=max_alerts,
    )


async def parse_alerts_body_async(
    raw: bytes,
    *,
    received_at: datetime,
    resolve_timeout: timedelta = DEFAULT_RESOLVE_TIMEOUT,
    max_alerts: int = DEFAULT_MAX_ALERTS,
    inline_bytes: int = INLINE_PARSE_BYTES,
) -> IntakeResult:
    """:func:`parse_alerts_body`'s answer, for an event loop: a body of at most
    ``inline_bytes`` tries the fast path inline (a thread hop costs more than it does);
    anything slower (the exact path, or any larger body) runs in a thread, since a 4 MiB
    body of small alerts is seconds of pure Python that would stall every other task.
    """
    if len(raw) <= inline_bytes:
        common = parse_common(
            raw, received_at=received_at, resolve_timeout=resolve_timeout, max_alerts=max_alerts
        )
        if common is not None:
            return common
        parse = parse_exact  # the fast path has just said no
    else:
        parse = parse_alerts_body
    return await asyncio.to_thread(
        parse,
        raw,
        received_at=received_at,
        resolve_timeout=resolve_timeout,
        max_alerts=max_alerts,
    )


def parse_exact(
    raw: bytes,
    *,
    received_at: datetime,
    resolve_timeout: timedelta = DEFAULT_RESOLVE_TIMEOUT,
    check: Callable[[dict[str, Any]], None] | None = None,
    max_alerts: int = DEFAULT_MAX_ALERTS,
) -> IntakeResult:
    """:func:`parse_alerts_body` without its fast path: Go's decoding rules, always."""
    if received_at.tzinfo is None:
        raise ValueError(f"naive datetime {received_at!r}: pass an aware UTC datetime")
    text = _go_decode(bytes(raw))
    if not text.strip(" \t\r\n"):
        return _schema_answer(_SchemaError(602, "alerts in body is required"))
    try:
        value = _decode_json(text)
        if value is None:
            return IntakeResult(status=200)
        if not isinstance(value, list) or isinstance(value, _Pairs):
            raise _BodyError(
                f"json: cannot unmarshal {_kind(value)} into Go value of type models.PostableAlerts"
            )
        if len(value) > max_alerts:
            message = (
                f"the body holds {len(value)} alerts, more than ALERTQ_INTAKE_MAX_ALERTS "
                f"({max_alerts}): send smaller batches"
            )
            answer = json.dumps({"code": 413, "message": message}, separators=(",", ":"))
            return IntakeResult(status=413, body=answer.encode())
        decoded = [_decode_alert(item) for item in value]
    except _BodyError as exc:
        message = f'parsing alerts body from "" failed, because {exc}'
        answer = json.dumps({"code": 400, "message": message}, separators=(",", ":"))
        return IntakeResult(status=400, body=answer.encode())
    try:
        _schema_check(decoded)
    except _SchemaError as exc:
        return _schema_answer(exc)

    received = _Time(received_at.astimezone(UTC))
    small = len(raw) <= _SMALL_BODY
    alerts: list[dict[str, Any]] = []
    errors: list[str] = []
    for item in decoded:
        assert item is not None  # _schema_check refused null alerts
        alert, error = _normalise(item, received, resolve_timeout)
        if alert is not None:
            try:
                if check is None:
                    _check_normalised(alert, small=small)
                else:
                    check(alert)
            except InvalidAlertPayload as exc:  # a rule alertq adds that the above missed
                alert, error = None, f"refused by alertq: {exc.rule}"
        if alert is None:
            errors.append(error or "invalid alert")
        else:
            alerts.append(alert)
    fingerprints = label_fingerprints([a["labels"] for a in alerts])
    if errors:
        joined = json.dumps("; ".join(errors), ensure_ascii=False) + "\n"
        return IntakeResult(400, joined.encode(), alerts, fingerprints, errors)
    return IntakeResult(200, b"", alerts, fingerprints, [])


def _schema_answer(exc: _SchemaError) -> IntakeResult:
    body = json.dumps({"code": exc.code, "message": str(exc)}, separators=(",", ":"))
    return IntakeResult(status=422, body=body.encode())
