"""Managed alerts: alerts alertq keeps true in Alertmanager for any producer.

A managed alert is identified by its label set (Alertmanager's fingerprint). It is firing
or resolved, with annotations and an optional expiry. Keep-alive re-sends it as Prometheus
does its own alerts:

* firing: every ``resend_interval``, with ``endsAt = now + 4 × resend_interval`` (never
  past its expiry), so Alertmanager never resolves it by itself and a restarted one learns
  it again within one interval;
* resolved: with ``endsAt`` = the resolution time, re-sent for ``resolved_retention``,
  then never again.

It owns at most two queue rows, a firing and a resolving one, and keep-alive re-arms them
instead of inserting. Firing again after a resolution starts a new episode (a new
``startsAt``) and deletes the finished rows of the last one.

Heartbeats (dead-man's switches) are managed alerts too: a heartbeat that misses its
deadline fires ``alertname=HeartbeatMissing, heartbeat=NAME`` plus its labels, and the
next ping resolves it. The keep-alive pass detects missed deadlines, each exactly once
across any number of workers (row locks, ``SKIP LOCKED``; the write lock on SQLite).

The public API (:func:`fire`, :func:`resolve`, :func:`heartbeat`) runs in the caller's
transaction with ``session=`` (never committing) or in its own; the ``*_sync`` forms are
for code that is not async (Django, Flask, scripts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.alerts import (
    BREAKER_ALERTNAME,
    FINGERPRINT_PATTERN,
    KEEPALIVE_FACTOR,
    InvalidAlertPayload,
    label_fingerprint,
    rfc3339,
    validate_payload,
)
from alertq.config import Settings
from alertq.db import create_engine, create_session_factory, transaction
from alertq.driver import get_queue_driver
from alertq.driver.managed import ManagedDriver, ManagedDue
from alertq.enqueue import enqueue_alert
from alertq.limits import check_name
from alertq.models import (
    HeartbeatModel,
    HeartbeatState,
    ManagedAlertModel,
    ManagedState,
    utcnow,
)

__all__ = [
    "HEARTBEAT_ALERTNAME",
    "MANAGED_FIRING_TYPE",
    "MANAGED_RESOLVING_TYPE",
    "HeartbeatView",
    "KeepaliveStep",
    "ManagedAlertView",
    "ManagedAlerts",
    "ManagedKeepalive",
    "Outcome",
    "OwnedByAlertq",
    "UnknownCursor",
    "configure",
    "fire",
    "fire_sync",
    "heartbeat",
    "heartbeat_sync",
    "keepalive_step",
    "keepalive_tick",
    "resolve",
    "resolve_sync",
]

log = logging.getLogger("alertq.managed")

MANAGED_FIRING_TYPE = "managed_firing"
MANAGED_RESOLVING_TYPE = "managed_resolving"
HEARTBEAT_ALERTNAME = "HeartbeatMissing"
MAX_EXPIRES_IN = timedelta(days=1000)
MAX_HEARTBEAT_WINDOW = timedelta(days=1000)
MIN_HEARTBEAT_WINDOW = timedelta(seconds=1)
KEEPALIVE_BATCH = 1000
KEEPALIVE_MAX_BATCHES = 20
"""A pass handles at most BATCH × MAX_BATCHES due alerts; the rest wait for the next tick."""
HEARTBEAT_BATCH = 500

KEEPALIVE_MAX_TICK = 5.0
KEEPALIVE_MIN_TICK = 0.05


def keepalive_tick(resend_interval: float) -> float:
    """Seconds between keep-alive passes: a fifth of ``resend_interval``, at most 5 s.

    A row is re-armed once its last send is ``resend_interval - tick`` old, so sends are
    never more than ``resend_interval`` apart (plus delivery time).
    """
    return max(KEEPALIVE_MIN_TICK, min(resend_interval / 5, KEEPALIVE_MAX_TICK))


# --------------------------------------------------------------------------- pure decision


@dataclass(frozen=True, slots=True)
class KeepaliveStep:
    """What one keep-alive pass does with one due managed alert.

    ``action``: ``rearm`` (re-send its current row with ``ends_at``), ``enqueue`` (its row
    is gone: write a fresh one), ``expire`` (resolve it: its expiry has come), ``wait``
    (look again at ``next_at``) or ``done`` (never again).
    """

    action: str
    next_at: datetime | None
    ends_at: datetime | None = None


def keepalive_step(
    *,
    state: str,
    row_status: str | None,
    sent_at: datetime | None,
    last_attempt_at: datetime | None,
    starts_at: datetime,
    resolved_at: datetime | None,
    expires_at: datetime | None,
    now: datetime,
    resend_interval: float,
    resolved_retention: float,
) -> KeepaliveStep:
    """Decide, as Prometheus would, whether a managed alert's current row is re-sent now."""
    tick = timedelta(seconds=keepalive_tick(resend_interval))
    due_age = timedelta(seconds=resend_interval) - tick
    if state == ManagedState.FIRING.value:
        if expires_at is not None and expires_at <= now:
            return KeepaliveStep("expire", now + due_age)
        ends_at = now + timedelta(seconds=KEEPALIVE_FACTOR * resend_interval)
        if expires_at is not None:
            ends_at = min(ends_at, expires_at)

        def later(at: datetime) -> datetime:
            return at if expires_at is None else min(at, expires_at)
    else:
        if resolved_at is None or now - resolved_at >= timedelta(seconds=resolved_retention):
            return KeepaliveStep("done", None)
        ends_at = resolved_at

        def later(at: datetime) -> datetime:
            return at

    ends_at = max(ends_at, starts_at)
    if row_status is None:
        return KeepaliveStep("enqueue", later(now + due_age), ends_at)
    if row_status == "pending":
        return KeepaliveStep("wait", later(now + tick))  # on its way already
    # Superseded: another producer's newer row with these labels went first. The managed
    # alert still holds, so it is re-sent on its cadence once that row is done (the re-arm
    # never overtakes a newer pending row); waiting for good left it unsent (red team 4).
    last = sent_at if row_status == "sent" else last_attempt_at
    if last is not None and now - last < due_age:
        return KeepaliveStep("wait", later(last + due_age))
    return KeepaliveStep("rearm", later(now + due_age), ends_at)


