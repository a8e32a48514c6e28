"""The cached ops view: what the ops server and the status page read.

:class:`OpsContext` holds a snapshot of queue stats, breakers and open incidents cached
for ``stats_cache_seconds`` (so neither a scrape nor a page view recounts the queue), the
status page's other reads for as long (:meth:`OpsContext.shared_read`), each
Alertmanager's last readiness check, and the in-process samples behind the status page's
chart. ``alertq run`` (:mod:`alertq.runner`) keeps it fresh. Everything goes through the
service layer (:mod:`alertq.ops`, :class:`CircuitBreaker`); no SQL here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import REGISTRY
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics, ops
from alertq.breaker import BreakerCounts, BreakerState, CircuitBreaker, IncidentView
from alertq.config import Settings
from alertq.db import describe_error as describe_db_error
from alertq.delivery import TargetHealth, target_key
from alertq.engine import WorkerStats
from alertq.models import Clock, utcnow

T = TypeVar("T")

__all__ = [
    "CHART_WINDOW",
    "DatabaseUnavailable",
    "OpsContext",
    "Sample",
    "Snapshot",
    "TargetStatus",
    "by_status",
    "describe_db_error",
    "is_open",
]

Factory = async_sessionmaker[AsyncSession]

CHART_WINDOW = timedelta(hours=1)
MAX_SAMPLES = 3600
SHOWN_BREAKERS = 50
"""The snapshot (and the status page) holds at most this many breakers, by name; the rest
are counted and listed by ``/api/breakers``, page by page."""
SHOWN_INCIDENTS = 50
"""The same bound for open incidents, newest first (``/api/incidents`` pages the rest)."""
SUMMARY_STATUSES = ("pending", "failed", "sent", "superseded")
READY_TIMEOUT = 2.0
"""Seconds a readiness probe waits for the database's answer, where the database may take
up to ``ALERTQ_DB_TIMEOUT`` to fail a statement on a silently dropped path. A healthy one
answers in about a millisecond; a prober with a shorter timeout (Kubernetes' default is
1 s) counts a slower answer as a failure by itself."""
READY_REUSE = timedelta(seconds=1)
"""How long a database check that succeeded answers later probes (never a failed one): a
probe flood, which needs no credentials, costs PostgreSQL one round trip a second."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One cached reading of the queue and the breakers."""

    stats: dict[str, Any]
    breakers: list[BreakerState]
    """The first :data:`SHOWN_BREAKERS` breakers by name."""
    open_incidents: list[IncidentView]
    """The newest :data:`SHOWN_INCIDENTS` open incidents."""
    collected_at: datetime
    counts: BreakerCounts
    """The totals behind both lists."""


@dataclass(slots=True)
class TargetStatus:
    """What is known of one Alertmanager: its last readiness check."""

    target: str
    ready: bool | None = None  # None: not checked yet
    error: str | None = None
    checked_at: datetime | None = None
    last_ready_at: datetime | None = None
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One point of the status page's chart."""

    at: datetime
    sent_total: float
    pending: int
    failed: int


class DatabaseUnavailable(Exception):
    """The database did not answer; the message is safe to show (no credentials, no SQL)."""


def is_open(state: BreakerState, now: datetime) -> bool:
    """Open (disabled) and not past its ``disabled_until``."""
    return state.disabled and (state.disabled_until is None or state.disabled_until > now)


def by_status(stats: dict[str, Any]) -> dict[str, int]:
    """The per-status row counts of :func:`alertq.ops.queue_stats`."""
    counts = {s: 0 for s in SUMMARY_STATUSES}
    counts.update({k: v for k, v in stats.items() if isinstance(v, int) and k != "total"})
    return counts


