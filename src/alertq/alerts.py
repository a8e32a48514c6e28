"""Alertmanager payload rules and fingerprints. Pure: no I/O.

A payload is what ``POST /api/v2/alerts`` takes: a JSON array of alerts. alertq checks it
when it is enqueued, more strictly than Alertmanager 0.25 does, so a row that enters the
queue can never be refused for its content later (a refusal would dead-letter it). The
promise is: **anything** ``enqueue_alert`` **accepts, Alertmanager 0.25 accepts**;
``tests/acceptance/test_payload_differential.py`` checks it against a real Alertmanager
with the corpus in ``tests/support/payload_corpus.py``. The rules:

* a non-empty list of at most :data:`MAX_ALERTS_PER_PAYLOAD` alerts, at most
  :data:`MAX_PAYLOAD_BYTES` as JSON;
* each alert an object with only the keys in :data:`ALLOWED_ALERT_KEYS`;
* ``labels`` a non-empty object that includes ``alertname``; label and annotation names
  match ``[a-zA-Z_][a-zA-Z0-9_]*`` in ASCII (Alertmanager's classic rule); values are
  strings, label values non-empty (Alertmanager drops empty-valued labels before
  fingerprinting);
* ``startsAt`` / ``endsAt`` RFC 3339 with ASCII digits, an upper-case ``T`` and a ``Z`` or
  ``±hh:mm`` offset, ``endsAt >= startsAt``;
* a ``startsAt`` later than ``now`` + :data:`FUTURE_STARTS_AT_TOLERANCE` needs an ``endsAt``.
  Alertmanager sets a missing ``endsAt`` to *its* now + ``resolve_timeout`` and refuses the
  alert ("start time must be before end time") when ``startsAt`` is later than that. alertq
  cannot know the target's ``resolve_timeout``, and a row is delivered at or after its due
  time ``now``, so Alertmanager's now only moves closer to ``startsAt``: with this rule the
  alert is accepted by any Alertmanager whose ``resolve_timeout`` exceeds the tolerance
  plus how far alertq's clock runs ahead of Alertmanager's. The tolerance only absorbs
  clock skew between the producer and alertq; a scheduled alert must say when it ends.
  ``now`` is the caller's (``enqueue_alert`` passes the row's due time); without one this
  rule is not checked, which only builders whose alerts always carry ``endsAt`` rely on;
* ``generatorURL`` an ``http``/``https`` URL with a host, or a path starting with a single
  ``/`` (what Prometheus sends without an external URL). Anything else (``javascript:``,
  ``data:``, ``file:``, network-path ``//host``, user info) is refused, since the
  Alertmanager UI renders it as a link; so are whitespace, control characters and a ``%``
  not followed by two hex digits, which Alertmanager refuses;
* no two alerts with the same label set;
* every string valid UTF-8 (no lone surrogates) without NUL, which PostgreSQL's
  ``jsonb`` cannot store.

Every violation raises :class:`InvalidAlertPayload`, and nothing else is raised.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

__all__ = [
    "ALLOWED_ALERT_KEYS",
    "BREAKER_ALERTNAME",
    "BREAKER_FIRING_TYPE",
    "BREAKER_RESOLVING_TYPE",
    "FUTURE_STARTS_AT_TOLERANCE",
    "MAX_ALERTS_PER_PAYLOAD",
    "MAX_PAYLOAD_BYTES",
    "BreakerIncident",
    "InvalidAlertPayload",
    "breaker_firing_payload",
    "breaker_labels",
    "breaker_resolved_payload",
    "check_generator_url",
    "label_fingerprint",
    "label_fingerprints",
    "parse_payload",
    "payload_fingerprint",
    "rfc3339",
    "validate_payload",
    "with_ends_at",
]

MAX_ALERTS_PER_PAYLOAD = 256
"""One Alertmanager batch, as Prometheus sends it."""

MAX_PAYLOAD_BYTES = 1_000_000
"""Limit on the payload as compact UTF-8 JSON (and on the raw text given to parse_payload)."""

ALLOWED_ALERT_KEYS = ("labels", "annotations", "startsAt", "endsAt", "generatorURL")
"""The keys of an alert, in the order the normalised copy has them."""

FUTURE_STARTS_AT_TOLERANCE = timedelta(seconds=5)
"""How far past ``now`` a ``startsAt`` may be without an ``endsAt`` (clock skew, not scheduling)."""

# Every pattern is ASCII-only: \d, \w and int() also take other scripts' digits
# ("١٢٣٤"), which Go refuses.
_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*", re.ASCII)
# RFC 3339 as Go's time.RFC3339 parses it: upper-case T and Z, at most nanoseconds.
_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(Z|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_URL_SCHEME_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):", re.ASCII)
# host[:port]: a DNS-style name (non-ASCII allowed for IDNs) or a bracketed IPv6 literal.
# Narrower than Go's url.Parse, which also takes sub-delims and %-escapes in a host.
_URL_AUTHORITY_RE = re.compile(
    r"(?:(?P<name>(?:[a-zA-Z0-9._~-]|[^\x00-\x7f])+)|\[(?P<ipv6>[0-9a-fA-F:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_BAD_PERCENT_RE = re.compile(r"%(?![0-9a-fA-F]{2})", re.ASCII)
_USERINFO_RE = re.compile(r"//[^/?#]*@")
_ECHO_MAX = 80

_FNV64_OFFSET = 14695981039346656037
_FNV64_PRIME = 1099511628211
_MASK64 = 0xFFFFFFFFFFFFFFFF
_SEP = 0xFF  # prometheus/common model.SeparatorByte: never occurs in UTF-8


class InvalidAlertPayload(ValueError):
    """A payload (or enqueue argument) that breaks a rule; the only error this module raises.

    ``index`` is the alert's position in the payload (None for the payload as a whole),
    ``field`` the dotted path inside the alert (e.g. ``labels.severity``) or None, and
    ``rule`` what was broken. ``str(exc)`` is one line: ``alert[2].labels.severity: ...``
    (``payload: ...`` for the payload as a whole, ``alert_type: ...`` for an enqueue
    argument, where ``index`` is None and ``field`` names the argument).
    """

    index: int | None
    field: str | None
    rule: str

    def __init__(self, rule: str, *, index: int | None = None, field: str | None = None) -> None:
        self.index = index
        self.field = field
        self.rule = rule
        super().__init__(_format(index, field, rule))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.rule, self.index, self.field))


def _rebuild(rule: str, index: int | None, field: str | None) -> InvalidAlertPayload:
    return InvalidAlertPayload(rule, index=index, field=field)


def _format(index: int | None, field: str | None, rule: str) -> str:
    if index is None:
        where = field or "payload"  # a field without an index is an enqueue argument
    else:
        where = f"alert[{index}].{field}" if field else f"alert[{index}]"
    return f"{where}: {rule}"


def _echo(value: str) -> str:
    """A short, one-line, printable rendering of a user string for an error message."""
    if len(value) > _ECHO_MAX:
        return repr(value[:_ECHO_MAX]) + f"... ({len(value)} chars)"
    return repr(value)


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


# ---------------------------------------------------------------------------- parsing


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidAlertPayload(f"duplicate JSON object key {_echo(key)}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise InvalidAlertPayload(f"not valid JSON: {name} is not a JSON value")


def parse_payload(raw: str | bytes, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Parse JSON text and :func:`validate_payload` it (with ``now``).

    Raises :class:`InvalidAlertPayload` for text over :data:`MAX_PAYLOAD_BYTES`, invalid
    UTF-8, invalid JSON (including ``NaN`` / ``Infinity`` and duplicate object keys, which
    JSON parsers resolve differently) and anything :func:`validate_payload` refuses.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise InvalidAlertPayload(
                f"payload too large: {len(data)} bytes (max {MAX_PAYLOAD_BYTES})"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidAlertPayload(f"not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    elif isinstance(raw, str):
        text = raw
        if len(text) > MAX_PAYLOAD_BYTES:
            raise InvalidAlertPayload(
                f"payload too large: {len(text)} characters (max {MAX_PAYLOAD_BYTES} bytes)"
            )
    else:
        raise InvalidAlertPayload(f"JSON text must be str or bytes (got {_type(raw)})")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise InvalidAlertPayload(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidAlertPayload("not valid JSON: nested too deeply") from None
    except InvalidAlertPayload:
        raise
    except ValueError:
        # An integer literal longer than Python's int_max_str_digits (4300) is refused by
        # json.loads with a bare ValueError, not a JSONDecodeError.
        raise InvalidAlertPayload("not valid JSON: a number literal is too long") from None
    return validate_payload(value, now=now)


# ---------------------------------------------------------------------------- validation


def _check_text(value: str, index: int | None, field: str, what: str) -> None:
    """Valid UTF-8 (no lone surrogates) and no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAlertPayload(
            f"{what} is not valid UTF-8 (lone surrogate): {_echo(value)}",
            index=index,
            field=field,
        ) from None
    if "\x00" in value:
        raise InvalidAlertPayload(
            f"{what} must not contain NUL (\\u0000): {_echo(value)}", index=index, field=field
        )