# --------------------------------------------------------------------------- validation


def _labels_and_annotations(
    labels: object, annotations: object, generator_url: object
) -> tuple[dict[str, str], dict[str, str], str | None]:
    """Validated exactly as enqueue validates an alert; raises InvalidAlertPayload."""
    alert: dict[str, Any] = {"labels": labels}
    if annotations is not None:
        alert["annotations"] = annotations
    if generator_url is not None:
        alert["generatorURL"] = generator_url
    (valid,) = validate_payload([alert])
    return valid["labels"], valid.get("annotations", {}), valid.get("generatorURL")


def _expires_in(value: float | timedelta | None) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ValueError(f"expires_in must be seconds or a timedelta (got {type(value).__name__})")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_EXPIRES_IN.total_seconds():
        raise ValueError(f"expires_in must be positive and at most {MAX_EXPIRES_IN.days} days")
    return timedelta(seconds=seconds)


def _heartbeat_name(name: object) -> str:
    """The API's rule for every caller (the CLI and the Python API took any text: a name
    with a newline reached the label sent to Alertmanager, and the API could never ping it)."""
    return check_name(name, "heartbeat name")


def _window(value: float | timedelta) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise ValueError(f"within must be seconds or a timedelta (got {type(value).__name__})")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or not (
        MIN_HEARTBEAT_WINDOW.total_seconds() <= seconds <= MAX_HEARTBEAT_WINDOW.total_seconds()
    ):
        raise ValueError(
            f"within must be between {MIN_HEARTBEAT_WINDOW.total_seconds():g} s and "
            f"{MAX_HEARTBEAT_WINDOW.days} days"
        )
    return timedelta(seconds=seconds)


def heartbeat_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The HeartbeatMissing alert's labels: the given ones, then alertname and heartbeat."""
    return {**labels, "alertname": HEARTBEAT_ALERTNAME, "heartbeat": name}


# --------------------------------------------------------------------------- views


