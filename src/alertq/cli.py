"""The ``alertq`` command line.

Two rules hold for every command, enforced here once rather than per command:

* Output never interprets what it prints: the consoles have Rich markup, emoji codes and
  highlighting off, and styling is applied with :class:`~rich.text.Text` objects, so a
  breaker reason or a label containing ``[/]`` prints verbatim.
* Errors are one line on stderr. Bad arguments exit 2 naming the argument (the rules are
  :mod:`alertq.limits`, shared with the API and the Python API); a database that cannot be
  reached exits 1 with its URL, password hidden; anything else unexpected exits 1 with its
  type and first line. ``alertq --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

# Typer ships its own copy of click; its usage errors are these classes, not click's.
from typer._click.exceptions import ClickException, UsageError

from alertq import cli_managed, limits, migrate, ops
from alertq.alerts import MAX_PAYLOAD_BYTES, InvalidAlertPayload, parse_payload
from alertq.breaker import BreakerState, CircuitBreaker
from alertq.cli_output import (
    checked,
    console,
    err,
    fail,
    load_settings,
    say_error,
)
from alertq.config import Settings
from alertq.db import (
    DatabaseUnreachable,
    create_engine,
    create_session_factory,
    redacted_url,
    transaction,
)
from alertq.engine import AlertWorker
from alertq.enqueue import check_enqueue_args, enqueue_alert
from alertq.logs import configure_logging

T = TypeVar("T")

app = typer.Typer(
    help="alertq: deliver alerts to Prometheus Alertmanager, durably.",
    # Tracebacks only with --debug, and then plain ones: Rich's show local variables,
    # which include the database URL and its password.
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.")
app.add_typer(db_app, name="db")


OPEN = Text("OPEN", style="red")
CLOSED = Text("closed", style="green")


class _Options:
    debug = False


@app.callback()
def _global_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."
    ),
) -> None:
    """alertq: deliver alerts to Prometheus Alertmanager, durably."""
    _Options.debug = debug
    if not debug:
        threading.excepthook = _drop_closed_loop_reports


_THREAD_HOOK = threading.excepthook


def _drop_closed_loop_reports(args: threading.ExceptHookArgs) -> None:
    """aiosqlite 0.22 does not wait for its worker thread after a failed connect (an
    unopenable file): the thread then reports to the event loop that ``asyncio.run`` has
    closed, and Python printed its traceback after alertq's one-line error, one run in
    four (red-team pass 4). Only that report is dropped; ``--debug`` keeps it."""
    thread = args.thread.name if args.thread is not None else ""
    if (
        args.exc_type is RuntimeError
        and str(args.exc_value) == "Event loop is closed"
        and "_connection_worker_thread" in thread
    ):
        return
    _THREAD_HOOK(args)


# Failures to connect: refused, timed out, or no such host. (A driver error after
# connecting, e.g. no such table or a missing SQLite directory, is a "database error".)
_UNREACHABLE = (ConnectionError, TimeoutError, socket.gaierror)


def _first_line(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # The driver's own exception (asyncpg's names say what went wrong) over the adapter's.
        cause = exc.orig.__cause__ or exc.orig
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def _database_url() -> str:
    try:
        return redacted_url(Settings().database_url)
    except Exception:
        return "<the configured database>"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The entry point every command goes through: turns exceptions into one line."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="alertq", standalone_mode=False)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "alertq"
        say_error(f"{exc.format_message()} (see '{where} --help')")
        code = 2
    except ClickException as exc:
        say_error(exc.format_message())
        code = exc.exit_code
    except typer.Abort:
        say_error("aborted")
        code = 130
    except DatabaseUnreachable as exc:
        if _Options.debug:
            raise
        say_error(str(exc))
        code = 1
    except _UNREACHABLE as exc:
        if _Options.debug:
            raise
        say_error(f"cannot reach the database at {_database_url()}: {_first_line(exc)}")
        code = 1
    except DBAPIError as exc:  # no such database or table, bad password, unopenable file, ...
        if _Options.debug:
            raise
        say_error(f"database error at {_database_url()}: {_first_line(exc)}")
        code = 1
    except Exception as exc:
        if _Options.debug:
            raise
        say_error(f"failed: {_first_line(exc)} (run 'alertq --debug ...' for the traceback)")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def run_with_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(session_factory)`` on a fresh engine, disposing it afterwards."""

    async def _go() -> T:
        engine = create_engine(settings)
        try:
            return await work(create_session_factory(engine))
        finally:
            await engine.dispose()

    return asyncio.run(_go())


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or upgrade the schema (adopts a legacy database in place)."""
    settings = load_settings()
    migrate.upgrade(settings.database_url, revision)
    console.print(f"schema at {migrate.current(settings.database_url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision."""
    console.print(migrate.current(load_settings().database_url) or "empty")