class OpsContext:
    """The state the ops server reads, kept fresh by :mod:`alertq.runner`.

    ``worker_stats`` (the in-process worker's counters) adds each target's last delivery
    error to the status page. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: Factory,
        *,
        breaker: CircuitBreaker | None = None,
        worker_stats: WorkerStats | None = None,
        clock: Clock = utcnow,
        probe_factory: Factory | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        # Readiness asks through its own connection (runner.py), so that a burst holding
        # every pooled connection does not read as "database unavailable".
        self.probe_factory = probe_factory or session_factory
        self.breaker = breaker or CircuitBreaker(settings, session_factory)
        self.worker_stats = worker_stats
        self.clock = clock
        self.targets = [target_key(u) for u in settings.alertmanager_urls]
        self.health = {t: TargetStatus(t) for t in self.targets}
        self.samples: deque[Sample] = deque(maxlen=MAX_SAMPLES)
        self.started_at = clock()
        self._snapshot: Snapshot | None = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._reads: dict[str, tuple[datetime, Any]] = {}
        self._read_locks: dict[str, asyncio.Lock] = {}
        self._db_check: asyncio.Task[str | None] | None = None
        self._db_ok_at: datetime | None = None

    # -- readiness

    async def check_database(self) -> str | None:
        """None when the database answers a trivial statement now (or did within
        :data:`READY_REUSE`), else why not (one line, safe to show). Never from the stats
        snapshot: it can be minutes old.

        Waits at most :data:`READY_TIMEOUT`. A check still running then (a silent network
        path) goes on in the background, bounded by ``ALERTQ_DB_TIMEOUT``, and the next
        probes wait for it rather than pile up checks of their own.
        """
        if self._db_ok_at is not None and self.clock() - self._db_ok_at < READY_REUSE:
            return None
        task = self._db_check
        if task is None or task.done():
            task = self._db_check = asyncio.create_task(self._ping(), name="alertq-db-check")
        done, _ = await asyncio.wait({task}, timeout=READY_TIMEOUT)
        if not done:
            return f"no answer within {READY_TIMEOUT:g}s"
        return task.result()

    async def _ping(self) -> str | None:
        self._db_ok_at = None
        try:
            await ops.ping(self.probe_factory)
        except (SQLAlchemyError, OSError) as exc:
            return describe_db_error(exc)
        self._db_ok_at = self.clock()
        return None

    # -- snapshot

    async def snapshot(self, max_age: float | None = None) -> Snapshot:
        """The cached snapshot if younger than ``max_age`` (default ``stats_cache_seconds``),
        else a fresh one. Concurrent callers share one refresh."""
        limit = self.settings.stats_cache_seconds if max_age is None else max_age
        current = self._snapshot
        if current is not None and self._age(current.collected_at) <= limit:
            return current
        async with self._lock:
            current = self._snapshot
            if current is not None and self._age(current.collected_at) <= limit:
                return current
            return await self._refresh()

    async def refresh(self) -> Snapshot:
        """Read the queue stats, breakers and open incidents now, and publish the gauges.

        Raises :class:`DatabaseUnavailable` when the database does not answer.
        """
        async with self._lock:
            return await self._refresh()

    def invalidate(self) -> None:
        """Forget the cached snapshot and shared reads (after a mutation), so the next
        read is fresh."""
        self._snapshot = None
        self._reads.clear()
        self._generation += 1

    async def shared_read(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``'s result, reused for ``stats_cache_seconds`` and shared by concurrent
        callers, like the snapshot. The status page's lists were read on every view, and
        unauthenticated views of a 150,000-row queue took the intake's p50 from 14 to
        672 ms (red-team pass 3). A failure is not kept."""
        async with self._read_locks.setdefault(key, asyncio.Lock()):
            hit = self._reads.get(key)
            if hit is not None and self._age(hit[0]) <= self.settings.stats_cache_seconds:
                return hit[1]  # type: ignore[no-any-return]
            generation = self._generation
            value = await read()
            if generation == self._generation:  # else a mutation raced this read
                self._reads[key] = (self.clock(), value)
            return value

    @property
    def cached(self) -> Snapshot | None:
        """The last snapshot, however old."""
        return self._snapshot

    def _age(self, at: datetime) -> float:
        return (self.clock() - at).total_seconds()

    async def _refresh(self) -> Snapshot:
        generation = self._generation
        try:
            stats = await ops.queue_stats(self.session_factory)
            breakers = await self.breaker.list_states(limit=SHOWN_BREAKERS)
            incidents = await self.breaker.list_incidents(limit=SHOWN_INCIDENTS)
            counts = await self.breaker.counts()
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(describe_db_error(exc)) from exc
        now = self.clock()
        metrics.set_queue_stats(by_status(stats), stats["oldest_due_age_seconds"], now.timestamp())
        # Per-breaker gauges of the shown ones; trips and resets set their own.
        metrics.set_breakers({b.name: is_open(b, now) for b in breakers}, counts.open_incidents)
        snap = Snapshot(stats, breakers, incidents, now, counts)
        if generation == self._generation:  # else a mutation raced this read: don't cache it
            self._snapshot = snap
        return snap

    # -- Alertmanager health and chart samples

    def record_health(self, results: Sequence[TargetHealth]) -> list[TargetStatus]:
        """Store readiness check results; returns the targets whose readiness changed."""
        now = self.clock()
        changed = []
        for result in results:
            status = self.health.setdefault(result.target, TargetStatus(result.target))
            if status.ready is not result.ready:
                changed.append(status)
            status.ready, status.error = result.ready, result.error
            status.checked_at, status.duration = now, result.duration
            if result.ready:
                status.last_ready_at = now
            metrics.set_alertmanager_up(result.target, result.ready, now.timestamp())
        return changed

    @property
    def any_ready(self) -> bool:
        return any(s.ready for s in self.health.values())

    def record_sample(self, snap: Snapshot) -> Sample:
        """Append a chart sample: the queue depth of ``snap`` and the sent-rows counter."""
        now = self.clock()
        sent = REGISTRY.get_sample_value("alertq_alerts_sent_total") or 0.0
        counts = by_status(snap.stats)
        sample = Sample(now, sent, counts["pending"], counts["failed"])
        self.samples.append(sample)
        while self.samples and now - self.samples[0].at > CHART_WINDOW:
            self.samples.popleft()
        return sample
