"""The Alertmanager delivery adapter: the only module of alertq that speaks HTTP.

It posts a batch of alerts to every configured Alertmanager at once and reports one
:class:`TargetResult` per target, already classified (ok / retryable / permanent /
misconfigured). It decides nothing about retries; the engine does that with these results.

Credentials (basic auth, bearer token, ``user:password@`` in a URL) are sent only in the
``Authorization`` header and never appear in a target key, an error text, a log line or
``repr()``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from alertq.config import Settings
from alertq.limits import split_http_url

__all__ = [
    "AlertmanagerClient",
    "ErrorClass",
    "TargetHealth",
    "TargetResult",
    "TargetUptime",
    "classify_status",
    "parse_retry_after",
    "target_key",
]

log = logging.getLogger("alertq.delivery")

ALERTS_PATH = "/api/v2/alerts"
READY_PATH = "/-/ready"
STATUS_PATH = "/api/v2/status"
_UPTIME_RE = re.compile(r'"uptime"\s*:\s*"([^"\\]{1,64})"')
# How much of a response body is kept in results, and the most that is ever read.
RESPONSE_TEXT_LIMIT = 512
_READ_LIMIT = 64 * 1024
_REDACTED = "***"
_JSON_HEADERS = {"Content-Type": "application/json"}


class ErrorClass(StrEnum):
    """What a failed delivery means for the row and for the target."""

    RETRYABLE = "retryable"  # transient: network, timeout, 408, 429, 5xx
    PERMANENT = "permanent"  # this payload will never be accepted (400, 413, 415, 422, ...)
    MISCONFIGURED = "misconfigured"  # the target is wrong (401/403/404/405/410, redirects, TLS)


@dataclass(frozen=True, slots=True)
class TargetResult:
    """Outcome of one POST to one Alertmanager."""

    target: str  # credential-free target key, e.g. "http://127.0.0.1:9093"
    ok: bool
    error_class: ErrorClass | None
    status_code: int | None
    response_text: str  # body truncated to RESPONSE_TEXT_LIMIT chars, "" on success
    retry_after: float | None  # seconds, from Retry-After
    duration: float  # seconds
    error: str | None  # short description, never contains credentials


@dataclass(frozen=True, slots=True)
class TargetUptime:
    """One reading of an Alertmanager's ``/api/v2/status``: its ``uptime`` (the time it
    started, which changes when it restarts), or why it could not be read."""

    target: str
    uptime: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """Outcome of one ``GET /-/ready``."""

    target: str
    ready: bool
    error: str | None
    duration: float


def classify_status(status: int) -> ErrorClass | None:
    """Map an HTTP status to an :class:`ErrorClass`; ``None`` means accepted (2xx)."""
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return ErrorClass.MISCONFIGURED  # redirects are never followed
    if status in (401, 403, 404, 405, 410):
        return ErrorClass.MISCONFIGURED
    if status in (408, 429):
        return ErrorClass.RETRYABLE
    if 400 <= status < 500:
        return ErrorClass.PERMANENT
    return ErrorClass.RETRYABLE  # 5xx and anything non-standard


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delta-seconds or HTTP-date) into seconds ≥ 0.

    ``now`` is a UNIX timestamp (defaults to the current time). Returns ``None`` when the
    header is absent or unparseable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN / inf
        return None
    return max(0.0, seconds)


def target_key(url: str) -> str:
    """The credential-free key of an Alertmanager URL (no userinfo, no trailing ``/``)."""
    return split_http_url(url)[0]


def _redirect_target(location: str) -> str:
    """A redirect's ``Location`` as a log may show it: any URL an Alertmanager (or a proxy
    in front of it) sends, relative or with a query, without userinfo, query or fragment.
    Raising here once failed every record of the cycle, for every target."""
    try:
        parts = urlsplit(location.strip())
    except ValueError:
        return "?"
    host = parts.netloc.rpartition("@")[2]
    shown = urlunsplit((parts.scheme.lower(), host, parts.path, "", ""))
    return " ".join(shown.split())[:200] or "?"


@dataclass(slots=True)
class _Target:
    key: str
    client: httpx.AsyncClient


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    text: str
    retry_after: float | None
    location: str | None


class AlertmanagerClient:
    """Posts alerts to a set of Alertmanagers, each with its own keep-alive HTTP client.

    Never raises for a delivery failure: each target gets a classified result.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        ca_file: str | Path | None = None,
        verify: bool = True,
    ) -> None:
        """Create one client per URL.

        ``timeout`` bounds each request as a whole (connect + send + every read).
        ``user:password@`` in a URL is used as basic auth for that URL and overrides the
        global ``username``/``password``/``bearer_token``. ``ca_file`` adds a trusted CA;
        ``verify=False`` disables certificate checks entirely.
        """
        if not urls:
            raise ValueError("at least one Alertmanager URL is required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if bearer_token is not None and username is not None:
            raise ValueError("configure either basic auth or a bearer token, not both")
        if password is not None and username is None:
            raise ValueError("a password needs a username")
        self._timeout = float(timeout)
        self._secrets: set[str] = set()

        default_auth: str | None = None
        if username is not None:
            default_auth = self._basic_auth(username, password)
        elif bearer_token is not None:
            default_auth = f"Bearer {bearer_token}"
            self._remember(bearer_token)

        tls: ssl.SSLContext | bool = True
        if not verify:
            tls = False
        elif ca_file is not None:
            tls = ssl.create_default_context(cafile=str(ca_file))

        self._auth_kind = (
            "bearer" if bearer_token is not None else "basic" if username is not None else None
        )
        parsed = [split_http_url(url) for url in urls]  # validate all before opening any client
        keys = [key for key, _, _ in parsed]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate Alertmanager URL in {keys!r}")
        self._targets: dict[str, _Target] = {}
        for key, url_user, url_password in parsed:
            auth = default_auth
            if url_user is not None:
                auth = self._basic_auth(url_user, url_password)
            headers = {"User-Agent": "alertq", "Accept": "application/json"}
            if auth is not None:
                headers["Authorization"] = auth
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._timeout),
                verify=tls,
                follow_redirects=False,
                trust_env=False,  # no proxy env vars or ~/.netrc credentials: config only
            )
            self._targets[key] = _Target(key, client)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertmanagerClient:
        """Build a client from the ``alertmanager_*`` settings."""
        password = settings.alertmanager_password
        token = settings.alertmanager_bearer_token
        return cls(
            settings.alertmanager_urls,
            timeout=settings.alertmanager_timeout,
            username=settings.alertmanager_username,
            password=password.get_secret_value() if password is not None else None,
            bearer_token=token.get_secret_value() if token is not None else None,
            ca_file=settings.alertmanager_ca_file,
            verify=settings.alertmanager_tls_verify,
        )

    @property
    def targets(self) -> list[str]:
        """The credential-free target keys, in configured order."""
        return list(self._targets)

    @property
    def timeout(self) -> float:
        """The overall deadline of one request, in seconds."""
        return self._timeout

    def __repr__(self) -> str:
        return (
            f"AlertmanagerClient(targets={self.targets!r}, timeout={self._timeout}, "
            f"auth={self._auth_kind!r})"
        )

    async def post_alerts(
        self, alerts: list[dict[str, Any]], targets: Sequence[str] | None = None
    ) -> list[TargetResult]:
        """POST ``alerts`` to ``{url}/api/v2/alerts`` on all targets (or the given keys) at once.

        Returns one result per target, in the order of ``targets`` (or configured order).
        The body is serialized once. Raises ``ValueError`` for an unknown target key and
        ``TypeError`` if ``alerts`` is not JSON-serializable.
        """
        self._select(targets)  # an unknown target fails before any encoding
        body = json.dumps(alerts, separators=(",", ":"), ensure_ascii=False).encode()
        return await self.post_raw(body, targets)

    async def post_raw(
        self, body: bytes, targets: Sequence[str] | None = None
    ) -> list[TargetResult]:
        """Like :meth:`post_alerts`, with the body already encoded: a JSON array of alerts.

        The worker builds it by joining the payloads as stored, so alerts go out without
        being decoded and encoded again. Raises ``ValueError`` for an unknown target key.
        """
        chosen = self._select(targets)
        if len(chosen) == 1:  # the common single-target case needs no extra task
            return [await self._post_one(chosen[0], body)]
        return list(await asyncio.gather(*(self._post_one(t, body) for t in chosen)))

    async def check_ready(self) -> list[TargetHealth]:
        """``GET {url}/-/ready`` on every target concurrently; ready means HTTP 200."""
        chosen = self._select(None)
        return list(await asyncio.gather(*(self._check_one(t) for t in chosen)))

    async def read_uptimes(self) -> list[TargetUptime]:
        """``GET {url}/api/v2/status`` on every target concurrently: each one's ``uptime``."""
        chosen = self._select(None)
        return list(await asyncio.gather(*(self._uptime_one(t) for t in chosen)))

    async def aclose(self) -> None:
        """Close every HTTP client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(t.client.aclose() for t in self._targets.values()))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals ---------------------------------------------------------------------

    def _remember(self, *secrets: str | None) -> None:
        """Record secret strings so that error and response texts can be scrubbed of them."""
        self._secrets.update(s for s in secrets if s)

    def _basic_auth(self, username: str, password: str | None) -> str:
        """The basic ``Authorization`` value; the password and its encoded form are secrets."""
        token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
        self._remember(password, token)
        return f"Basic {token}"

    def _redact(self, text: str) -> str:
        # Longest first, so a secret containing another is replaced whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, _REDACTED)
        return text

    def _select(self, keys: Sequence[str] | None) -> list[_Target]:
        if self._closed:
            raise RuntimeError("AlertmanagerClient is closed")
        if keys is None:
            return list(self._targets.values())
        try:
            return [self._targets[k] for k in keys]
        except KeyError as exc:
            raise ValueError(f"unknown Alertmanager target: {exc.args[0]!r}") from None

    async def _exchange(
        self,
        target: _Target,
        method: str,
        path: str,
        body: bytes | None,
        *,
        text_limit: int = RESPONSE_TEXT_LIMIT,
    ) -> _Reply:
        """One request under a hard overall deadline; reads at most _READ_LIMIT bytes."""
        headers = _JSON_HEADERS if body is not None else None
        async with asyncio.timeout(self._timeout):
            async with target.client.stream(
                method, target.key + path, content=body, headers=headers
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= _READ_LIMIT:
                        break
        text = b"".join(chunks)[:_READ_LIMIT].decode("utf-8", errors="replace")
        return _Reply(
            status=response.status_code,
            text=self._redact(text[:text_limit]),
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            location=response.headers.get("Location"),
        )

    async def _post_one(self, target: _Target, body: bytes) -> TargetResult:
        start = time.monotonic()
        try:
            reply = await self._exchange(target, "POST", ALERTS_PATH, body)
        except Exception as exc:  # classified below; CancelledError is not an Exception
            duration = time.monotonic() - start
            failure, error = self._describe_exception(exc)
            log.debug("POST %s failed after %.3fs: %s", target.key, duration, error)
            return TargetResult(target.key, False, failure, None, "", None, duration, error)
        duration = time.monotonic() - start
        error_class = classify_status(reply.status)
        log.debug("POST %s -> HTTP %d in %.3fs", target.key, reply.status, duration)
        if error_class is None:
            return TargetResult(target.key, True, None, reply.status, "", None, duration, None)
        return TargetResult(
            target.key,
            False,
            error_class,
            reply.status,
            reply.text,
            reply.retry_after,
            duration,
            self._describe_status(reply),
        )

    async def _check_one(self, target: _Target) -> TargetHealth:
        start = time.monotonic()
        try:
            reply = await self._exchange(target, "GET", READY_PATH, None)
        except Exception as exc:
            duration = time.monotonic() - start
            error = self._describe_exception(exc)[1]
            log.debug("GET %s%s failed after %.3fs: %s", target.key, READY_PATH, duration, error)
            return TargetHealth(target.key, False, error, duration)
        duration = time.monotonic() - start
        log.debug("GET %s%s -> HTTP %d in %.3fs", target.key, READY_PATH, reply.status, duration)
        if reply.status == 200:
            return TargetHealth(target.key, True, None, duration)
        return TargetHealth(target.key, False, self._describe_status(reply), duration)

    async def _uptime_one(self, target: _Target) -> TargetUptime:
        try:
            reply = await self._exchange(target, "GET", STATUS_PATH, None, text_limit=_READ_LIMIT)
        except Exception as exc:
            return TargetUptime(target.key, None, self._describe_exception(exc)[1])
        if reply.status != 200:
            return TargetUptime(target.key, None, self._describe_status(reply))
        # A regex, not json.loads: config.original may make the body exceed the read limit.
        match = _UPTIME_RE.search(reply.text)
        if match is None:
            return TargetUptime(target.key, None, "no uptime in /api/v2/status")
        return TargetUptime(target.key, match.group(1), None)

    def _describe_status(self, reply: _Reply) -> str:
        if 300 <= reply.status < 400:
            where = _redirect_target(reply.location) if reply.location else "?"
            return f"HTTP {reply.status}: redirect to {where} (redirects are not followed)"
        text = " ".join(reply.text.split())[:200]
        return f"HTTP {reply.status}: {text}" if text else f"HTTP {reply.status}"

    def _describe_exception(self, exc: Exception) -> tuple[ErrorClass, str]:
        """Classify a transport failure and describe it without credentials."""
        detail = self._redact(str(exc))[:200] or type(exc).__name__
        if isinstance(exc, TimeoutError):  # our overall deadline
            return ErrorClass.RETRYABLE, f"timeout after {self._timeout}s"
        if isinstance(exc, httpx.ConnectTimeout):
            return ErrorClass.RETRYABLE, f"connect timeout after {self._timeout}s"
        if isinstance(exc, httpx.TimeoutException):
            return ErrorClass.RETRYABLE, f"timeout after {self._timeout}s"
        if isinstance(exc, httpx.ConnectError):
            if _caused_by(exc, ssl.SSLCertVerificationError):
                return ErrorClass.MISCONFIGURED, f"TLS certificate verification failed: {detail}"
            if _caused_by(exc, ConnectionRefusedError) or "refused" in detail.lower():
                return ErrorClass.RETRYABLE, "connection refused"
            return ErrorClass.RETRYABLE, f"connect error: {detail}"
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ErrorClass.MISCONFIGURED, f"invalid request: {detail}"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
            return ErrorClass.RETRYABLE, f"protocol error: {detail}"
        if isinstance(exc, httpx.HTTPError):
            return ErrorClass.RETRYABLE, f"{type(exc).__name__}: {detail}"
        # Anything else (OSError, a bug in a transport) is treated as transient.
        return ErrorClass.RETRYABLE, f"unexpected {type(exc).__name__}: {detail}"


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` is anywhere in the cause/context chain of ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