@dataclass(frozen=True)
class ManagedAlertView:
    fingerprint: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str
    starts_at: datetime
    resolved_at: datetime | None
    expires_at: datetime | None
    last_sent_at: datetime | None
    next_send_at: datetime | None
    """When keep-alive next looks at it; None once it never will again."""

    @classmethod
    def from_row(cls, row: ManagedAlertModel) -> ManagedAlertView:
        return cls(
            fingerprint=row.fingerprint,
            labels=dict(row.labels),
            annotations=dict(row.annotations),
            state=row.state,
            starts_at=row.starts_at,
            resolved_at=row.resolved_at,
            expires_at=row.expires_at,
            last_sent_at=row.last_sent_at,
            next_send_at=row.keepalive_at,
        )


@dataclass(frozen=True)
class HeartbeatView:
    name: str
    window_seconds: float
    labels: dict[str, str]
    state: str
    last_ping_at: datetime
    deadline: datetime

    @classmethod
    def from_row(cls, row: HeartbeatModel) -> HeartbeatView:
        return cls(
            name=row.name,
            window_seconds=row.window_seconds,
            labels=dict(row.labels),
            state=row.state,
            last_ping_at=row.last_ping_at,
            deadline=row.deadline,
        )


@dataclass(frozen=True)
class Outcome:
    """The result of fire / resolve: whether anything changed, and what, in words."""

    changed: bool
    detail: str
    """``fired``, ``updated``, ``already firing``, ``resolved``, ``not firing``."""
    alert: ManagedAlertView | None


# --------------------------------------------------------------------------- the service


