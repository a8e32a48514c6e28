"""The ops server's front door: one ASGI middleware every request passes before any route.

In this order, before a single body byte is read:

1. the client address: ``X-Forwarded-For`` replaces the peer address only when the peer is
   in ``ALERTQ_TRUSTED_PROXIES`` (empty by default), and only with a valid IP address, so
   the audit actor (``api@<address>``) cannot be chosen by the caller;
2. the bearer token, for every route that depends on the token check (so an
   unauthenticated caller never gets its body buffered);
3. the size: a path and query over 4 KiB get 414; a ``Content-Length`` over
   ``ALERTQ_MAX_REQUEST_BYTES`` is refused at once with 413, and a body without one
   (chunked) is counted as it streams in and refused as soon as it passes the limit.

After the app: a response sent before the request's body was read in full (a 401, a 404,
any refusal) closes the connection. uvicorn re-arms nothing once such a response is out,
so a client that then trickled body bytes held its connection (one of
``ALERTQ_MAX_CONNECTIONS``) for ever.

Being one middleware around the whole app, it covers routes added later (the relay's
``/api/v2/alerts``) without a per-route case.

Before any of that, while the request line and headers arrive, the app is not called yet:
:class:`HeaderBoundProtocol` (uvicorn's HTTP protocol, which ``alertq run`` serves with)
bounds them in time and size.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import secrets
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from alertq.config import Settings

__all__ = [
    "BodyTooLarge",
    "BodyTooSlow",
    "HeaderBoundProtocol",
    "RequestGuard",
    "check_bearer",
    "forwarded_client",
    "header_bound_protocol",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_FORWARDED_HOPS = 32
"""At most this many ``X-Forwarded-For`` entries are looked at (from the right)."""
MAX_TARGET_BYTES = 4096
"""Longest path plus query string, else 414. Below Python's 4300-digit limit for int():
a 100,000-digit alert id made the path converter raise a 500."""


class BodyTooSlow(HTTPException):
    """Raised from ``receive`` when the body does not finish within the body timeout."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g}s")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. An HTTPException so
    FastAPI re-raises it as it is instead of turning it into "error parsing the body"."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (max {limit} bytes)")


def check_bearer(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """None if ``authorization`` (the header's value) carries the API token, else the
    status and message to refuse with: 403 while mutations are off, 401 otherwise."""
    token = settings.mutation_token
    if token is None:
        return 403, "mutating endpoints are disabled: set ALERTQ_API_TOKEN to enable them"
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        given.strip().encode(), token.encode()
    ):
        return 401, "a valid 'Authorization: Bearer <ALERTQ_API_TOKEN>' header is required"
    return None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, or None. IPv6 zone ids (``fe80::1%anything``) are refused: the
    zone is free text and would reach the audit trail."""
    value = text.strip()
    if "%" in value:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d: compare them as IPv4, so an
    # IPv4 entry of ALERTQ_TRUSTED_PROXIES matches (red-team pass 3; it failed safe).
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def forwarded_client(peer: str, forwarded_for: str | None, trusted: list[IPNetwork]) -> str:
    """The client's address: ``peer`` unless ``peer`` is a trusted proxy, then the
    right-most ``X-Forwarded-For`` address that is not itself a trusted proxy.

    Anything that is not an IP address ends the walk (the last good address wins), so a
    forged value never becomes the client."""
    peer_ip = _address(peer)
    if not forwarded_for or peer_ip is None or not any(peer_ip in n for n in trusted):
        return peer
    client = str(peer_ip)
    for hop in reversed(forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]):
        ip = _address(hop)
        if ip is None:
            break
        client = str(ip)
        if not any(ip in n for n in trusted):
            break
    return client


class RequestGuard:
    """The middleware described in the module docstring. ``needs_token(scope)`` says
    whether the route the request goes to requires the API token."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Callable[[], Settings],
        needs_token: Callable[[Scope], bool],
    ) -> None:
        self.app = app
        self._settings = settings  # read per request, like the routes' own context
        self.needs_token = needs_token
        self._trusted: tuple[list[str], list[IPNetwork]] = ([], [])

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def trusted(self) -> list[IPNetwork]:
        proxies = self.settings.trusted_proxies
        if proxies != self._trusted[0]:  # parsed once per distinct setting
            self._trusted = (proxies, [ipaddress.ip_network(p, strict=False) for p in proxies])
        return self._trusted[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(
            scope.get("query_string", b"")
        )
        if target > MAX_TARGET_BYTES:
            await _reply(send, 414, f"request target too long (max {MAX_TARGET_BYTES} bytes)")
            return
        # The first of repeated headers, as Starlette's ``headers.get`` (and so the
        # routes' own token check) reads them: both must judge the same value.
        headers: dict[str, str] = {}
        forwarded: list[str] = []
        for key, value in scope["headers"]:
            name = key.decode("latin-1").lower()
            headers.setdefault(name, value.decode("latin-1"))
            if name == "x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
        if not host_allowed(self.settings, headers.get("host")):
            await _reply(
                send,
                400,
                "the Host header names another server: list it in ALERTQ_ALLOWED_HOSTS "
                "if alertq is reached by that name",
            )
            return
        client = scope.get("client")
        if client:
            # Every line, joined (RFC 9110): HAProxy adds its own line after the client's,
            # and the first line alone was the client's choice.
            chain = ",".join(forwarded) or None
            host = forwarded_client(client[0], chain, self.trusted)
            scope = {**scope, "client": (host, client[1])}
        if self.needs_token(scope):
            refused = check_bearer(self.settings, headers.get("authorization"))
            if refused is not None:
                extra = {"www-authenticate": "Bearer"} if refused[0] == 401 else {}
                await _reply(send, refused[0], refused[1], extra)
                return
        limit = self.settings.max_request_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isascii() or not length.strip().isdigit():
                await _reply(send, 400, "invalid Content-Length")
                return
            if int(length) > limit:
                await _reply(send, 413, f"request body too large (max {limit} bytes)")
                return
        has_body = "transfer-encoding" in headers or (length is not None and int(length) > 0)
        await self._limited(scope, receive, send, limit, has_body)

    async def _limited(
        self, scope: Scope, receive: Receive, send: Send, limit: int, has_body: bool
    ) -> None:
        received = 0
        started = False
        complete = not has_body
        # The whole body must arrive by then: a stalled body otherwise held its connection
        # (one of ALERTQ_MAX_CONNECTIONS) and its buffer for ever.
        deadline = asyncio.get_running_loop().time() + self.settings.body_timeout

        async def counting_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body: the wait for a disconnect is not bounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.settings.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                complete = not message.get("more_body", False)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = list(message.get("headers", []))
                if not complete:  # the rest of the body is never read: close after
                    kept = [h for h in kept if h[0].lower() != b"connection"]
                    kept.append((b"connection", b"close"))
                message = {**message, "headers": [*kept, *SECURITY_HEADERS]}
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except (BodyTooLarge, BodyTooSlow) as exc:  # a route that let it escape
            if started:
                raise
            await _reply(send, exc.status_code, str(exc.detail))


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port; IPv6 literals keep brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=8)
def _bound_to_loopback(http_addr: str) -> bool:
    """Whether ``ALERTQ_HTTP_ADDR`` listens on loopback only (read once per value)."""
    return _is_loopback(_host_name(http_addr) or "0.0.0.0")


