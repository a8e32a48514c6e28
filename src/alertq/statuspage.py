"""The status page at ``/``: one HTML page (``templates/status.html``) showing the queue,
a chart of the last hour, the Alertmanagers, the circuit breakers and the latest failed
rows, all read from an :class:`~alertq.opsview.OpsContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any, NamedTuple
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.exc import SQLAlchemyError

from alertq import ops
from alertq.driver.intake import IntakeSource
from alertq.managed import HeartbeatView, ManagedAlerts, ManagedAlertView
from alertq.models import AlertStatus, CostSimAlertQueueModel
from alertq.opsview import (
    CHART_WINDOW,
    DatabaseUnavailable,
    OpsContext,
    Sample,
    Snapshot,
    describe_db_error,
)
from alertq.schemas import summary_fields, to_breaker, to_incident, to_queue_stats

__all__ = ["Chart", "ChartSeries", "build_chart", "human_age", "render_status_page"]

MIN_CHART_SPAN = timedelta(seconds=10)
FAILED_ROWS_SHOWN = 10
MANAGED_SHOWN = 50
"""Managed alerts and heartbeats listed (firing / missing first)."""
PAGE_REFRESH_SECONDS = 10

_templates = Environment(
    loader=PackageLoader("alertq", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def human_age(seconds: float | None) -> str:
    """``"0s"``, ``"42s"``, ``"3m 12s"``, ``"2h 5m"``, ``"3d 4h"``."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _ago(when: datetime | None, now: datetime) -> str:
    return "never" if when is None else f"{human_age((now - when).total_seconds())} ago"


@dataclass(frozen=True, slots=True)
class ChartSeries:
    """One line of the chart, already in SVG coordinates (0..W × 0..H)."""

    title: str
    unit: str
    line: str
    area: str
    latest: str
    peak: str
    css: str


CHART_W, CHART_H = 600.0, 120.0


@dataclass(frozen=True, slots=True)
class Chart:
    """The status page's chart: a time axis and two series."""

    title: str
    axis: tuple[str, str, str]
    series: list[ChartSeries]


def _span_label(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def build_chart(samples: Sequence[Sample], now: datetime) -> Chart:
    """Delivery rate and queue depth over the last hour (or since the process started,
    if that is shorter), in SVG coordinates."""
    start = now - CHART_WINDOW
    points = [s for s in samples if s.at >= start]
    if points:
        start = max(start, min(points[0].at, now - MIN_CHART_SPAN))
    span = max(1.0, (now - start).total_seconds())
    rates: list[tuple[datetime, float]] = []
    for prev, cur in pairwise(points):
        dt = (cur.at - prev.at).total_seconds()
        if dt > 0:
            rates.append((cur.at, max(0.0, cur.sent_total - prev.sent_total) / dt))
    depth = [(s.at, float(s.pending)) for s in points]

    def series(title: str, unit: str, data: list[tuple[datetime, float]], css: str) -> ChartSeries:
        peak = max((v for _, v in data), default=0.0)
        top = peak * 1.15 if peak > 0 else 1.0
        coords = [
            (CHART_W * (at - start).total_seconds() / span, CHART_H - CHART_H * v / top)
            for at, v in data
        ]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        area = ""
        if len(coords) >= 2:
            area = f"M{coords[0][0]:.1f},{CHART_H:.0f} L{line.replace(' ', ' L')} "
            area += f"L{coords[-1][0]:.1f},{CHART_H:.0f} Z"
        latest = _number(data[-1][1] if data else None, unit)
        return ChartSeries(
            title, unit, line, area, latest, _number(peak if data else None, unit), css
        )

    full = span >= CHART_WINDOW.total_seconds() - 1
    return Chart(
        title="Last hour" if full else f"Since start ({_span_label(span)})",
        axis=(f"−{_span_label(span)}", f"−{_span_label(span / 2)}", "now"),
        series=[
            series("Delivered", "/s", rates, "rate"),
            series("Pending", "rows", depth, "depth"),
        ],
    )


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:.1f}/s" if value >= 10 or value == 0 else f"{value:.2f}/s"
    return f"{int(value)}"


def _until(when: datetime | None, now: datetime) -> str:
    """``in 4m`` for a future moment, ``now`` for a past one, ``—`` for none."""
    if when is None:
        return "—"
    seconds = (when - now).total_seconds()
    return "now" if seconds <= 0 else f"in {human_age(seconds)}"


class _Lists(NamedTuple):
    failed_rows: list[CostSimAlertQueueModel]
    sources: list[IntakeSource]
    managed_alerts: list[ManagedAlertView]
    heartbeats: list[HeartbeatView]


