"""The managed-alert commands of the ``alertq`` command line: fire, resolve, heartbeat,
and the listings. Registered on the main app by :func:`register`.

Bad input exits 2 with one line naming the argument and the rule broken (through
:mod:`alertq.cli_output`, as every command); an unreachable database is the entry point's
(:func:`alertq.cli.main`): one line, exit 1, a traceback only with ``--debug``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq.alerts import InvalidAlertPayload
from alertq.cli_output import console, fail, load_settings, visible
from alertq.config import Settings, parse_duration
from alertq.db import create_engine, create_session_factory
from alertq.managed import HeartbeatView, ManagedAlerts, ManagedAlertView, Outcome

__all__ = ["register"]

T = TypeVar("T")
MAX_LABEL_ARGS = 64


def _run(settings: Settings, work: Callable[[ManagedAlerts], Awaitable[T]]) -> T:
    async def go() -> T:
        engine = create_engine(settings)
        factory: async_sessionmaker[AsyncSession] = create_session_factory(engine)
        try:
            return await work(ManagedAlerts(settings, factory))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except InvalidAlertPayload as exc:
        fail(f"invalid alert: {exc.field or 'labels'}: {exc.rule}")
    except ValueError as exc:
        fail(f"invalid argument: {exc}")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    """``name=value`` arguments → a dict; exit 2 naming the one that is not."""
    if len(values) > MAX_LABEL_ARGS:
        fail(f"{what}: at most {MAX_LABEL_ARGS} (got {len(values)})")
    result: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"{what} {item[:80]!r}: expected name=value")
        if name in result:
            fail(f"{what} {name[:80]!r}: given twice")
        result[name] = value
    return result


def _labels_text(labels: dict[str, str]) -> str:
    """``name{k="v",...}``, with control characters shown as escapes: a label value may
    hold an ESC sequence, and it is echoed to the operator's terminal (red-team pass 3)."""
    name = labels.get("alertname", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "alertname")
    return visible(f"{name}{{{rest}}}")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _print_outcome(out: Outcome, labels: dict[str, str]) -> None:
    fp = out.alert.fingerprint if out.alert is not None else "-"
    note = "" if out.changed else " (nothing to do)"
    typer.echo(f"{out.detail}{note}: {_labels_text(labels)} fingerprint={fp}")


def fire(
    labels: list[str] = typer.Argument(..., help="Labels as name=value; alertname is required."),
    annotation: list[str] = typer.Option(
        [], "--annotation", "-a", help="An annotation as name=value (repeatable)."
    ),
    expires_in: str | None = typer.Option(
        None, "--expires-in", help="Resolve by itself after this long (e.g. 20s, 2h, 7d)."
    ),
    generator_url: str | None = typer.Option(None, "--generator-url", help="Link back."),
) -> None:
    """Fire a managed alert: kept firing in Alertmanager until resolved (or expired).
    Firing one that is already firing updates its annotations and keeps its start."""
    label_map = _pairs(labels, "label")
    notes = _pairs(annotation, "annotation")
    expiry = None
    if expires_in is not None:
        try:
            expiry = parse_duration(expires_in)
        except ValueError as exc:
            fail(f"--expires-in: {exc}")
    settings = load_settings()
    out = _run(
        settings,
        lambda m: m.fire(label_map, notes or None, expiry, generator_url=generator_url),
    )
    _print_outcome(out, label_map)


def resolve(
    labels: list[str] = typer.Argument(..., help="The alert's labels as name=value."),
) -> None:
    """Resolve a managed alert. Resolving one that is not firing does nothing and says so."""
    label_map = _pairs(labels, "label")
    out = _run(load_settings(), lambda m: m.resolve(label_map))
    _print_outcome(out, label_map)


def heartbeat(
    name: str = typer.Argument(..., help="Heartbeat name, e.g. backup."),
    within: str = typer.Option(..., "--within", help="The next ping is due within (e.g. 26h)."),
    label: list[str] = typer.Option(
        [], "--label", "-l", help="A label of its HeartbeatMissing alert, name=value."
    ),
) -> None:
    """Record a ping. If none arrives within the window, HeartbeatMissing fires."""
    try:
        window = parse_duration(within)
    except ValueError as exc:
        fail(f"--within: {exc}")
    extra = _pairs(label, "label")
    hb = _run(load_settings(), lambda m: m.heartbeat(name, window, extra))
    typer.echo(f"ping recorded: {hb.name}, next due by {_when(hb.deadline)}")


def alerts(
    managed: bool = typer.Option(
        False, "--managed", help="List managed alerts (required: the queue is `alertq stats`)."
    ),
    state: str | None = typer.Option(None, "--state", help="firing or resolved."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000),
    after: str | None = typer.Option(
        None, "--after", help="Continue after this fingerprint (the last one listed)."
    ),
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
) -> None:
    """List managed alerts, firing first, newest first: state, start, last sent, next
    keep-alive."""
    if not managed:
        fail("alerts: pass --managed (queue rows are shown by `alertq stats`)")
    if state is not None and state not in ("firing", "resolved"):
        fail(f"--state: must be firing or resolved (got {state[:40]!r})")
    views = _run(load_settings(), lambda m: m.list_alerts(state=state, limit=limit, after=after))
    if as_json:
        for v in views:
            typer.echo(json.dumps(_jsonable(asdict(v)), sort_keys=True))
        return
    console.print(_alerts_table(views))


def heartbeats(
    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000),
    after: str | None = typer.Option(
        None, "--after", help="Continue after this name (the last one listed)."
    ),
) -> None:
    """List heartbeats, missing first, then by name: state, last ping, deadline."""
    views = _run(load_settings(), lambda m: m.list_heartbeats(limit, after))
    if as_json:
        for v in views:
            typer.echo(json.dumps(_jsonable(asdict(v)), sort_keys=True))
        return
    console.print(_heartbeats_table(views))


def _alerts_table(views: list[ManagedAlertView]) -> Table:
    table = Table("alert", "state", "started", "last sent", "next send", "expires")
    for v in views:
        table.add_row(
            _labels_text(v.labels),
            v.state,
            _when(v.starts_at),
            _when(v.last_sent_at),
            _when(v.next_send_at),
            _when(v.expires_at),
        )
    return table


def _heartbeats_table(views: list[HeartbeatView]) -> Table:
    table = Table("heartbeat", "state", "last ping", "deadline", "window")
    for v in views:
        table.add_row(
            v.name, v.state, _when(v.last_ping_at), _when(v.deadline), f"{v.window_seconds:g}s"
        )
    return table


def register(app: typer.Typer) -> None:
    """Add the managed-alert commands to the ``alertq`` app."""
    app.command()(fire)
    app.command()(resolve)
    app.command()(heartbeat)
    app.command()(alerts)
    app.command()(heartbeats)
