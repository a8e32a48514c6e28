"""``alertq run``: the worker and the ops server (FastAPI on uvicorn) in one process and one
event loop.

Three tasks share the loop:

* the :class:`~alertq.engine.AlertWorker` delivery loops;
* the uvicorn server for the status page, ``/metrics`` and the ops API;
* the :class:`Collector`, which every ``stats_cache_seconds`` (at least 1 s) refreshes the
  cached queue stats, breakers and incidents (and with them the ``alertq_*`` gauges),
  checks every Alertmanager's ``/-/ready``, takes a sample for the status page's chart, and
  closes breakers whose ``disabled_until`` has passed.

SIGTERM or SIGINT stops all three gracefully: in-flight deliveries finish and are recorded
first. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import uvicorn

from alertq.api import create_app
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, redacted_url
from alertq.delivery import AlertmanagerClient
from alertq.engine import AlertWorker
from alertq.httpguard import header_bound_protocol
from alertq.opsview import DatabaseUnavailable, OpsContext, Snapshot, describe_db_error
from alertq.relay import intake_auth_enabled, intake_auth_scheme
from alertq.replay import ReplayService

__all__ = ["Collector", "log_mutations", "parse_http_addr", "print_banner", "run_service"]

log = logging.getLogger("alertq.runner")

MIN_COLLECT_INTERVAL = 1.0
SERVER_GRACE_SECONDS = 5
TTL_RECOVERIES_PER_ROUND = 100
"""Expired breakers closed per collector round (the rest in the next rounds)."""


def parse_http_addr(addr: str) -> tuple[str, int]:
    """``"127.0.0.1:8787"``, ``"[::1]:8787"`` or ``":8787"`` (every interface) → (host, port)."""
    text = addr.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"invalid ALERTQ_HTTP_ADDR {addr!r}: use host:port, e.g. 127.0.0.1:8787")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid ALERTQ_HTTP_ADDR {addr!r}: write IPv6 hosts as [::1]:8787")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid ALERTQ_HTTP_ADDR {addr!r}: the port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid ALERTQ_HTTP_ADDR {addr!r}: port out of range")
    return host or "0.0.0.0", port


def warn_open_intake(settings: Settings, host: str) -> bool:
    """Log one warning when the relay's intake takes alerts from anyone on the network."""
    if intake_auth_enabled(settings):
        return False
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return False
    log.warning(
        "POST /api/v2/alerts accepts alerts without credentials on %s: set "
        "ALERTQ_INTAKE_BEARER_TOKEN (or _USERNAME/_PASSWORD) or bind to 127.0.0.1",
        host,
    )
    return True


def browsable_url(host: str, port: int) -> str:
    """The URL a person on this machine would open for a listener on ``host:port``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before anything else starts so a busy port fails fast."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class Collector:
    """Keeps an :class:`OpsContext` fresh: snapshot and gauges, Alertmanager readiness,
    chart samples, and TTL recovery of breakers. :meth:`run_once` is one round."""

    def __init__(self, context: OpsContext, probe: AlertmanagerClient, interval: float) -> None:
        self.context = context
        self.probe = probe
        self.interval = max(MIN_COLLECT_INTERVAL, interval)
        self._db_error: str | None = None
        self._warned_all_down = False

    async def run(self, stop: asyncio.Event) -> None:
        """Collect every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def run_once(self) -> None:
        """One round; never raises (a failing database or Alertmanager is reported)."""
        snap, _ = await asyncio.gather(self._refresh(), self._check_alertmanagers())
        if snap is not None:
            self.context.record_sample(snap)

    async def _refresh(self) -> Snapshot | None:
        try:
            snap = await self.context.refresh()
        except DatabaseUnavailable as exc:
            if str(exc) != self._db_error:
                hint = ""
                if "no such table" in str(exc) or "does not exist" in str(exc):
                    hint = " (has the schema been created? run: alertq db upgrade)"
                log.error("cannot read queue stats: %s%s", exc, hint)
            self._db_error = str(exc)
            return None
        if self._db_error is not None:
            log.info("database answers again")
            self._db_error = None
        try:
            expired = await self.context.breaker.list_expired(TTL_RECOVERIES_PER_ROUND)
        except Exception as exc:
            log.error("cannot list breakers due for TTL recovery: %s", describe_db_error(exc))
            expired = []
        for state in expired:
            # is_disabled() performs the TTL recovery; exactly one replica does it.
            try:
                if not await self.context.breaker.is_disabled(state.name):
                    log.info("breaker %s closed: its disable TTL ran out", state.name)
                    self.context.invalidate()
            except Exception:
                log.exception("TTL recovery of breaker %s failed", state.name)
        return snap

    async def _check_alertmanagers(self) -> None:
        try:
            results = await self.probe.check_ready()
        except Exception:  # check_ready classifies failures; this is a bug guard
            log.exception("Alertmanager readiness check failed")
            return
        for status in self.context.record_health(results):
            if status.ready:
                log.info("Alertmanager %s is ready", status.target)
            else:
                log.warning(
                    "Alertmanager %s is not answering: %s", status.target, status.error or "?"
                )
        all_down = all(h.ready is False for h in self.context.health.values())
        if all_down and not self._warned_all_down:
            log.warning("no Alertmanager is ready: alerts stay queued until one is")
        self._warned_all_down = all_down


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (alertq stops the worker first), with an
    event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