async def _read_lists(context: OpsContext) -> _Lists:
    service = ManagedAlerts(context.settings, context.session_factory, clock=context.clock)
    return _Lists(
        list(
            await ops.list_alerts(
                context.session_factory, AlertStatus.FAILED.value, FAILED_ROWS_SHOWN
            )
        ),
        list(await ops.intake_sources(context.session_factory)),
        # One more than shown: whether to say there are more (red-team pass 4).
        list(await service.list_alerts(limit=MANAGED_SHOWN + 1)),
        list(await service.list_heartbeats(limit=MANAGED_SHOWN + 1)),
    )


def _next_page(items: list[Any], path: str, key: Callable[[Any], str]) -> str | None:
    """The API page after the shown ones, if the list has more than ``MANAGED_SHOWN``."""
    if len(items) <= MANAGED_SHOWN:
        return None
    return f"{path}?after={quote(key(items[MANAGED_SHOWN - 1]), safe='')}"


async def render_status_page(context: OpsContext) -> str:
    """The status page's HTML: queue, chart, Alertmanagers, breakers, failed rows. Every
    database read is cached as the snapshot is, so a page view costs what a scrape does."""
    now = context.clock()
    db_error: str | None = None
    snap: Snapshot | None = None
    failed_rows: list[CostSimAlertQueueModel] = []
    sources: list[IntakeSource] = []
    managed_alerts: list[ManagedAlertView] = []
    heartbeats: list[HeartbeatView] = []
    try:
        snap = await context.snapshot()
        failed_rows, sources, managed_alerts, heartbeats = await context.shared_read(
            "status page", lambda: _read_lists(context)
        )
    except DatabaseUnavailable as exc:
        db_error = str(exc)
        snap = context.cached
    except (SQLAlchemyError, OSError) as exc:
        db_error = describe_db_error(exc)
    stats = to_queue_stats(snap, now) if snap is not None else None
    delivery_errors = (
        dict(context.worker_stats.last_error_by_target) if context.worker_stats else {}
    )
    targets = [
        {
            "target": h.target,
            "ready": h.ready,
            "error": h.error,
            "delivery_error": delivery_errors.get(h.target),
            "checked": _ago(h.checked_at, now),
            "last_ready": _ago(h.last_ready_at, now),
        }
        for h in context.health.values()
    ]
    checked = [h for h in context.health.values() if h.ready is not None]
    breakers = [to_breaker(b, now) for b in snap.breakers] if snap is not None else []
    template = _templates.get_template("status.html")
    return template.render(
        now=now,
        instance=context.settings.instance,
        refresh=PAGE_REFRESH_SECONDS,
        db_error=db_error,
        stats=stats,
        oldest_due=human_age(stats.oldest_due_age_seconds) if stats else "—",
        collected=_ago(stats.collected_at, now) if stats else "never",
        none_ready=bool(checked) and not context.any_ready,
        not_checked=not checked,
        targets=targets,
        breakers=breakers,
        breaker_total=snap.counts.breakers if snap is not None else 0,
        open_breakers=snap.counts.open_breakers if snap is not None else 0,
        incidents=[to_incident(i) for i in snap.open_incidents] if snap is not None else [],
        incident_total=snap.counts.open_incidents if snap is not None else 0,
        failed=[
            {**summary_fields(r), "age": _ago(r.last_attempt_at or r.created_at, now)}
            for r in failed_rows
        ],
        intake_sources=[
            {
                "addr": src.addr or "—",
                "agent": src.agent or "—",
                "rows": src.rows,
                "pending": src.pending,
                "last": _ago(src.last_at, now),
            }
            for src in sources
        ],
        chart=build_chart(list(context.samples), now),
        chart_w=int(CHART_W),
        chart_h=int(CHART_H),
        token_configured=context.settings.mutations_enabled,
        managed_more=_next_page(managed_alerts, "/api/managed", lambda m: m.fingerprint),
        heartbeats_more=_next_page(heartbeats, "/api/heartbeats", lambda h: h.name),
        managed=[
            {
                "alertname": m.labels.get("alertname", ""),
                "labels": ", ".join(f"{k}={v}" for k, v in m.labels.items() if k != "alertname"),
                "state": m.state,
                "last_sent": _ago(m.last_sent_at, now),
                "next": _until(m.next_send_at, now),
                "expires": _until(m.expires_at, now)
                if m.state == "firing" and m.expires_at is not None
                else "",
            }
            for m in managed_alerts[:MANAGED_SHOWN]
        ],
        heartbeats=[
            {
                "name": h.name,
                "state": h.state,
                "last_ping": _ago(h.last_ping_at, now),
                "deadline": _until(h.deadline, now) if h.deadline > now else "passed",
            }
            for h in heartbeats[:MANAGED_SHOWN]
        ],
        ago=lambda when: _ago(when, now),
    )
