"""Every bound on what an operator or a producer may pass in, in one place.

The CLI, the ops API's request models and path parameters, and the Python API
(:class:`~alertq.breaker.CircuitBreaker`, :mod:`alertq.ops`, :func:`~alertq.enqueue.enqueue_alert`)
all check their arguments with these functions, so they accept and refuse exactly the same
things. Pure: no I/O, no database, no other alertq module. Each check raises
:class:`ValueError` with a message that names what was wrong and echoes at most
:data:`ECHO_LIMIT` characters of the refused value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import timedelta
from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = [
    "DURATION_HELP",
    "DURATION_PATTERN",
    "ECHO_LIMIT",
    "MAX_ALERT_ID",
    "MAX_ALERT_TYPE_LENGTH",
    "MAX_DRIFT_SCORE",
    "MAX_ERROR_COUNT",
    "MAX_INCIDENT_ID_LENGTH",
    "MAX_LIST_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_PAGE",
    "MAX_RETRIES",
    "MAX_SAMPLE_COUNT",
    "MAX_TEXT_LENGTH",
    "NAME_HELP",
    "NAME_PATTERN",
    "PURGEABLE_STATUSES",
    "STATUSES",
    "TEXT_PATTERN",
    "check_count",
    "check_drift_score",
    "check_id_text",
    "check_name",
    "check_optional_text",
    "check_purge_statuses",
    "check_status",
    "check_text",
    "parse_duration",
]

ECHO_LIMIT = 40
"""At most this many characters of a refused value are echoed back."""

MAX_NAME_LENGTH = 200
NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:@-]{{0,{MAX_NAME_LENGTH - 1}}}$"
"""A breaker name: the API's rule (it is a URL path segment), so the CLI, the API and the
Python API accept the same names and every breaker can be reset from either edge."""
NAME_HELP = (
    f"letters, digits and _ . : @ - (starting with a letter or digit, at most {MAX_NAME_LENGTH})"
)

MAX_TEXT_LENGTH = 1000
"""Reasons and resolution notes (they end up in an alert annotation)."""
TEXT_PATTERN = r"^[^\x00]*\S[^\x00]*$"

MAX_ALERT_TYPE_LENGTH = 100
MAX_INCIDENT_ID_LENGTH = 200

DURATION_PATTERN = r"^[1-9][0-9]{0,3}[smhdw]?$"
DURATION_HELP = "a whole number and a unit: s, m, h, d or w (e.g. 90s, 15m, 2h, 30d)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

MAX_RETRIES = 1000
MAX_PAGE = 500
"""The largest ``--limit`` / ``limit`` an operator may ask a list for (CLI and API)."""
MAX_LIST_LIMIT = 10_000
"""The largest ``limit`` the Python API reads in one statement (the status page's snapshot
is the biggest reader)."""
MAX_SAMPLE_COUNT = 1_000_000_000
"""Fits the 32-bit ``sample_count`` column on every backend."""
MAX_ERROR_COUNT = 1_000_000_000
MAX_DRIFT_SCORE = 1e12
MAX_ALERT_ID = 2**63 - 1

STATUSES = ("pending", "sent", "failed", "superseded")
PURGEABLE_STATUSES = ("sent", "failed", "superseded")
"""Every status but ``pending``: deleting undelivered alerts would lose them."""


def _echo(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return repr(text[:ECHO_LIMIT] + "…" if len(text) > ECHO_LIMIT else text)


def _storable(value: str, field: str) -> None:
    """Refuse what no database stores (NUL) or UTF-8 cannot encode (lone surrogates)."""
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field} must be valid UTF-8 (no lone surrogates)") from None


def check_name(value: object, field: str = "name") -> str:
    """A breaker name matching :data:`NAME_PATTERN`."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string (got {type(value).__name__})")
    if not value:
        raise ValueError(f"{field} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{field} is too long: {len(value)} characters (max {MAX_NAME_LENGTH})")
    if not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"invalid {field} {_echo(value)}: use {NAME_HELP}")
    return value


def check_text(value: object, field: str = "reason", max_length: int = MAX_TEXT_LENGTH) -> str:
    """Free text (a reason): not blank, at most ``max_length`` characters, storable."""
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string (got {type(value).__name__})")
    if len(value) > max_length:
        raise ValueError(f"{field} is too long: {len(value)} characters (max {max_length})")
    _storable(value, field)
    if not value.strip():
        raise ValueError(f"{field} must not be blank")
    return value