class _Service:
    """What the managed-alerts service and the keep-alive pass share: settings, where
    sessions come from, and the clock (injectable for tests)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.clock = clock


class ManagedAlerts(_Service):
    """Fire, resolve and list managed alerts; ping and list heartbeats.

    Each call runs in its own transaction, or in the caller's with ``session=`` (then
    nothing is committed here: if the caller rolls back, nothing happened). Everything is
    validated before any statement runs. ``clock`` is injectable for tests.
    """

    @asynccontextmanager
    async def _transaction(self, session: AsyncSession | None) -> AsyncIterator[AsyncSession]:
        if session is not None:
            yield session
            return
        async with transaction(self.session_factory) as s:
            yield s

    async def fire(
        self,
        labels: Mapping[str, str],
        annotations: Mapping[str, str] | None = None,
        expires_in: float | timedelta | None = None,
        session: AsyncSession | None = None,
        *,
        generator_url: str | None = None,
    ) -> Outcome:
        """Make the alert firing. Idempotent: firing one that is already firing updates its
        annotations (re-sent at once if they changed) and expiry, and keeps ``startsAt``."""
        valid = _labels_and_annotations(labels, annotations, generator_url)
        _not_alertqs_own(valid[0])
        delta = _expires_in(expires_in)
        async with self._transaction(session) as s:
            now = self.clock()
            return await fire_in(
                s,
                self.settings,
                *valid,
                now=now,
                expires_at=None if delta is None else now + delta,
            )

    async def resolve(
        self, labels: Mapping[str, str], session: AsyncSession | None = None
    ) -> Outcome:
        """Resolve the alert. Resolving one that is not firing changes nothing and says so
        (``Outcome.changed`` False, detail ``not firing``)."""
        valid_labels, _, _ = _labels_and_annotations(labels, None, None)
        _not_alertqs_own(valid_labels)
        async with self._transaction(session) as s:
            return await resolve_in(s, self.settings, valid_labels, now=self.clock())

    async def heartbeat(
        self,
        name: str,
        within: float | timedelta,
        labels: Mapping[str, str] | None = None,
        session: AsyncSession | None = None,
    ) -> HeartbeatView:
        """Record a ping of ``name``: the next one is due ``within`` from now. If the
        heartbeat was missing, its HeartbeatMissing alert is resolved."""
        name = _heartbeat_name(name)
        window = _window(within)
        extra = dict(labels or {})
        for reserved in ("alertname", "heartbeat"):
            if reserved in extra:
                raise InvalidAlertPayload(
                    f"{reserved} is set by alertq for heartbeats", field=f"labels.{reserved}"
                )
        # Validate the alert it would fire now, before any statement runs.
        alert_labels, _, _ = _labels_and_annotations(heartbeat_labels(name, extra), None, None)
        async with self._transaction(session) as s:
            now = self.clock()
            driver = ManagedDriver(s)
            previous = await driver.heartbeats_lock(name)
            if previous is not None and previous.state == HeartbeatState.MISSING.value:
                old = heartbeat_labels(previous.name, previous.labels)
                await resolve_in(s, self.settings, old, now=now)
            await driver.heartbeats_ping(name, window.total_seconds(), extra, now)
            del alert_labels
            return HeartbeatView(
                name=name,
                window_seconds=window.total_seconds(),
                labels=extra,
                state=HeartbeatState.OK.value,
                last_ping_at=now,
                deadline=now + window,
            )

    async def list_alerts(
        self, *, state: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[ManagedAlertView]:
        """Managed alerts, firing first, newest first; ``after`` (the fingerprint of the
        last alert of the previous page) continues from there."""
        if state is not None and state not in {s.value for s in ManagedState}:
            raise ValueError(f"state must be firing or resolved (got {state!r})")
        limit = max(1, min(limit, 10_000))
        if after is not None and not re.fullmatch(FINGERPRINT_PATTERN, str(after)):
            raise ValueError("after: not a fingerprint (16 hex digits)")
        async with transaction(self.session_factory) as s:
            driver = ManagedDriver(s)
            if after is not None and await driver.managed_get(after) is None:
                raise UnknownCursor(_UNKNOWN_CURSOR.format("managed alert has this fingerprint"))
            rows = await driver.managed_list(state=state, limit=limit, after=after)
            return [ManagedAlertView.from_row(r) for r in rows]

    async def list_heartbeats(
        self, limit: int = 100, after: str | None = None
    ) -> list[HeartbeatView]:
        """Heartbeats, missing first, then by name; ``after`` (the name of the last one of
        the previous page) continues from there."""
        limit = max(1, min(limit, 10_000))
        if after is not None:
            check_name(after, "after")
        async with transaction(self.session_factory) as s:
            driver = ManagedDriver(s)
            if after is not None and await driver.heartbeats_get(after) is None:
                raise UnknownCursor(_UNKNOWN_CURSOR.format("heartbeat has this name"))
            return [HeartbeatView.from_row(r) for r in await driver.heartbeats_list(limit, after)]


class OwnedByAlertq(ValueError):
    """The labels are those of an alert alertq itself keeps: a breaker's or a heartbeat's."""


_OWNERS = {
    BREAKER_ALERTNAME: "a circuit breaker's: `alertq breaker trip/reset` changes it",
    HEARTBEAT_ALERTNAME: "a heartbeat's: a ping resolves it",
}


def _not_alertqs_own(labels: Mapping[str, str]) -> None:
    """Refuse to fire or resolve, through the public API, an alert whose owner is alertq:
    resolving a breaker's alert left the breaker open and its incident unresolved, and
    firing HeartbeatMissing spoofed a heartbeat (red-team pass 4)."""
    owner = _OWNERS.get(labels.get("alertname", ""))
    if owner is not None:
        raise OwnedByAlertq(f"alertname {labels['alertname']} is {owner}")


class UnknownCursor(ValueError):
    """A list's ``after`` names no row (it was deleted since the last page)."""


_UNKNOWN_CURSOR = "after: no {} (gone since the last page?); list again without after"


# --------------------------------------------------------------------------- in a session


def _due_age(settings: Settings) -> timedelta:
    interval = settings.resend_interval
    return timedelta(seconds=interval - keepalive_tick(interval))


def _payload(
    labels: dict[str, str],
    annotations: dict[str, str],
    generator_url: str | None,
    starts_at: datetime,
    ends_at: datetime,
) -> list[dict[str, Any]]:
    """The alert as Alertmanager takes it (built from validated parts: no re-validation)."""
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(max(ends_at, starts_at)),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return [alert]


def _firing_ends_at(settings: Settings, now: datetime, expires_at: datetime | None) -> datetime:
    ends = now + timedelta(seconds=KEEPALIVE_FACTOR * settings.resend_interval)
    return ends if expires_at is None else min(ends, expires_at)


def _next_look(now: datetime, settings: Settings, expires_at: datetime | None) -> datetime:
    at = now + _due_age(settings)
    return at if expires_at is None else min(at, expires_at)