def install_stop_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a graceful stop: in-flight deliveries finish first."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


MAX_CONCURRENCY = next(
    m.le for m in Settings.model_fields["concurrency"].metadata if hasattr(m, "le")
)
"""``ALERTQ_CONCURRENCY``'s own bound: the flag allowed 1,000 loops the variable refused."""


@app.command()
def worker(
    concurrency: int | None = typer.Option(None, help="Delivery loops (default: settings)."),
    drain: bool = typer.Option(
        False, "--drain", help="Exit 0 once no row is due and none is leased."
    ),
) -> None:
    """Deliver queued alerts until SIGTERM/SIGINT (or, with --drain, until the queue is idle)."""
    if concurrency is not None:
        checked("--concurrency", limits.check_count, concurrency, "concurrency", 1, MAX_CONCURRENCY)
    settings = load_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    configure_logging(settings.log_format, settings.log_level)

    async def work(factory: Any) -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        await AlertWorker(settings, factory, dedicated=True).run(stop, drain=drain)

    run_with_db(settings, work)


@app.command()
def run(
    http_addr: str | None = typer.Option(
        None, "--http-addr", help="host:port of the ops server (default: ALERTQ_HTTP_ADDR)."
    ),
    concurrency: int | None = typer.Option(None, help="Delivery loops (default: settings)."),
) -> None:
    """Deliver alerts and serve the status page, /metrics and the ops API, until SIGTERM."""
    from alertq.runner import run_service  # imports FastAPI and uvicorn: only when needed

    if concurrency is not None:
        checked("--concurrency", limits.check_count, concurrency, "concurrency", 1, MAX_CONCURRENCY)
    settings = load_settings()
    updates: dict[str, Any] = {}
    if http_addr is not None:
        updates["http_addr"] = http_addr
    if concurrency is not None:
        updates["concurrency"] = concurrency
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_format, settings.log_level)
    code = asyncio.run(run_service(settings))
    if code:
        raise typer.Exit(code)


def read_payload_file(file: Path) -> bytes:
    """The file's bytes (``-``: stdin), reading at most one byte more than a payload may
    have, so ``/dev/zero`` or a huge file is refused without being read to the end."""
    try:
        if str(file) == "-":
            raw = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
        else:
            with file.open("rb") as f:
                raw = f.read(MAX_PAYLOAD_BYTES + 1)
    except OSError as exc:
        fail(f"invalid --file: cannot read {file}: {exc.strerror or type(exc).__name__}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        fail(f"invalid --file: {file} is larger than {MAX_PAYLOAD_BYTES} bytes, the payload limit")
    return raw


_ENQUEUE_FLAGS = {
    "alert_type": "--type",
    "circuit_breaker_name": "--breaker",
    "incident_id": "--incident",
}


def _enqueue_error(exc: InvalidAlertPayload) -> NoReturn:
    flag = _ENQUEUE_FLAGS.get(exc.field or "") if exc.index is None else None
    fail(f"invalid {flag}: {exc}" if flag else f"invalid payload: {exc}")


@app.command()
def enqueue(
    file: Path = typer.Option(..., "--file", exists=False, help="JSON payload: a list of alerts."),
    alert_type: str = typer.Option(..., "--type", help="Alert type, e.g. disable or enable."),
    incident: str | None = typer.Option(None, "--incident", help="Linked incident id."),
    breaker: str | None = typer.Option(None, "--breaker", help="Circuit breaker name."),
) -> None:
    """Validate a payload file and enqueue it; prints the new row id. Exit 2 if invalid."""
    try:
        check_enqueue_args(alert_type, breaker, incident)
        payload = parse_payload(read_payload_file(file))
    except InvalidAlertPayload as exc:
        _enqueue_error(exc)
    settings = load_settings()

    async def work(factory: Any) -> int:
        async with transaction(factory) as session:
            row = await enqueue_alert(session, payload, alert_type, breaker, incident)
            return row.id

    try:
        typer.echo(run_with_db(settings, work))
    except InvalidAlertPayload as exc:
        _enqueue_error(exc)


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    watch: bool = typer.Option(False, "--watch", help="Refresh every 2 s until Ctrl-C."),
) -> None:
    """Queue depth by status and the oldest due row."""
    settings = load_settings()

    def render(result: dict[str, Any]) -> Table:
        table = Table("status", "rows", title="alertq queue", min_width=34)
        for key, value in result.items():
            if isinstance(value, int) and key != "total":
                table.add_row(key, str(value))
        table.add_row("total", str(result["total"]), style="bold")
        table.caption = f"oldest due: {result['oldest_due_age_seconds']:.1f}s ago"
        return table

    def render_sources(sources: list[Any]) -> Table:
        table = Table("sender", "user-agent", "rows", "pending", title="relay intake by source")
        for src in sources:
            table.add_row(src.addr or "-", (src.agent or "-")[:60], str(src.rows), str(src.pending))
        return table

    async def with_sources(factory: Any) -> tuple[dict[str, Any], list[Any]]:
        return await ops.queue_stats(factory), await ops.intake_sources(factory)

    if not watch:
        result, sources = run_with_db(settings, with_sources)
        if as_json:
            out = {k: _jsonable(v) for k, v in result.items()}
            out["intake_sources"] = [
                {
                    "addr": s.addr,
                    "agent": s.agent,
                    "rows": s.rows,
                    "pending": s.pending,
                    "last_at": s.last_at.isoformat(),
                }
                for s in sources
            ]
            typer.echo(json.dumps(out))
        else:
            console.print(render(result))
            if sources:
                console.print(render_sources(sources))
        return

    from rich.live import Live

    async def loop(factory: Any) -> None:
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                live.update(render(await ops.queue_stats(factory)))
                await asyncio.sleep(2)

    with contextlib.suppress(KeyboardInterrupt):
        run_with_db(settings, loop)