def check_optional_text(
    value: object, field: str = "reason", max_length: int = MAX_TEXT_LENGTH
) -> str | None:
    """:func:`check_text`, or None."""
    return None if value is None else check_text(value, field, max_length)


def check_id_text(value: object, field: str, max_length: int) -> str:
    """An identifier given as free text (``alert_type``, an incident id): not blank, at most
    ``max_length`` characters, storable."""
    return check_text(value, field, max_length)


def parse_duration(text: object, field: str = "duration") -> timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"30d"``, ``"1w"`` or plain seconds (``"3600"``).

    A whole number from 1 to 9999 and an optional unit, so every duration is positive,
    finite and at most 9999 weeks: ``now ± duration`` is always a valid datetime.
    """
    if not isinstance(text, str):
        raise ValueError(f"{field} must be a string (got {type(text).__name__})")
    value = text.strip().lower()
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid {field} {_echo(text)}: use {DURATION_HELP}")
    if value[-1] in _UNITS:
        return timedelta(seconds=int(value[:-1]) * _UNITS[value[-1]])
    return timedelta(seconds=int(value))


def check_count(value: object, field: str, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` (bools are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer (got {type(value).__name__})")
    if not low <= value <= high:
        raise ValueError(f"{field} must be from {low} to {high} (got {_echo(value)})")
    return value


def check_drift_score(value: object, field: str = "score") -> float:
    """A finite number of at most :data:`MAX_DRIFT_SCORE` in size: NaN compares False with
    every threshold, so it would silently count as "no drift" (or worse, as drift)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number (got {type(value).__name__})")
    score = float(value)
    if not math.isfinite(score) or abs(score) > MAX_DRIFT_SCORE:
        raise ValueError(
            f"{field} must be a finite number from {-MAX_DRIFT_SCORE:g} to "
            f"{MAX_DRIFT_SCORE:g} (got {_echo(value)})"
        )
    return score


def check_status(value: object, field: str = "status") -> str:
    """One of :data:`STATUSES`."""
    if value not in STATUSES:
        raise ValueError(f"unknown {field} {_echo(value)}: use one of {', '.join(STATUSES)}")
    assert isinstance(value, str)
    return value


def check_purge_statuses(values: Iterable[object], field: str = "status") -> list[str]:
    """A non-empty list of :data:`PURGEABLE_STATUSES`, without duplicates."""
    chosen: list[str] = []
    for value in values:
        if value == "pending":
            raise ValueError("refusing to purge pending rows: they have not been delivered")
        if value not in PURGEABLE_STATUSES:
            raise ValueError(
                f"unknown {field} {_echo(value)}: use one or more of "
                f"{', '.join(PURGEABLE_STATUSES)}"
            )
        assert isinstance(value, str)
        if value not in chosen:
            chosen.append(value)
    if not chosen:
        raise ValueError(f"{field} must name at least one of {', '.join(PURGEABLE_STATUSES)}")
    return chosen


def without_userinfo(url: str) -> str:
    """``url`` for a message, with everything up to its last ``@`` after the scheme hidden:
    a password may hold ``/``, ``?`` or ``#`` that a URL parser takes for the host's end."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" not in rest:
        return url[:200]
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}"[:200]


def split_http_url(url: str, what: str = "Alertmanager URL") -> tuple[str, str | None, str | None]:
    """``(key, username, password)`` of an ``http(s)://[user[:password]@]host[:port][/path]``
    URL; the key has no userinfo and no trailing ``/``. ``ValueError`` names the rule
    broken and shows the URL without its userinfo: a parser's own message can quote a
    password (``Port could not be cast to integer value as 'pa'``)."""
    shown = without_userinfo(url.strip())
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        raise ValueError(f"{what} is not a URL: {shown!r}") from None
    if "@" in parts.path + parts.query + parts.fragment:
        raise ValueError(
            f"{what} has an '@' after its host: percent-encode '/', '?', '#' and '@' in a "
            f"username or password (%2F, %3F, %23, %40): {shown!r}"
        )
    try:
        parts.port  # noqa: B018 (a number from 0 to 65535, or ValueError)
    except ValueError:
        raise ValueError(f"{what} has no valid port: {shown!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://: {shown!r}")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    key = urlunsplit((parts.scheme.lower(), hostport, parts.path.rstrip("/"), "", ""))
    if not parts.hostname:
        raise ValueError(f"{what} must be http(s)://host[:port][/path]: {shown!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment: {key!r}")
    if not userinfo:
        return key, None, None
    user, sep, password = userinfo.partition(":")
    return key, unquote(user), unquote(password) if sep else None