async def fire_in(
    session: AsyncSession,
    settings: Settings,
    labels: dict[str, str],
    annotations: dict[str, str],
    generator_url: str | None,
    *,
    now: datetime,
    expires_at: datetime | None = None,
    starts_at: datetime | None = None,
    firing_type: str = MANAGED_FIRING_TYPE,
    resolving_type: str = MANAGED_RESOLVING_TYPE,
    circuit_breaker_name: str | None = None,
    incident_id: str | None = None,
) -> Outcome:
    """:meth:`ManagedAlerts.fire` inside ``session`` with already validated parts (for
    producers built on managed alerts, such as the circuit breaker)."""
    fingerprint = label_fingerprint(labels)
    driver = ManagedDriver(session)
    row = await driver.managed_lock(fingerprint)
    if row is None:
        await driver.managed_insert(
            fingerprint=fingerprint,
            labels=labels,
            annotations=annotations,
            generator_url=generator_url,
            state=ManagedState.RESOLVED.value,  # made firing just below, as a new episode
            starts_at=now,
            firing_type=firing_type,
            resolving_type=resolving_type,
            circuit_breaker_name=circuit_breaker_name,
            incident_id=incident_id,
            created_at=now,
            updated_at=now,
        )
        row = await driver.managed_lock(fingerprint)
        assert row is not None
    if row.state == ManagedState.FIRING.value:
        return await _refire(
            session, settings, driver, row, annotations, generator_url, now, expires_at
        )

    # A new episode: a new startsAt, a fresh firing row; the last episode's rows go.
    start = starts_at or now
    payload = _payload(
        labels, annotations, generator_url, start, _firing_ends_at(settings, now, expires_at)
    )
    queued = await enqueue_alert(
        session,
        payload,
        firing_type,
        circuit_breaker_name,
        incident_id,
        now=now,
        max_attempts=settings.max_attempts,
        notify_throttle=settings.notify_throttle,
    )
    old = [i for i in (row.firing_row_id, row.resolving_row_id) if i is not None]
    await get_queue_driver(session).alerts_delete_done(old)
    await driver.managed_update(
        row.id,
        labels=labels,
        annotations=annotations,
        generator_url=generator_url,
        state=ManagedState.FIRING.value,
        starts_at=start,
        resolved_at=None,
        expires_at=expires_at,
        keepalive_at=_next_look(now, settings, expires_at),
        firing_row_id=queued.id,
        resolving_row_id=None,
        firing_type=firing_type,
        resolving_type=resolving_type,
        circuit_breaker_name=circuit_breaker_name,
        incident_id=incident_id,
        updated_at=now,
    )
    metrics.MANAGED_FIRED.inc()
    fresh = await driver.managed_get(fingerprint)
    assert fresh is not None
    return Outcome(True, "fired", ManagedAlertView.from_row(fresh))


async def _refire(
    session: AsyncSession,
    settings: Settings,
    driver: ManagedDriver,
    row: ManagedAlertModel,
    annotations: dict[str, str],
    generator_url: str | None,
    now: datetime,
    expires_at: datetime | None,
) -> Outcome:
    """Fire an alert that is firing: same episode, same startsAt; new content is sent now."""
    changed = annotations != row.annotations or generator_url != row.generator_url
    values: dict[str, Any] = {"expires_at": expires_at, "updated_at": now}
    if expires_at != row.expires_at:
        values["keepalive_at"] = _next_look(now, settings, expires_at)
    if changed:
        payload = _payload(
            row.labels,
            annotations,
            generator_url,
            row.starts_at,
            _firing_ends_at(settings, now, expires_at),
        )
        values.update(annotations=annotations, generator_url=generator_url)
        current = row.firing_row_id
        queue = get_queue_driver(session)
        sent = current is not None and (
            await queue.alerts_update_pending(current, payload)
            or await queue.alerts_rearm([(current, payload)], now)
        )
        if not sent:  # leased right now, or gone: a new row supersedes it
            queued = await enqueue_alert(
                session,
                payload,
                row.firing_type,
                row.circuit_breaker_name,
                row.incident_id,
                now=now,
                max_attempts=settings.max_attempts,
                notify_throttle=settings.notify_throttle,
            )
            if current is not None:
                await get_queue_driver(session).alerts_delete_done([current])
            values["firing_row_id"] = queued.id
        values["keepalive_at"] = _next_look(now, settings, expires_at)
    await driver.managed_update(row.id, **values)
    fresh = await driver.managed_get(row.fingerprint)
    assert fresh is not None
    view = ManagedAlertView.from_row(fresh)
    return Outcome(changed, "updated" if changed else "already firing", view)