def _install_signal_handlers(stop: asyncio.Event, force: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping now", sig.name)
            force()
            return
        log.info("%s: stopping after in-flight deliveries (send it again to force)", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def print_banner(
    settings: Settings, url: str, targets: list[str], out: TextIO | None = None
) -> None:
    """Tell the person at the terminal where to look and where alerts go."""
    database = redacted_url(settings.database_url)
    if settings.log_format == "json":
        log.info(
            "alertq running: status page %s/, delivering to %s",
            url,
            ", ".join(targets),
            extra={
                "status_page": f"{url}/",
                "relay": f"{url}/api/v2/alerts",
                "alertmanagers": targets,
                "database": database,
            },
        )
        return
    from rich.console import Console

    api = "token required" if settings.mutations_enabled else "mutations off: set ALERTQ_API_TOKEN"
    scheme = intake_auth_scheme(settings)
    intake = {
        "Bearer": "bearer token required",
        "Basic": "basic auth required",
        None: "no auth: set ALERTQ_INTAKE_USERNAME/_PASSWORD or _BEARER_TOKEN",
    }[scheme]
    lines = [
        "[bold green]alertq is running[/] [dim](Ctrl-C to stop)[/]",
        f"  status page    [bold cyan]{url}/[/]",
        f"  metrics        {url}/metrics",
        f"  ops API        {url}/docs  [dim]({api})[/]",
        f"  relay intake   POST {url}/api/v2/alerts  [dim]({intake})[/]",
        f"  relay health   {url}/api/v2/status  {url}/-/healthy  {url}/-/ready",
        f"  database       {database}",
    ]
    for i, target in enumerate(targets):
        lines.append(f"  {'delivering to' if i == 0 else '':<14} [bold]{target}[/]")
    console = Console(file=out or sys.stdout, highlight=False, soft_wrap=True)
    console.print("\n".join(lines))


def log_mutations(settings: Settings) -> None:
    """Say in one line whether the API's mutating endpoints are on."""
    if settings.mutations_enabled:
        log.info("API mutations are on: they need 'Authorization: Bearer <ALERTQ_API_TOKEN>'")
    else:
        log.info("API mutations are off: ALERTQ_API_TOKEN is unset, empty or blank")


async def run_service(settings: Settings) -> int:
    """Run worker, ops server and collector until a signal; returns the exit code."""
    try:
        host, port = parse_http_addr(settings.http_addr)
        sock = bind_socket(host, port)
    except (ValueError, OSError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log.error("cannot listen on %s: %s", settings.http_addr, detail)
        return 2
    url = browsable_url(host, sock.getsockname()[1])
    if settings.tls_cert_file is not None:
        url = "https" + url.removeprefix("http")
    engine = create_engine(settings)
    probe_engine = create_engine(settings, pool_size=1, max_overflow=0)  # readiness only
    probe = AlertmanagerClient.from_settings(settings)
    try:
        factory = create_session_factory(engine)
        worker = AlertWorker(settings, factory)
        context = OpsContext(
            settings,
            factory,
            worker_stats=worker.stats,
            probe_factory=create_session_factory(probe_engine),
        )
        collector = Collector(context, probe, settings.stats_cache_seconds)
        app = create_app(context)
        warn_open_intake(settings, host)
        server = _Server(
            uvicorn.Config(
                app,
                ssl_certfile=settings.tls_cert_file,
                ssl_keyfile=settings.tls_key_file,
                log_config=None,
                access_log=False,
                lifespan="off",
                server_header=False,
                # Bodies are buffered up to ALERTQ_MAX_REQUEST_BYTES each; bound how many.
                limit_concurrency=settings.max_connections,
                # X-Forwarded-For is honoured only from ALERTQ_TRUSTED_PROXIES, by the app's
                # RequestGuard; uvicorn's own handling trusts 127.0.0.1 by default.
                proxy_headers=False,
                timeout_graceful_shutdown=SERVER_GRACE_SECONDS,
                http=header_bound_protocol(settings.body_timeout),
            )
        )
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []

        def force() -> None:
            server.force_exit = True
            for task in tasks:
                task.cancel()

        _install_signal_handlers(stop, force)
        serving = asyncio.create_task(server.serve(sockets=[sock]), name="alertq-http")
        tasks.append(serving)
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if serving.done():
            log.error("the ops server did not start")
            return 1
        log_mutations(settings)
        print_banner(settings, url, probe.targets)
        # What start-up built lives as long as the process: out of the collector's way,
        # every full collection stops walking it (about 2 ms CPU per 256-alert POST). A
        # body's thousands of short-lived containers then mostly die before the young
        # generation is collected (0.3-0.8 ms more).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        tasks.append(asyncio.create_task(worker.run(stop), name="alertq-worker"))
        tasks.append(asyncio.create_task(collector.run(stop), name="alertq-collector"))
        replay = ReplayService(settings, factory, probe)
        tasks.append(asyncio.create_task(replay.run(stop), name="alertq-replay"))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done - {stopping}:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s crashed", task.get_name(), exc_info=task.exception())
            else:
                log.error("%s stopped unexpectedly", task.get_name())
            code = 1
        stop.set()
        stopping.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)  # worker and collector
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)
        log.info("stopped")
        return code
    finally:
        await probe.aclose()
        await engine.dispose()
        await probe_engine.dispose()
        sock.close()