@app.command("retry-failed")
def retry_failed(
    max_retries: int = typer.Option(
        3, "--max-retries", help=f"Extra attempts to give (1 to {limits.MAX_RETRIES})."
    ),
) -> None:
    """Put failed rows back in the queue with more attempts."""
    checked("--max-retries", limits.check_count, max_retries, "max_retries", 1, limits.MAX_RETRIES)
    settings = load_settings()
    count = run_with_db(settings, lambda f: ops.retry_failed(f, max_retries))
    typer.echo(f"{count} rows queued again")


@app.command()
def purge(
    older_than: str = typer.Option(..., "--older-than", help=f"Age: {limits.DURATION_HELP}."),
    status: str = typer.Option(
        "sent,failed,superseded", "--status", help="Comma-separated statuses to delete."
    ),
) -> None:
    """Delete old finished rows in batches, showing progress."""
    age = checked("--older-than", limits.parse_duration, older_than)
    statuses = checked(
        "--status", limits.check_purge_statuses, [s.strip() for s in status.split(",")]
    )
    settings = load_settings()
    cutoff = datetime.now(UTC) - age

    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err) as progress:
        task = progress.add_task("purging", total=None)

        def report(total: int) -> None:
            progress.update(task, description=f"purged {total} rows")

        total = run_with_db(settings, lambda f: ops.purge(f, cutoff, statuses, progress=report))
    typer.echo(f"purged {total} rows")


# --------------------------------------------------------------------------- breaker

breaker_app = typer.Typer(help="Circuit breakers: state, trips, resets and incidents.")
app.add_typer(breaker_app, name="breaker")


def _operator() -> str:
    """Who runs this command, for ``disabled_by`` / ``resolved_by``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _breaker_table(states: list[BreakerState]) -> Table:
    table = Table("breaker", "state", "updated", "until", "by", "reason", "incident", "failures")
    for st in states:
        table.add_row(
            st.name,
            OPEN if st.disabled else CLOSED,
            _when(st.updated_at),
            _when(st.disabled_until),
            st.disabled_by or "",
            st.disabled_reason or "",
            st.incident_id or "",
            str(st.consecutive_failures),
        )
    return table


def _dump(items: list[Any]) -> None:
    typer.echo(
        json.dumps([{k: _jsonable(v) for k, v in asdict(i).items()} for i in items], indent=2)
    )


def _run_breaker(settings: Settings, work: Callable[[CircuitBreaker], Awaitable[T]]) -> T:
    return run_with_db(settings, lambda factory: work(CircuitBreaker(settings, factory)))


def _name(value: str) -> str:
    """A breaker name, by the one rule the API and the Python API also apply."""
    return checked("NAME", limits.check_name, value, "name")


@breaker_app.command("status")
def breaker_status(
    name: str | None = typer.Argument(None, help="One breaker (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the state of one breaker or all of them. Exit 1 if NAME is unknown."""
    if name is not None:
        _name(name)
    settings = load_settings()

    async def work(cb: CircuitBreaker) -> list[BreakerState] | None:
        if name is None:
            return await cb.list_states()
        state = await cb.get_state(name)
        return None if state is None else [state]

    states = _run_breaker(settings, work)
    if states is None:
        fail(f"no circuit breaker named {name!r}", 1)
    if as_json:
        _dump(states)
    elif not states:
        console.print("no circuit breakers yet")
    else:
        console.print(_breaker_table(states))