async def resolve_in(
    session: AsyncSession,
    settings: Settings,
    labels: dict[str, str],
    *,
    now: datetime,
    annotations: dict[str, str] | None = None,
) -> Outcome:
    """:meth:`ManagedAlerts.resolve` inside ``session``; ``annotations`` replace the firing
    ones on the resolving alert when given (the breaker says how it was closed)."""
    driver = ManagedDriver(session)
    row = await driver.managed_lock(label_fingerprint(labels))
    if row is None or row.state != ManagedState.FIRING.value:
        log.info("resolve: %s is not firing; nothing to do", labels.get("alertname"))
        view = None if row is None else ManagedAlertView.from_row(row)
        return Outcome(False, "not firing", view)
    await _resolve_row(session, settings, driver, row, now, now, annotations)
    metrics.MANAGED_RESOLVED.inc()
    fresh = await driver.managed_get(row.fingerprint)
    assert fresh is not None
    return Outcome(True, "resolved", ManagedAlertView.from_row(fresh))


async def _resolve_row(
    session: AsyncSession,
    settings: Settings,
    driver: ManagedDriver,
    row: ManagedAlertModel,
    resolved_at: datetime,
    now: datetime,
    annotations: dict[str, str] | None = None,
) -> None:
    """Resolve a locked firing alert at ``resolved_at``: enqueue its resolving row (which
    supersedes a firing row still waiting) and keep it for the retention."""
    notes = row.annotations if annotations is None else annotations
    payload = _payload(row.labels, notes, row.generator_url, row.starts_at, resolved_at)
    queued = await enqueue_alert(
        session,
        payload,
        row.resolving_type,
        row.circuit_breaker_name,
        row.incident_id,
        now=now,
        max_attempts=settings.max_attempts,
        notify_throttle=settings.notify_throttle,
    )
    old = row.resolving_row_id
    if old is not None:
        await get_queue_driver(session).alerts_delete_done([old])
    retention = timedelta(seconds=settings.resolved_retention)
    await driver.managed_update(
        row.id,
        state=ManagedState.RESOLVED.value,
        annotations=notes,
        resolved_at=resolved_at,
        resolving_row_id=queued.id,
        keepalive_at=now + _due_age(settings) if retention > timedelta(0) else None,
        updated_at=now,
    )


# --------------------------------------------------------------------------- keep-alive


@dataclass
class KeepaliveResult:
    rearmed: int = 0
    enqueued: int = 0
    expired: int = 0
    heartbeats_missing: int = 0
    examined: int = 0

    @property
    def queued(self) -> int:
        """Rows made due by this pass (re-armed or written)."""
        return self.rearmed + self.enqueued + self.expired + self.heartbeats_missing


