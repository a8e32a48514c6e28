"""The ``alertq`` command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from alertq import migrate
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_alert_driver

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


@app.command()
def stats(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Queue depth by status and the oldest pending row."""
    settings = load_settings()

    async def work(factory: Any) -> dict[str, Any]:
        async with transaction(factory) as session:
            return await get_alert_driver(session).fetch_queue_stats()

    result = run_with_db(settings, work)
    if as_json:
        typer.echo(json.dumps({k: _jsonable(v) for k, v in result.items()}))
        return
    table = Table("status", "rows")
    for key, value in result.items():
        if isinstance(value, int):
            table.add_row(key, str(value))
    console.print(table)
    console.print(f"oldest pending created at: {result['oldest_pending_created_at'] or '-'}")


def main() -> None:
    app()