@breaker_app.command("trip")
def breaker_trip(
    name: str = typer.Argument(..., help=f"Breaker name: {limits.NAME_HELP}."),
    reason: str = typer.Option(..., "--reason", help="Why (shown in the alert)."),
    until: str | None = typer.Option(
        None, "--until", help=f"Close by itself after this long: {limits.DURATION_HELP}."
    ),
) -> None:
    """Open a breaker by hand: creates an incident and sends its firing alert."""
    _name(name)
    checked("--reason", limits.check_text, reason, "reason")
    ttl = None if until is None else checked("--until", limits.parse_duration, until)
    settings = load_settings()
    disabled_until = None if ttl is None else datetime.now(UTC) + ttl

    async def work(cb: CircuitBreaker) -> tuple[BreakerState | None, BreakerState]:
        before = await cb.get_state(name)
        return before, await cb.disable(name, reason, _operator(), disabled_until)

    before, after = _run_breaker(settings, work)
    if before is not None and before.disabled and before.incident_id == after.incident_id:
        console.print(f"breaker {name} was already open (incident {after.incident_id})")
        return
    console.print(Text.assemble(f"breaker {name} is ", OPEN, f": incident {after.incident_id}"))


@breaker_app.command("reset")
def breaker_reset(
    name: str = typer.Argument(..., help="Breaker name."),
    reason: str | None = typer.Option(None, "--reason", help="Resolution notes."),
) -> None:
    """Close a breaker: resolves its incident and sends the resolving alert."""
    _name(name)
    checked("--reason", limits.check_optional_text, reason, "reason")
    settings = load_settings()

    async def work(cb: CircuitBreaker) -> tuple[BreakerState | None, BreakerState]:
        before = await cb.get_state(name)
        return before, await cb.enable(name, _operator(), reason)

    before, _after = _run_breaker(settings, work)
    if before is None or not before.disabled:
        console.print(f"breaker {name} was already closed")
        return
    console.print(
        Text.assemble(f"breaker {name} is ", CLOSED, f": incident {before.incident_id} resolved")
    )


@breaker_app.command("incidents")
def breaker_incidents(
    name: str | None = typer.Argument(None, help="One breaker (default: all)."),
    include_resolved: bool = typer.Option(False, "--all", help="Include resolved incidents."),
    limit: int = typer.Option(
        100, "--limit", help=f"At most this many (1 to {limits.MAX_PAGE}), newest first."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List open incidents (all of them with --all), newest first."""
    if name is not None:
        _name(name)
    checked("--limit", limits.check_count, limit, "limit", 1, limits.MAX_PAGE)
    settings = load_settings()
    incidents = _run_breaker(settings, lambda cb: cb.list_incidents(name, include_resolved, limit))
    if as_json:
        _dump(incidents)
        return
    table = Table(
        "incident",
        "breaker",
        "opened",
        "severity",
        "reason",
        "resolved",
        "alert sent",
        title="incidents" if include_resolved else "open incidents",
    )
    for inc in incidents:
        table.add_row(
            inc.id,
            inc.circuit_breaker_name,
            _when(inc.timestamp),
            inc.severity,
            inc.reason,
            f"{_when(inc.resolved_at)} by {inc.resolved_by}" if inc.resolved else "",
            _when(inc.alert_sent_at) if inc.alert_sent else "no",
        )
    console.print(table)


@breaker_app.command("report-drift")
def breaker_report_drift(
    name: str = typer.Argument(..., help="Breaker name."),
    score: float = typer.Argument(..., help="Drift score (a finite number)."),
    samples: int = typer.Option(
        1, "--samples", help=f"Samples behind the score (1 to {limits.MAX_SAMPLE_COUNT})."
    ),
) -> None:
    """Report a drift score; enough consecutive scores above the threshold trip the breaker."""
    _name(name)
    checked("SCORE", limits.check_drift_score, score, "score")
    checked("--samples", limits.check_count, samples, "samples", 1, limits.MAX_SAMPLE_COUNT)
    settings = load_settings()
    state = _run_breaker(settings, lambda cb: cb.report_drift(name, score, samples))
    console.print(_breaker_table([state]))


cli_managed.register(app)  # fire, resolve, heartbeat, alerts --managed, heartbeats
