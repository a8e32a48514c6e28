"""The ``alertq`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from alertq import cli_managed, migrate, ops
from alertq.alerts import InvalidAlertPayload, parse_payload
from alertq.breaker import BreakerState, CircuitBreaker
from alertq.config import Settings, parse_duration
from alertq.db import create_engine, create_session_factory, transaction
from alertq.engine import AlertWorker
from alertq.enqueue import enqueue_alert
from alertq.logs import configure_logging

T = TypeVar("T")

app = typer.Typer(help="alertq: deliver alerts to Prometheus Alertmanager, durably.")
db_app = typer.Typer(help="Database schema.")
app.add_typer(db_app, name="db")
console = Console()
err = Console(stderr=True)


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 with pydantic's message."""
    try:
        return Settings()
    except ValidationError as exc:
        err.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2) from exc


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


@app.command()
def worker(
    concurrency: int | None = typer.Option(None, help="Delivery loops (default: settings)."),
    drain: bool = typer.Option(
        False, "--drain", help="Exit 0 once no row is due and none is leased."
    ),
) -> None:
    """Deliver queued alerts until SIGTERM/SIGINT (or, with --drain, until the queue is idle)."""
    settings = load_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"concurrency": concurrency})
    configure_logging(settings.log_format, settings.log_level)

    async def work(factory: Any) -> None:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        await AlertWorker(settings, factory).run(stop, drain=drain)

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


@app.command()
def enqueue(
    file: Path = typer.Option(..., "--file", exists=False, help="JSON payload: a list of alerts."),
    alert_type: str = typer.Option(..., "--type", help="Alert type, e.g. disable or enable."),
    incident: str | None = typer.Option(None, "--incident", help="Linked incident id."),
    breaker: str | None = typer.Option(None, "--breaker", help="Circuit breaker name."),
) -> None:
    """Validate a payload file and enqueue it; prints the new row id. Exit 2 if invalid."""
    settings = load_settings()
    try:
        raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
        payload = parse_payload(raw)
    except OSError as exc:
        err.print(f"cannot read {file}: {exc.strerror}")
        raise typer.Exit(2) from exc
    except InvalidAlertPayload as exc:
        err.print(f"invalid payload: {exc}")
        raise typer.Exit(2) from exc

    async def work(factory: Any) -> int:
        async with transaction(factory) as session:
            row = await enqueue_alert(session, payload, alert_type, breaker, incident)
            return row.id

    try:
        typer.echo(run_with_db(settings, work))
    except InvalidAlertPayload as exc:
        err.print(f"invalid payload: {exc}")
        raise typer.Exit(2) from exc


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

    if not watch:
        result = run_with_db(settings, ops.queue_stats)
        if as_json:
            typer.echo(json.dumps({k: _jsonable(v) for k, v in result.items()}))
        else:
            console.print(render(result))
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
    max_retries: int = typer.Option(3, "--max-retries", min=1, help="Extra attempts to give."),
) -> None:
    """Put failed rows back in the queue with more attempts."""
    settings = load_settings()
    count = run_with_db(settings, lambda f: ops.retry_failed(f, max_retries))
    typer.echo(f"{count} rows queued again")


@app.command()
def purge(
    older_than: str = typer.Option(..., "--older-than", help="Age, e.g. 30d, 12h."),
    status: str = typer.Option(
        "sent,failed,superseded", "--status", help="Comma-separated statuses to delete."
    ),
) -> None:
    """Delete old finished rows in batches, showing progress."""
    settings = load_settings()
    try:
        cutoff = datetime.now(UTC) - parse_duration(older_than)
    except ValueError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from exc
    statuses = [s.strip() for s in status.split(",") if s.strip()]
    if "pending" in statuses:
        err.print("refusing to purge pending rows: they have not been delivered")
        raise typer.Exit(2)

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
            "[red]OPEN[/red]" if st.disabled else "[green]closed[/green]",
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


@breaker_app.command("status")
def breaker_status(
    name: str | None = typer.Argument(None, help="One breaker (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the state of one breaker or all of them. Exit 1 if NAME is unknown."""
    settings = load_settings()

    async def work(cb: CircuitBreaker) -> list[BreakerState] | None:
        if name is None:
            return await cb.list_states()
        state = await cb.get_state(name)
        return None if state is None else [state]

    states = _run_breaker(settings, work)
    if states is None:
        err.print(f"no circuit breaker named {name!r}")
        raise typer.Exit(1)
    if as_json:
        _dump(states)
    elif not states:
        console.print("no circuit breakers yet")
    else:
        console.print(_breaker_table(states))


@breaker_app.command("trip")
def breaker_trip(
    name: str = typer.Argument(..., help="Breaker name."),
    reason: str = typer.Option(..., "--reason", help="Why (shown in the alert)."),
    until: str | None = typer.Option(
        None, "--until", help="Close by itself after this long, e.g. 30m, 2h."
    ),
) -> None:
    """Open a breaker by hand: creates an incident and sends its firing alert."""
    settings = load_settings()
    disabled_until = None
    if until is not None:
        try:
            disabled_until = datetime.now(UTC) + parse_duration(until)
        except ValueError as exc:
            err.print(str(exc))
            raise typer.Exit(2) from exc

    async def work(cb: CircuitBreaker) -> tuple[BreakerState | None, BreakerState]:
        before = await cb.get_state(name)
        return before, await cb.disable(name, reason, _operator(), disabled_until)

    before, after = _run_breaker(settings, work)
    if before is not None and before.disabled and before.incident_id == after.incident_id:
        console.print(f"breaker {name} was already open (incident {after.incident_id})")
        return
    console.print(f"breaker {name} is [red]OPEN[/red]: incident {after.incident_id}")


@breaker_app.command("reset")
def breaker_reset(
    name: str = typer.Argument(..., help="Breaker name."),
    reason: str | None = typer.Option(None, "--reason", help="Resolution notes."),
) -> None:
    """Close a breaker: resolves its incident and sends the resolving alert."""
    settings = load_settings()

    async def work(cb: CircuitBreaker) -> tuple[BreakerState | None, BreakerState]:
        before = await cb.get_state(name)
        return before, await cb.enable(name, _operator(), reason)

    before, _after = _run_breaker(settings, work)
    if before is None or not before.disabled:
        console.print(f"breaker {name} was already closed")
        return
    console.print(
        f"breaker {name} is [green]closed[/green]: incident {before.incident_id} resolved"
    )


@breaker_app.command("incidents")
def breaker_incidents(
    name: str | None = typer.Argument(None, help="One breaker (default: all)."),
    include_resolved: bool = typer.Option(False, "--all", help="Include resolved incidents."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List open incidents (all of them with --all), newest first."""
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
    score: float = typer.Argument(..., help="Drift score."),
    samples: int = typer.Option(1, "--samples", min=1, help="Samples behind the score."),
) -> None:
    """Report a drift score; enough consecutive scores above the threshold trip the breaker."""
    settings = load_settings()
    state = _run_breaker(settings, lambda cb: cb.report_drift(name, score, samples))
    console.print(_breaker_table([state]))


cli_managed.register(app)  # fire, resolve, heartbeat, alerts --managed, heartbeats


def main() -> None:
    app()