class ManagedKeepalive(_Service):
    """One keep-alive pass over managed alerts and heartbeats (:meth:`run_once`).

    Reads only what is due (``keepalive_at <= now``, heartbeats past their deadline),
    locked ``SKIP LOCKED`` so concurrent passes on many workers share the work and never
    do one item twice. Cost per pass is bounded by what is due, not by history.
    """

    async def run_once(self) -> KeepaliveResult:
        result = KeepaliveResult()
        for _ in range(KEEPALIVE_MAX_BATCHES):
            seen = await self._alerts_batch(result)
            if seen < KEEPALIVE_BATCH:
                break
        await self._heartbeats(result)
        return result

    async def _alerts_batch(self, result: KeepaliveResult) -> int:
        settings = self.settings
        async with transaction(self.session_factory) as s:
            now = self.clock()
            driver = ManagedDriver(s)
            due = await driver.managed_lock_due(now, KEEPALIVE_BATCH)
            if not due:
                return 0
            owned = [d.alert.incident_id for d in due if d.alert.incident_id is not None]
            locked = await driver.managed_incidents_lock(owned)
            rearm: list[tuple[int, list[dict[str, Any]]]] = []
            updates: dict[int, dict[str, Any]] = {}  # by queue row id for re-arms
            plain: list[dict[str, Any]] = []
            for d in due:
                a = d.alert
                if a.incident_id is not None and a.incident_id not in locked:
                    continue  # its incident is being resolved right now: next pass
                result.examined += 1
                step = _step(d, now, settings)
                update = {
                    "m_id": a.id,
                    "next_at": step.next_at,
                    "sent_at": d.row_sent_at if d.row_status == "sent" else None,
                }
                row_id = _current_row(a)
                if step.action == "rearm" and row_id is not None:
                    assert step.ends_at is not None
                    payload = _payload(
                        a.labels, a.annotations, a.generator_url, a.starts_at, step.ends_at
                    )
                    rearm.append((row_id, payload))
                    updates[row_id] = update
                elif step.action == "expire":
                    assert a.expires_at is not None
                    await _resolve_row(s, settings, driver, a, a.expires_at, now)
                    result.expired += 1
                elif step.action == "enqueue":
                    await self._rewrite(s, driver, a, step, now)
                    result.enqueued += 1
                else:
                    plain.append(update)
            done = set(await get_queue_driver(s).alerts_rearm(rearm, now))
            result.rearmed += len(done)
            tick = timedelta(seconds=keepalive_tick(settings.resend_interval))
            for row_id, update in updates.items():
                if row_id not in done:  # a newer row has its labels, or it is leased
                    update["next_at"] = now + tick
            plain.extend(updates.values())
            await driver.managed_set_keepalive_many(plain)
            if result.queued:
                await get_queue_driver(s).alerts_notify()
            return len(due)

    async def _rewrite(
        self,
        session: AsyncSession,
        driver: ManagedDriver,
        a: ManagedAlertModel,
        step: KeepaliveStep,
        now: datetime,
    ) -> None:
        """The alert's current row is gone (purged by hand): write a fresh one."""
        assert step.ends_at is not None
        firing = a.state == ManagedState.FIRING.value
        queued = await enqueue_alert(
            session,
            _payload(a.labels, a.annotations, a.generator_url, a.starts_at, step.ends_at),
            a.firing_type if firing else a.resolving_type,
            a.circuit_breaker_name,
            a.incident_id,
            now=now,
            max_attempts=self.settings.max_attempts,
            notify_throttle=self.settings.notify_throttle,
        )
        column = "firing_row_id" if firing else "resolving_row_id"
        await driver.managed_update(a.id, **{column: queued.id, "keepalive_at": step.next_at})

    async def _heartbeats(self, result: KeepaliveResult) -> None:
        async with transaction(self.session_factory) as s:
            now = self.clock()
            driver = ManagedDriver(s)
            for hb in await driver.heartbeats_lock_overdue(now, HEARTBEAT_BATCH):
                labels = heartbeat_labels(hb.name, hb.labels)
                window = timedelta(seconds=hb.window_seconds)
                annotations = {
                    "summary": f"Heartbeat {hb.name} missed its deadline",
                    "description": (
                        f"No ping of heartbeat {hb.name} since {rfc3339(hb.last_ping_at)}; "
                        f"one was due within {_human(window)} (by {rfc3339(hb.deadline)})."
                    ),
                }
                await fire_in(s, self.settings, labels, annotations, None, now=now)
                if await driver.heartbeats_mark_missing(hb.id, label_fingerprint(labels)):
                    result.heartbeats_missing += 1
                    metrics.HEARTBEATS_MISSED.inc()
                    log.warning("heartbeat %s missed its deadline", hb.name)
            if result.heartbeats_missing:
                await get_queue_driver(s).alerts_notify()


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _current_row(a: ManagedAlertModel) -> int | None:
    return a.firing_row_id if a.state == ManagedState.FIRING.value else a.resolving_row_id


def _step(d: ManagedDue, now: datetime, settings: Settings) -> KeepaliveStep:
    a = d.alert
    return keepalive_step(
        state=a.state,
        row_status=d.row_status,
        sent_at=d.row_sent_at,
        last_attempt_at=d.row_last_attempt_at,
        starts_at=a.starts_at,
        resolved_at=a.resolved_at,
        expires_at=a.expires_at,
        now=now,
        resend_interval=settings.resend_interval,
        resolved_retention=settings.resolved_retention,
    )