def _check_name(name: object, index: int, field: str, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidAlertPayload(
            f"{what} name must be a string (got {_type(name)})", index=index, field=field
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidAlertPayload(
            f"invalid {what} name {_echo(name)}: must match [a-zA-Z_][a-zA-Z0-9_]*",
            index=index,
            field=field,
        )
    return name


def _check_string_map(
    value: object, index: int, field: str, what: str, *, allow_empty_values: bool
) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidAlertPayload(
            f"{field} must be an object of {what} names to strings (got {_type(value)})",
            index=index,
            field=field,
        )
    result: dict[str, str] = {}
    for raw_name, raw_value in value.items():
        name = _check_name(raw_name, index, field, what)
        path = f"{field}.{name}"
        if not isinstance(raw_value, str):
            raise InvalidAlertPayload(
                f"{what} value must be a string (got {_type(raw_value)})", index=index, field=path
            )
        if not raw_value and not allow_empty_values:
            raise InvalidAlertPayload(
                f"{what} value must not be empty (Alertmanager drops empty-valued labels, "
                "changing the label set); omit the label instead",
                index=index,
                field=path,
            )
        _check_text(raw_value, index, path, f"{what} value")
        result[name] = str(raw_value)
    return result


def _parse_time(value: object, index: int, field: str) -> tuple[datetime, int]:
    """An RFC 3339 string → (UTC datetime to the second, nanoseconds), for comparison."""
    if not isinstance(value, str):
        raise InvalidAlertPayload(
            f"must be an RFC 3339 timestamp string (got {_type(value)})", index=index, field=field
        )
    match = _RFC3339_RE.fullmatch(value)
    if match is None:
        raise InvalidAlertPayload(
            f"not an RFC 3339 timestamp with a timezone (e.g. 2024-05-01T12:00:00Z): "
            f"{_echo(value)}",
            index=index,
            field=field,
        )
    year, month, day, hour, minute, second, frac, zone, sign, off_h, off_m = match.groups()
    try:
        tz = UTC
        if zone != "Z":
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        ).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidAlertPayload(
            f"not a valid RFC 3339 date and time: {_echo(value)}", index=index, field=field
        ) from None
    nanos = int((frac or "").ljust(9, "0"))
    return moment, nanos


def check_generator_url(value: object) -> str:
    """``value`` if it is a valid ``generatorURL`` (see the module docstring), for settings
    that end up in one; else :class:`InvalidAlertPayload` (``field`` ``generatorURL``)."""
    return _check_url(value, None)


def _check_url(value: object, index: int | None) -> str:
    """An ``http``/``https`` URL with a host, or a path starting with one ``/``."""
    field = "generatorURL"
    if not isinstance(value, str):
        raise InvalidAlertPayload(
            f"must be a URL string (got {_type(value)})", index=index, field=field
        )
    _check_text(value, index, field, "generatorURL")
    bad = "must be an http(s) URL with a host (e.g. https://host/path) or a path starting with /"

    def refuse(why: str = "") -> InvalidAlertPayload:
        shown = _echo(_USERINFO_RE.sub("//***@", value))  # a password never reaches a message
        return InvalidAlertPayload(f"{bad}{why}: {shown}", index=index, field=field)

    # Format characters (U+202E, zero-width ...) could disguise a link; Go refuses controls.
    if any(c.isspace() or unicodedata.category(c) in ("Cc", "Cf") for c in value):
        raise refuse("; whitespace and control characters are not allowed")
    if _BAD_PERCENT_RE.search(value):
        raise refuse("; every % must start an escape like %2F")
    if value.startswith("/"):
        # "//host" (and "/\\host", which browsers read alike) is a link to another host.
        if value.startswith(("//", "/\\")):
            raise refuse("; a path must start with a single /")
        return value
    scheme = _URL_SCHEME_RE.match(value)
    if scheme is None or scheme.group(1).lower() not in ("http", "https"):
        raise refuse()
    rest = value[scheme.end() :]
    if not rest.startswith("//"):
        raise refuse()
    # The authority ends at the first "/" or "?" (as Go's url.ParseRequestURI splits it).
    authority = re.split(r"[/?]", rest[2:], maxsplit=1)[0]
    if "@" in authority:
        raise refuse("; user info (credentials) is not allowed")
    match = _URL_AUTHORITY_RE.fullmatch(authority)
    if match is None:
        raise refuse()
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            raise refuse() from None
    if match["port"] is not None and int(match["port"]) > 65535:
        raise refuse()
    return value


def _validate_alert(alert: object, index: int, now: datetime | None) -> dict[str, Any]:
    if not isinstance(alert, Mapping):
        raise InvalidAlertPayload(
            f"each alert must be a JSON object (got {_type(alert)})", index=index
        )
    for key in alert:
        if key not in ALLOWED_ALERT_KEYS:
            shown = _echo(key) if isinstance(key, str) else f"of type {_type(key)}"
            raise InvalidAlertPayload(
                f"unknown key {shown}; allowed keys: {', '.join(ALLOWED_ALERT_KEYS)}",
                index=index,
            )

    if alert.get("labels") is None:
        raise InvalidAlertPayload("labels is required", index=index, field="labels")
    labels = _check_string_map(alert["labels"], index, "labels", "label", allow_empty_values=False)
    if not labels:
        raise InvalidAlertPayload(
            "labels must not be empty (at least alertname)", index=index, field="labels"
        )
    if "alertname" not in labels:
        raise InvalidAlertPayload(
            "labels must include alertname", index=index, field="labels.alertname"
        )
    result: dict[str, Any] = {"labels": labels}

    # An optional key given as null counts as absent and is left out of the copy.
    if alert.get("annotations") is not None:
        result["annotations"] = _check_string_map(
            alert["annotations"], index, "annotations", "annotation", allow_empty_values=True
        )

    starts = ends = None
    if alert.get("startsAt") is not None:
        starts = _parse_time(alert["startsAt"], index, "startsAt")
        result["startsAt"] = str(alert["startsAt"])
    if alert.get("endsAt") is not None:
        ends = _parse_time(alert["endsAt"], index, "endsAt")
        result["endsAt"] = str(alert["endsAt"])
    if starts is not None and ends is not None and ends < starts:
        raise InvalidAlertPayload(
            f"endsAt ({result['endsAt']}) must not be before startsAt ({result['startsAt']})",
            index=index,
            field="endsAt",
        )
    if starts is not None and ends is None and now is not None:
        latest = now.astimezone(UTC) + FUTURE_STARTS_AT_TOLERANCE
        if starts > (latest.replace(microsecond=0), latest.microsecond * 1000):
            raise InvalidAlertPayload(
                f"startsAt ({result['startsAt']}) is more than "
                f"{FUTURE_STARTS_AT_TOLERANCE.total_seconds():g}s in the future: give an endsAt "
                "(Alertmanager refuses a future startsAt once it is past its resolve_timeout)",
                index=index,
                field="startsAt",
            )

    if alert.get("generatorURL") is not None:
        result["generatorURL"] = _check_url(alert["generatorURL"], index)
    return result


def validate_payload(payload: object, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Check ``payload`` against the rules above; return a normalised copy.

    ``now`` (aware) is when the alerts will be sent at the earliest: a ``startsAt`` more
    than :data:`FUTURE_STARTS_AT_TOLERANCE` after it needs an ``endsAt``. Without ``now``
    that one rule is skipped. A naive ``now`` is a programming error: :class:`ValueError`.

    The copy holds plain ``dict`` / ``list`` / ``str`` only, each alert with only the keys
    that were present (and not null) among :data:`ALLOWED_ALERT_KEYS`, in that order.
    Raises :class:`InvalidAlertPayload` (and nothing else) naming the first violation.
    """
    if now is not None and now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware UTC datetime")
    if not isinstance(payload, list | tuple):
        raise InvalidAlertPayload(f"must be a JSON array of alerts (got {_type(payload)})")
    if not payload:
        raise InvalidAlertPayload("must contain at least one alert")
    if len(payload) > MAX_ALERTS_PER_PAYLOAD:
        raise InvalidAlertPayload(
            f"too many alerts: {len(payload)} (max {MAX_ALERTS_PER_PAYLOAD} per payload)"
        )
    alerts: list[dict[str, Any]] = []
    seen: dict[frozenset[tuple[str, str]], int] = {}
    for index, raw_alert in enumerate(payload):
        alert = _validate_alert(raw_alert, index, now)
        label_set = frozenset(alert["labels"].items())
        first = seen.setdefault(label_set, index)
        if first != index:
            raise InvalidAlertPayload(
                f"duplicate label set: same labels as alert[{first}] "
                "(Alertmanager would treat them as one alert)",
                index=index,
                field="labels",
            )
        alerts.append(alert)
    size = len(json.dumps(alerts, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        raise InvalidAlertPayload(f"payload too large: {size} bytes (max {MAX_PAYLOAD_BYTES})")
    return alerts


# ---------------------------------------------------------------------------- fingerprints


FINGERPRINT_PATTERN = "^[0-9a-f]{16}$"
""":func:`label_fingerprint`'s format (a cursor in a list, a path in the API)."""


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's fingerprint of a label set, as its API v2 ``fingerprint`` shows it.

    prometheus/common ``model.LabelSet.Fingerprint``: FNV-1a 64 over the label names in
    sorted order, each written as ``name 0xff value 0xff``; formatted ``%016x``. Labels
    with an empty value are left out first, as Alertmanager deletes them on receipt.
    Names and values must be encodable as UTF-8.
    """
    return f"{_fnv(_FNV64_OFFSET, _fnv_input_exact(labels)):016x}"


# label_fingerprints: each label set's FNV state in its own lane of one Python int, so one
# big-int step advances every set by a byte. 112-bit lanes hold a 64-bit state times the
# 41-bit prime (105 bits) without carrying into the next lane.
_LANE = 14
_LANE_OFFSET = _FNV64_OFFSET.to_bytes(8, "little") + bytes(_LANE - 8)
_LANE_MASK = b"\xff" * 8 + bytes(_LANE - 8)
_SWAR_SETS = 256  # sets per int
_SWAR_MAX_BYTES = 1024  # a longer set is hashed alone (its row of the grid would be large)
_SWAR_TAIL = 4  # so few sets left: finish them one by one


def _fnv_input(labels: Mapping[str, str]) -> bytes:
    # One join and one encode, NUL standing in for the separator 0xff (never in UTF-8);
    # byte by byte only when a label holds a NUL of its own.
    parts = [f"{n}\0{v}\0" for n in sorted(labels) if (v := labels[n]) != ""]
    text = "".join(parts)
    if text.count("\0") != 2 * len(parts):  # a name or value holds NUL itself
        return _fnv_input_exact(labels)
    return text.encode("utf-8").replace(b"\0", b"\xff")


def _fnv_input_exact(labels: Mapping[str, str]) -> bytes:
    # The definition, byte by byte; Go sorts label names byte-wise, which for valid UTF-8
    # is code-point order. label_fingerprint uses it, so it is the reference for _fnv_input.
    sep = bytes([_SEP])
    out = bytearray()
    for name in sorted(labels):
        value = labels[name]
        if value != "":
            out += name.encode("utf-8") + sep + value.encode("utf-8") + sep
    return bytes(out)


def _fnv(h: int, data: bytes) -> int:
    prime, mask = _FNV64_PRIME, _MASK64
    for byte in data:
        h = ((h ^ byte) * prime) & mask
    return h


def label_fingerprints(label_sets: Sequence[Mapping[str, str]]) -> list[str]:
    """:func:`label_fingerprint` of each label set, computed together (a few times faster
    for a batch of alerts)."""
    values: list[int] = []
    for start in range(0, len(label_sets), _SWAR_SETS):
        values += _fnv_lanes([_fnv_input(s) for s in label_sets[start : start + _SWAR_SETS]])
    return [f"{h:016x}" for h in values]


def _fnv_lanes(data: list[bytes]) -> list[int]:
    result = [_FNV64_OFFSET] * len(data)
    # Longest first, so the sets still running are always the low lanes.
    order = sorted(
        (i for i in range(len(data)) if len(data[i]) <= _SWAR_MAX_BYTES),
        key=lambda i: len(data[i]),
        reverse=True,
    )
    for i in range(len(data)):
        if len(data[i]) > _SWAR_MAX_BYTES:
            result[i] = _fnv(_FNV64_OFFSET, data[i])
    lengths = [len(data[i]) for i in order]
    active = len(order)
    while active and lengths[active - 1] == 0:
        active -= 1
    if not active:
        return result
    stride = active * _LANE
    grid = bytearray(lengths[0] * stride)
    for lane in range(active):
        row = data[order[lane]]
        grid[lane * _LANE : lane * _LANE + len(row) * stride : stride] = row
    h = int.from_bytes(_LANE_OFFSET * active, "little")
    mask = int.from_bytes(_LANE_MASK * active, "little")
    step = 0
    while active > _SWAR_TAIL:
        x = int.from_bytes(grid[step * stride : step * stride + active * _LANE], "little")
        h = ((h ^ x) * _FNV64_PRIME) & mask
        step += 1
        if lengths[active - 1] == step:
            lanes = h.to_bytes(active * _LANE, "little")
            while active and lengths[active - 1] == step:
                active -= 1
                result[order[active]] = int.from_bytes(
                    lanes[active * _LANE : active * _LANE + 8], "little"
                )
            keep = (1 << (active * _LANE * 8)) - 1
            h, mask = h & keep, mask & keep
    lanes = h.to_bytes(active * _LANE, "little")
    for lane in range(active):
        state = int.from_bytes(lanes[lane * _LANE : lane * _LANE + 8], "little")
        result[order[lane]] = _fnv(state, data[order[lane]][step:])
    return result


def payload_fingerprint(payload: list[dict[str, Any]]) -> str:
    """The identity of a (validated) payload's label set(s), stored in the row's fingerprint.

    One alert: its :func:`label_fingerprint`, equal to Alertmanager's. Several: a hash of
    their sorted fingerprints (32 hex characters, so it never equals a single alert's):
    the same group of label sets in any order gives the same value. Rows are ordered and
    superseded per fingerprint, i.e. per row's *group* of label sets: a row with alerts
    {A, B} neither orders with nor supersedes a row with just {A}.
    """
    if not payload:
        raise InvalidAlertPayload("must contain at least one alert")
    prints = sorted(label_fingerprint(alert["labels"]) for alert in payload)
    if len(prints) == 1:
        return prints[0]
    return hashlib.sha256(",".join(prints).encode("ascii")).hexdigest()[:32]


# ---------------------------------------------------------------------------- breaker alerts

BREAKER_ALERTNAME = "CircuitBreakerOpen"
"""The alertname of every circuit breaker alert, firing and resolving alike."""

BREAKER_COMPONENT = "circuit_breaker"
"""The ``component`` label of circuit breaker alerts."""

BREAKER_FIRING_TYPE = "disable"
"""``alert_type`` of an incident's firing alert row (the legacy value)."""

BREAKER_RESOLVING_TYPE = "enable"
"""``alert_type`` of an incident's resolving alert row (the legacy value)."""

KEEPALIVE_FACTOR = 4
"""A firing alert's ``endsAt`` is ``now + KEEPALIVE_FACTOR × resend_interval`` (as Prometheus)."""


class BreakerIncident(Protocol):
    """What the breaker alert builders read from an incident (a model row or a view)."""

    @property
    def id(self) -> str: ...
    @property
    def circuit_breaker_name(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def reason(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def drift_score(self) -> float | None: ...
    @property
    def resolved_at(self) -> datetime | None: ...
    @property
    def resolved_by(self) -> str | None: ...
    @property
    def resolution_notes(self) -> str | None: ...


def rfc3339(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC, to the microsecond: ``2026-01-01T12:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: pass an aware UTC datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def breaker_labels(incident: BreakerIncident, *, instance: str) -> dict[str, str]:
    """The label set of an incident's alert: the same for its firing and resolving alerts.

    Only stable values (no timestamps, attempts or hosts), so Alertmanager fingerprints
    every send of one incident as the same alert. ``incident_id`` makes each trip its own
    alert: a new trip of the same breaker never revives a resolved one.
    """
    return {
        "alertname": BREAKER_ALERTNAME,
        "circuit_breaker": incident.circuit_breaker_name,
        "severity": incident.severity,
        "component": BREAKER_COMPONENT,
        "instance": instance,
        "incident_id": incident.id,
    }


def _breaker_alert(
    incident: BreakerIncident,
    annotations: dict[str, str],
    ends_at: datetime,
    *,
    instance: str,
    generator_url: str | None,
) -> list[dict[str, Any]]:
    starts_at = incident.timestamp
    alert: dict[str, Any] = {
        "labels": breaker_labels(incident, instance=instance),
        "annotations": annotations,
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(max(ends_at, starts_at)),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return validate_payload([alert])


def breaker_firing_payload(
    incident: BreakerIncident,
    *,
    now: datetime,
    resend_interval: float,
    instance: str,
    runbook_url: str,
    generator_url: str | None = None,
) -> list[dict[str, Any]]:
    """The firing alert of an open incident, valid until ``now + 4 × resend_interval``.

    ``startsAt`` is the incident's timestamp. Alertmanager resolves the alert by itself
    only if no keep-alive refreshes ``endsAt`` for four intervals.
    """
    name = incident.circuit_breaker_name
    details = [f"Circuit breaker {name} tripped: {incident.reason}."]
    if incident.drift_score is not None:
        details.append(f"Drift score {incident.drift_score:g}.")
    details.append(f"Incident {incident.id}, severity {incident.severity}.")
    annotations = {
        "summary": f"Circuit breaker {name} is open",
        "description": " ".join(details),
        "runbook_url": runbook_url,
    }
    ends_at = now + timedelta(seconds=KEEPALIVE_FACTOR * resend_interval)
    return _breaker_alert(
        incident, annotations, ends_at, instance=instance, generator_url=generator_url
    )


def breaker_resolved_payload(
    incident: BreakerIncident,
    *,
    instance: str,
    runbook_url: str,
    generator_url: str | None = None,
) -> list[dict[str, Any]]:
    """The resolving alert of a resolved incident: the firing alert's exact labels, with
    ``endsAt`` = the resolution time (so every re-send states the same thing)."""
    if incident.resolved_at is None:
        raise ValueError(f"incident {incident.id} is not resolved")
    name = incident.circuit_breaker_name
    by = f" by {incident.resolved_by}" if incident.resolved_by else ""
    notes = f": {incident.resolution_notes}" if incident.resolution_notes else ""
    annotations = {
        "summary": f"Circuit breaker {name} is closed again",
        "description": (
            f"Circuit breaker {name} was re-enabled{by}{notes}. "
            f"It had tripped: {incident.reason}. Incident {incident.id}."
        ),
        "runbook_url": runbook_url,
    }
    return _breaker_alert(
        incident, annotations, incident.resolved_at, instance=instance, generator_url=generator_url
    )


def with_ends_at(payload: list[dict[str, Any]], ends_at: datetime) -> list[dict[str, Any]]:
    """A copy of a (valid) payload with every alert's ``endsAt`` set to ``ends_at`` (but never
    before its ``startsAt``). Labels are untouched, so the fingerprint is too."""
    alerts = []
    for alert in payload:
        end = ends_at
        if alert.get("startsAt"):
            end = max(end, datetime.fromisoformat(alert["startsAt"]))
        alerts.append({**alert, "endsAt": rfc3339(end)})
    return validate_payload(alerts)
