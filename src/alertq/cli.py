"""The ``alertq`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from alertq import migrate, ops
from alertq.alerts import InvalidAlertPayload, parse_payload
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
        table = Table("status", "rows", title="alertq queue")
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


def main() -> None:
    app()