# --------------------------------------------------------------------------- module-level API

_configured: tuple[Settings, async_sessionmaker[AsyncSession]] | None = None
# One engine per event loop: an asyncio engine's connections belong to the loop that opened them.
_per_loop: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[AsyncEngine, ManagedAlerts]
] = weakref.WeakKeyDictionary()


def configure(
    settings: Settings | None = None,
    session_factory: async_sessionmaker[AsyncSession] | None = None,
) -> None:
    """Use these settings (and this session factory) for :func:`fire`, :func:`resolve` and
    :func:`heartbeat`. Without a call, they read ``ALERTQ_*`` settings on first use."""
    global _configured
    _per_loop.clear()
    _configured = None
    if settings is not None and session_factory is not None:
        _configured = (settings, session_factory)
    elif settings is not None:
        _configured = (settings, create_session_factory(create_engine(settings)))


def _service() -> ManagedAlerts:
    if _configured is not None:
        return ManagedAlerts(*_configured)
    loop = asyncio.get_running_loop()
    found = _per_loop.get(loop)
    if found is None:
        settings = Settings()
        engine = create_engine(settings)
        found = (engine, ManagedAlerts(settings, create_session_factory(engine)))
        _per_loop[loop] = found
    return found[1]


def _service_with(session: AsyncSession | None) -> ManagedAlerts:
    # With the caller's session only the settings are needed; no engine of our own.
    if session is not None and _configured is None:
        return ManagedAlerts(Settings(), async_sessionmaker())
    return _service()


async def fire(
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
    expires_in: float | timedelta | None = None,
    session: AsyncSession | None = None,
    *,
    generator_url: str | None = None,
) -> Outcome:
    """Fire a managed alert (see :meth:`ManagedAlerts.fire`)."""
    service = _service_with(session)
    return await service.fire(labels, annotations, expires_in, session, generator_url=generator_url)


async def resolve(labels: Mapping[str, str], session: AsyncSession | None = None) -> Outcome:
    """Resolve a managed alert (see :meth:`ManagedAlerts.resolve`)."""
    return await _service_with(session).resolve(labels, session)


async def heartbeat(
    name: str,
    within: float | timedelta,
    labels: Mapping[str, str] | None = None,
    session: AsyncSession | None = None,
) -> HeartbeatView:
    """Ping a heartbeat (see :meth:`ManagedAlerts.heartbeat`)."""
    return await _service_with(session).heartbeat(name, within, labels, session)


# --------------------------------------------------------------------------- synchronous forms

T = TypeVar("T")
_sync_lock = threading.Lock()
_sync_loop: asyncio.AbstractEventLoop | None = None


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on alertq's own event loop thread and wait for it.

    One long-lived loop (and so one connection pool) serves every thread of a sync
    application; safe to call from any thread, including one that runs its own loop.
    """
    global _sync_loop
    with _sync_lock:
        if _sync_loop is None or _sync_loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="alertq-sync", daemon=True)
            thread.start()
            _sync_loop = loop
        loop = _sync_loop
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
    return future.result()


def fire_sync(
    labels: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
    expires_in: float | timedelta | None = None,
    *,
    generator_url: str | None = None,
) -> Outcome:
    """:func:`fire` for code that is not async. Validates in the calling thread first."""
    _labels_and_annotations(labels, annotations, generator_url)
    _expires_in(expires_in)
    return _run_blocking(fire(labels, annotations, expires_in, generator_url=generator_url))


def resolve_sync(labels: Mapping[str, str]) -> Outcome:
    """:func:`resolve` for code that is not async."""
    _labels_and_annotations(labels, None, None)
    return _run_blocking(resolve(labels))


def heartbeat_sync(
    name: str, within: float | timedelta, labels: Mapping[str, str] | None = None
) -> HeartbeatView:
    """:func:`heartbeat` for code that is not async."""
    _heartbeat_name(name)
    _window(within)
    return _run_blocking(heartbeat(name, within, labels))