def host_allowed(settings: Settings, host_header: str | None) -> bool:
    """Whether to answer a request with this ``Host`` (DNS rebinding: a web page whose
    name resolves to 127.0.0.1 could otherwise read the ops API and post alerts to a
    server bound to loopback). No header (HTTP/1.0) is answered: browsers always send
    one."""
    allowed = settings.allowed_hosts
    if host_header is None or "*" in allowed:
        return True
    if not allowed and not _bound_to_loopback(settings.http_addr):
        return True  # on a network address, reached by names alertq cannot know
    name = _host_name(host_header)
    return _is_loopback(name) or name in allowed


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
"""On every answer (red-team pass 4): no MIME sniffing, no framing (clickjacking of the
status page), no ops URLs leaked in a Referer."""


async def _reply(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The body was not read: the connection cannot be reused.
        (b"connection", b"close"),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    headers += SECURITY_HEADERS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- before the app


MAX_HEADER_BYTES = 64 * 1024
"""Longest request line plus headers, else 431. httptools buffers them without a bound."""


class HeaderBoundProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the headers of each request bounded in time
    (``ALERTQ_BODY_TIMEOUT``, from the connection or the request's first byte) and in size
    (:data:`MAX_HEADER_BYTES`). uvicorn times neither: a connection that never finished its
    headers was held for ever, and ``limit_concurrency`` counts it, so
    ``ALERTQ_MAX_CONNECTIONS`` silent sockets got every other request a 503.
    RequestGuard cannot help: the app is called only once the headers are complete."""

    header_timeout = 30.0  # header_bound_protocol() sets ALERTQ_BODY_TIMEOUT on a subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = True

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.header_timeout, self._headers_too_slow
            )

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, "Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._in_headers and not self.transport.is_closing():
            self._refuse(408, "Request Timeout")

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        if self.cycle is None or self.cycle.response_complete:  # not inside a response
            body = f"{reason}\n".encode()
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
        self.transport.close()


def header_bound_protocol(timeout: float) -> type[HeaderBoundProtocol]:
    """:class:`HeaderBoundProtocol` with headers due within ``timeout`` seconds, for
    ``uvicorn.Config(http=...)``."""
    return type("HeaderBoundProtocol", (HeaderBoundProtocol,), {"header_timeout": timeout})
