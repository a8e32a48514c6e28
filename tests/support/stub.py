"""A fault-injecting stand-in for Alertmanager, served from a background thread.

It records every ``POST /api/v2/alerts`` (parsed body and headers) and answers according
to a behaviour that tests may change at any time::

    with StubAlertmanager() as stub:
        stub.respond(503, "busy", retry_after=7)   # status + body + Retry-After
        stub.hang(30)                               # wait 30 s (interruptible), then answer
        stub.drip()                                 # send the response 1 byte per second
        stub.garbage()                              # answer bytes that are not HTTP
        stub.redirect_loop()                        # 302 to itself
        stub.script(lambda alerts: (400, "bad") if ... else (200, ""))
        stub.set_ready(False)                       # GET /-/ready -> 503
        assert stub.wait_for_requests(3, timeout=5)

Every wait inside the server is an ``Event.wait`` so :meth:`stop` returns promptly.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

ALERTS_PATH = "/api/v2/alerts"

Alerts = list[dict[str, Any]]


@dataclass(frozen=True)
class Reply:
    """One HTTP answer of the stub."""

    status: int = 200
    body: str | bytes = ""
    headers: Mapping[str, str] = field(default_factory=dict)


# A script sees the posted alerts and picks the answer: a Reply or (status, body).
Script = Callable[[Alerts], "Reply | tuple[int, str]"]
Mode = Literal["respond", "script", "drip", "garbage", "redirect"]


@dataclass(frozen=True)
class _Behaviour:
    mode: Mode = "respond"
    reply: Reply = field(default_factory=Reply)
    delay: float = 0.0  # seconds to wait before answering (respond/script modes)
    script: Script | None = None
    drip_interval: float = 1.0
    garbage: bytes = b"\x00\xff\xfe this is not HTTP at all \r\n\r\n"


@dataclass(frozen=True)
class ReceivedRequest:
    """One recorded POST: parsed alerts (None if not a JSON array), headers, raw body, peer."""

    alerts: Alerts | None
    headers: dict[str, str]  # lower-case names
    raw: bytes
    peer: tuple[str, int]  # client address: the same for requests on one kept-alive connection


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], stub: StubAlertmanager) -> None:
        self.stub = stub
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out and hang up are expected here; keep test output quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Alertmanager does
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- routes ------------------------------------------------------------------------

    def do_GET(self) -> None:
        stub = self.server.stub
        if self.path in ("/-/ready", "/-/healthy"):
            stub._count_ready()
            ok = stub.ready
            self._send(Reply(200 if ok else 503, "OK" if ok else "Service Unavailable"))
        elif self.path.startswith(ALERTS_PATH):
            self._send(Reply(200, json.dumps(stub.received_alerts()), _JSON))
        else:
            self._send(Reply(404, "not found"))

    def do_POST(self) -> None:
        stub = self.server.stub
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path != ALERTS_PATH:
            self._send(Reply(404, "not found"))
            return
        try:
            parsed = json.loads(raw)
            alerts: Alerts | None = parsed if isinstance(parsed, list) else None
        except ValueError:
            alerts = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        peer = (str(self.client_address[0]), int(self.client_address[1]))
        behaviour = stub._record(ReceivedRequest(alerts, headers, raw, peer))
        stop = stub._stop

        if behaviour.mode == "garbage":
            self.wfile.write(behaviour.garbage)
            self.close_connection = True
            return
        if behaviour.mode == "drip":
            self._drip(_render(Reply(200, "dripped")), behaviour.drip_interval)
            return
        if behaviour.mode == "redirect":
            self._send(Reply(302, "", {"Location": f"{stub.url}{self.path}"}))
            return
        if behaviour.delay > 0 and stop.wait(behaviour.delay):
            self.close_connection = True  # shutting down: give up on this request
            return
        reply = behaviour.reply
        if behaviour.mode == "script" and behaviour.script is not None:
            answer = behaviour.script(alerts if alerts is not None else [])
            reply = answer if isinstance(answer, Reply) else Reply(answer[0], answer[1])
        self._send(reply)

    # -- writing -----------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self.wfile.write(_render(reply))

    def _drip(self, data: bytes, interval: float) -> None:
        stop = self.server.stub._stop
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            if stop.wait(interval):
                break
        self.close_connection = True


_JSON = {"Content-Type": "application/json"}


def _render(reply: Reply) -> bytes:
    """A complete HTTP/1.1 response as bytes."""
    body = reply.body.encode() if isinstance(reply.body, str) else reply.body
    try:
        phrase = HTTPStatus(reply.status).phrase
    except ValueError:
        phrase = "Unknown"
    headers = {"Content-Type": "text/plain; charset=utf-8", **reply.headers}
    headers["Content-Length"] = str(len(body))
    head = f"HTTP/1.1 {reply.status} {phrase}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


class StubAlertmanager:
    """A local HTTP server imitating Alertmanager's alert endpoint, with fault injection.

    Start/stop with the context manager (or :meth:`start`/:meth:`stop`). After a stop it
    can be started again on the same port, to simulate an outage.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context  # serve HTTPS with this server-side context
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._behaviour = _Behaviour()
        self._received: list[ReceivedRequest] = []
        self._ready = True
        self._ready_checks = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Listen (on the same port as before, after a restart) and serve in a thread."""
        if self._server is not None:
            return self
        self._stop.clear()
        self._server = _Server((self._host, self._port), self)
        if self._ssl is not None:
            self._server.socket = self._ssl.wrap_socket(self._server.socket, server_side=True)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"stub-alertmanager-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; in-flight hangs and drips end at once."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stop.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    # -- behaviour ---------------------------------------------------------------------

    def respond(
        self,
        status: int = 200,
        body: str | bytes = "",
        *,
        retry_after: str | float | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer every POST with ``status`` and ``body`` (after ``delay`` seconds)."""
        all_headers = dict(headers or {})
        if retry_after is not None:
            value = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
            all_headers["Retry-After"] = value
        self._set(_Behaviour("respond", Reply(status, body, all_headers), delay))

    def hang(self, seconds: float = 3600.0, status: int = 200) -> None:
        """Wait ``seconds`` before answering ``status`` (interrupted by :meth:`stop`)."""
        self._set(_Behaviour("respond", Reply(status), seconds))

    def drip(self, interval: float = 1.0) -> None:
        """Send the whole response (status line included) one byte every ``interval`` s."""
        self._set(_Behaviour("drip", drip_interval=interval))

    def garbage(self, data: bytes | None = None) -> None:
        """Answer bytes that are not an HTTP response, then close the connection."""
        self._set(_Behaviour("garbage", garbage=data) if data else _Behaviour("garbage"))

    def redirect_loop(self) -> None:
        """Answer 302 with a Location pointing at the same URL."""
        self._set(_Behaviour("redirect"))

    def script(self, fn: Script, *, delay: float = 0.0) -> None:
        """Let ``fn(alerts)`` choose each answer: a :class:`Reply` or ``(status, body)``."""
        self._set(_Behaviour("script", delay=delay, script=fn))

    def reset(self) -> None:
        """Back to answering 200 immediately, ready; recorded requests are kept."""
        self._set(_Behaviour())
        self.set_ready(True)

    def set_ready(self, ready: bool) -> None:
        """Make ``GET /-/ready`` answer 200 (True) or 503 (False)."""
        with self._lock:
            self._ready = ready

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._ready

    # -- records -----------------------------------------------------------------------

    @property
    def received(self) -> list[Alerts | None]:
        """Every posted body, parsed (None for a body that was not a JSON array), in order."""
        with self._lock:
            return [r.alerts for r in self._received]

    @property
    def received_requests(self) -> list[ReceivedRequest]:
        """Every recorded POST with its headers and raw body."""
        with self._lock:
            return list(self._received)

    @property
    def received_headers(self) -> list[dict[str, str]]:
        """The headers of every POST (lower-case names), in order."""
        with self._lock:
            return [r.headers for r in self._received]

    def received_alerts(self) -> Alerts:
        """All posted alerts, flattened across requests, in arrival order."""
        with self._lock:
            return [a for r in self._received for a in (r.alerts or [])]

    @property
    def requests(self) -> int:
        """How many POSTs to /api/v2/alerts arrived (recorded before the answer)."""
        with self._lock:
            return len(self._received)

    @property
    def ready_checks(self) -> int:
        with self._lock:
            return self._ready_checks

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` POSTs have arrived; False if ``timeout`` passed first."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self._received) >= n, timeout)

    async def wait_for_requests_async(self, n: int, within: float = 5.0) -> bool:
        """:meth:`wait_for_requests` for async tests, without blocking the event loop."""
        return await asyncio.to_thread(self.wait_for_requests, n, within)

    def clear(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self._received.clear()
            self._ready_checks = 0

    # -- used by the handler -----------------------------------------------------------

    def _set(self, behaviour: _Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour

    def _record(self, request: ReceivedRequest) -> _Behaviour:
        """Record a request, wake waiters, and return the behaviour to apply to it."""
        with self._arrived:
            self._received.append(request)
            self._arrived.notify_all()
            return self._behaviour

    def _count_ready(self) -> None:
        with self._lock:
            self._ready_checks += 1
