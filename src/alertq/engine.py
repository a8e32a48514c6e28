"""The worker: claims due alerts, delivers them, and decides what happens next.

Every delivery decision lives in this module: the retry and backoff policy
(:func:`backoff_delay`, :func:`decide`), per-fingerprint ordering (newest row wins), batch
splitting on a rejected payload, replica quorum and keep-alive.

One cycle of a delivery loop is three steps, and only the first and last touch the
database, each in its own short transaction:

1. **claim** up to ``batch_size`` due rows under a lease (``lease_seconds``, longer than
   the HTTP timeout), bumping their attempt count and fencing token;
2. **deliver** them outside any transaction, one POST per Alertmanager per batch;
3. **record** each outcome, fenced by the claim's token, so a late worker whose lease was
   taken over changes nothing.

A worker killed between 1 and 3 leaves leased rows that become due when the lease runs
out; the next claim takes them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.alerts import (
    BREAKER_FIRING_TYPE,
    BREAKER_RESOLVING_TYPE,
    KEEPALIVE_FACTOR,
    with_ends_at,
)
from alertq.config import DeliveryQuorum, Settings
from alertq.db import EnqueueListener, transaction
from alertq.delivery import AlertmanagerClient, ErrorClass, TargetResult
from alertq.driver import ClaimedAlert, get_alert_driver, get_breaker_driver

log = logging.getLogger("alertq.engine")

MAX_ALERTS_PER_POST = 256
MAX_RETRY_AFTER = 3600.0
MISCONFIGURED_FLOOR = 60.0
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- policy (pure)


class Verdict(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one row after one delivery attempt."""

    verdict: Verdict
    delivered_to: tuple[str, ...]
    next_attempt_at: datetime | None = None
    error: str | None = None
    reason: str | None = None
    """For ``failed``: ``permanent`` or ``max_attempts``."""


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with equal jitter: ``d/2 + U(0, d/2)``, ``d = base·2^(n-1)``.

    Jitter spreads retries of rows that failed together (an Alertmanager outage) so they do
    not return as one burst.
    """
    exp = min(cap, base * 2 ** max(0, attempts - 1))
    return float(exp / 2 + rng.uniform(0, exp / 2))


def decide(
    *,
    attempts: int,
    max_attempts: int,
    delivered_to: Sequence[str],
    results: Sequence[TargetResult],
    targets: Sequence[str],
    quorum: DeliveryQuorum,
    now: datetime,
    base: float,
    cap: float,
    rng: random.Random,
) -> Decision:
    """Decide a row's fate from this attempt's per-target ``results``.

    ``delivered_to`` are targets that accepted the row before; ``targets`` are all
    configured ones. ``any`` quorum: sent once one target has it; ``all``: once every
    target has it, retrying only the missing ones.
    """
    accepted = set(delivered_to) | {r.target for r in results if r.ok}
    done = tuple(t for t in targets if t in accepted)
    if (quorum is DeliveryQuorum.ANY and done) or (
        quorum is DeliveryQuorum.ALL and len(done) == len(targets)
    ):
        return Decision(Verdict.SENT, done)
    failures = [r for r in results if not r.ok]
    error = "; ".join(f"{r.target}: {r.error or r.response_text}" for r in failures)[:2000]
    permanent = [r for r in failures if r.error_class is ErrorClass.PERMANENT]
    if permanent:
        text = permanent[0].response_text or permanent[0].error or "rejected"
        return Decision(
            Verdict.FAILED,
            done,
            error=f"HTTP {permanent[0].status_code}: {text}"[:2000],
            reason="permanent",
        )
    if attempts >= max_attempts:
        error = error or "no outcome recorded: every lease expired (worker died mid-delivery?)"
        return Decision(Verdict.FAILED, done, error=error, reason="max_attempts")
    delay = backoff_delay(attempts, base, cap, rng)
    retry_after = max((r.retry_after or 0.0 for r in failures), default=0.0)
    delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    if any(r.error_class is ErrorClass.MISCONFIGURED for r in failures):
        delay = max(delay, min(MISCONFIGURED_FLOOR, cap))
    return Decision(
        Verdict.RETRY, done, next_attempt_at=now + timedelta(seconds=delay), error=error
    )


def newest_per_fingerprint(rows: Sequence[ClaimedAlert]) -> tuple[list[ClaimedAlert], list[int]]:
    """Split a claim into rows to deliver and older rows a newer same-label row replaces."""
    newest: dict[str, ClaimedAlert] = {}
    keep: list[ClaimedAlert] = []
    for row in rows:
        if row.fingerprint is None:
            keep.append(row)
        elif row.fingerprint not in newest or newest[row.fingerprint].id < row.id:
            newest[row.fingerprint] = row
    keep.extend(newest.values())
    keep.sort(key=lambda r: r.id)
    kept = {r.id for r in keep}
    return keep, [r.id for r in rows if r.id not in kept]


def chunk_rows(
    rows: Sequence[ClaimedAlert], limit: int = MAX_ALERTS_PER_POST
) -> list[list[ClaimedAlert]]:
    """Group rows into POST bodies of at most ``limit`` alerts, keeping claim order."""
    chunks: list[list[ClaimedAlert]] = []
    current: list[ClaimedAlert] = []
    size = 0
    for row in rows:
        n = len(row.payload)
        if current and size + n > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += n
    if current:
        chunks.append(current)
    return chunks


# --------------------------------------------------------------------------- keep-alive (pure)

KEEPALIVE_MAX_TICK = 5.0
KEEPALIVE_MIN_TICK = 0.05
KEEPALIVE_BATCH = 500
FIRING_ALERT_TYPE = BREAKER_FIRING_TYPE
RESOLVING_ALERT_TYPE = BREAKER_RESOLVING_TYPE


def keepalive_tick(resend_interval: float) -> float:
    """Seconds between keep-alive passes: a fifth of ``resend_interval``, at most 5 s.

    A pass runs every tick and re-arms a row once its last send is ``resend_interval -
    tick`` old, so consecutive sends of a kept-alive alert are never more than
    ``resend_interval`` apart (plus the time to deliver them).
    """
    return max(KEEPALIVE_MIN_TICK, min(resend_interval / 5, KEEPALIVE_MAX_TICK))


@dataclass(frozen=True, slots=True)
class KeepaliveDecision:
    """Whether to re-send an incident's alert row now, and with which ``endsAt``."""

    rearm: bool
    reason: str
    ends_at: datetime | None = None
    """A firing alert's fresh ``endsAt``; None keeps the payload as it is (resolving)."""


def keepalive_decision(
    *,
    alert_type: str | None,
    status: str,
    sent_at: datetime | None,
    last_attempt_at: datetime | None,
    incident_resolved: bool,
    incident_resolved_at: datetime | None,
    now: datetime,
    resend_interval: float,
    resolved_retention: float,
) -> KeepaliveDecision:
    """Decide whether an incident's current alert row is re-sent, as Prometheus would.

    * A firing row (``disable``) of an open incident: every ``resend_interval``, with
      ``endsAt = now + 4 × resend_interval``, so Alertmanager never resolves it by itself
      and a restarted Alertmanager learns it again within one interval.
    * A resolving row (``enable``): likewise, while the resolution is younger than
      ``resolved_retention``; then never again.
    * A firing row of a resolved incident: never (it would re-open the alert).
    * A row still pending or leased: left alone (it is on its way already).

    The last send is ``sent_at`` for a sent row, the last attempt for a failed one.
    """
    if status == "sent":
        last = sent_at
    elif status == "failed":
        last = last_attempt_at
    else:
        return KeepaliveDecision(False, f"row is {status}")
    due_age = resend_interval - keepalive_tick(resend_interval)
    if last is not None and (now - last).total_seconds() < due_age:
        return KeepaliveDecision(False, "sent recently")
    if alert_type == FIRING_ALERT_TYPE:
        if incident_resolved:
            return KeepaliveDecision(False, "incident resolved: its firing alert is final")
        ends_at = now + timedelta(seconds=KEEPALIVE_FACTOR * resend_interval)
        return KeepaliveDecision(True, "incident open", ends_at)
    if alert_type == RESOLVING_ALERT_TYPE:
        if not incident_resolved or incident_resolved_at is None:
            return KeepaliveDecision(False, "incident not resolved")
        if (now - incident_resolved_at).total_seconds() >= resolved_retention:
            return KeepaliveDecision(False, "resolved longer ago than the retention")
        return KeepaliveDecision(True, "recently resolved")
    return KeepaliveDecision(False, f"not a breaker alert ({alert_type})")


# --------------------------------------------------------------------------- worker


class ClientFactory(Protocol):
    def __call__(self, settings: Settings) -> AlertmanagerClient: ...


@dataclass
class WorkerStats:
    """Counters of one worker, for tests, benchmarks and the status page."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    superseded: int = 0
    reclaimed: int = 0
    fenced: int = 0
    posts: int = 0
    keepalives: int = 0
    last_error_by_target: dict[str, str] = field(default_factory=dict)


class AlertWorker:
    """Delivers queued alerts with ``settings.concurrency`` loops.

    Each loop has its own Alertmanager client (one HTTP client per target per loop).
    ``clock`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        client_factory: ClientFactory = AlertmanagerClient.from_settings,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.client_factory = client_factory
        self.clock = clock
        self.rng = rng or random.Random()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        self._lease = timedelta(seconds=settings.lease_seconds)

    # -- public API

    def wake(self) -> None:
        """Make idle loops look for work now (called on NOTIFY)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Run until ``stop`` is set (then finish in-flight deliveries), or, with ``drain``,
        until no row is due or leased."""
        listener: EnqueueListener | None = None
        if not self.settings.is_sqlite:
            listener = EnqueueListener(self.settings.database_url, self.wake)
            await listener.start()
        loops_done = asyncio.Event()
        keepalive = asyncio.create_task(self._keepalive_loop(loops_done), name="alertq-keepalive")
        try:
            loops = [
                asyncio.create_task(self._loop(i, stop, drain), name=f"alertq-loop-{i}")
                for i in range(self.settings.concurrency)
            ]
            await asyncio.gather(*loops)
        finally:
            loops_done.set()
            await keepalive
            if listener is not None:
                await listener.stop()

    async def run_once(self, client: AlertmanagerClient) -> int:
        """One claim → deliver → record cycle; returns how many rows were claimed."""
        now = self.clock()
        token = secrets.randbits(62) or 1
        async with transaction(self.session_factory) as session:
            rows = await get_alert_driver(session).alerts_claim(
                now, self.settings.batch_size, now + self._lease, token, self.worker_id
            )
        metrics.CLAIMS.inc()
        if not rows:
            return 0
        self.stats.claimed += len(rows)
        reclaimed = sum(r.reclaimed for r in rows)
        if reclaimed:
            self.stats.reclaimed += reclaimed
            metrics.LEASE_RECLAIMS.inc(reclaimed)
            log.warning("reclaimed %d rows whose lease had expired", reclaimed)
        deliver, stale = newest_per_fingerprint(rows)
        # A row whose leases all expired unrecorded may be what kills workers: not again.
        # With no results, decide() dead-letters it.
        poison = {r.id for r in deliver if r.reclaimed and r.attempts > r.max_attempts}
        results = await self._deliver_all(client, [r for r in deliver if r.id not in poison])
        await self._record(deliver, stale, results, token, client.targets)
        return len(rows)

    # -- loops

    async def _loop(self, index: int, stop: asyncio.Event, drain: bool) -> None:
        client = self.client_factory(self.settings)
        try:
            while not stop.is_set():
                try:
                    claimed = await self.run_once(client)
                except Exception:
                    # A database outage: keep going, the next claim reconnects.
                    log.exception("delivery cycle failed; retrying after the poll interval")
                    claimed = 0
                    await self._sleep(stop, self.settings.poll_interval)
                    continue
                if claimed >= self.settings.batch_size:
                    continue
                if claimed:
                    continue
                delay = await self._idle_delay(drain)
                if delay is None:
                    return
                await self._sleep(stop, delay)
        finally:
            await client.aclose()

    async def _idle_delay(self, drain: bool) -> float | None:
        """How long to wait for work; None when draining and nothing is due or leased."""
        now = self.clock()
        try:
            async with transaction(self.session_factory) as session:
                counts = await get_alert_driver(session).alerts_counts(now)
        except Exception:
            log.exception("could not read queue counts")
            return self.settings.poll_interval
        if drain and counts.due == 0 and counts.leased == 0:
            return None
        delay = self.settings.poll_interval
        if counts.next_due_at is not None:
            delay = min(delay, max(0.0, (counts.next_due_at - now).total_seconds()))
        return delay

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            return
        stopper = asyncio.ensure_future(stop.wait())
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {stopper, waker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (stopper, waker):
                task.cancel()
            self._wake.clear()

    # -- deliver

    async def _deliver_all(
        self, client: AlertmanagerClient, rows: Sequence[ClaimedAlert]
    ) -> dict[int, list[TargetResult]]:
        """POST every row to each target that has not accepted it yet."""
        targets = client.targets
        groups: dict[tuple[str, ...], list[ClaimedAlert]] = defaultdict(list)
        for row in rows:
            missing = tuple(t for t in targets if t not in row.delivered_to)
            groups[missing or tuple(targets)].append(row)
        jobs = [
            self._deliver_chunk(client, chunk, list(missing))
            for missing, group in groups.items()
            for chunk in chunk_rows(group)
        ]
        out: dict[int, list[TargetResult]] = {}
        for part in await asyncio.gather(*jobs):
            out.update(part)
        return out

    async def _deliver_chunk(
        self, client: AlertmanagerClient, rows: list[ClaimedAlert], targets: list[str]
    ) -> dict[int, list[TargetResult]]:
        alerts = [alert for row in rows for alert in row.payload]
        results = await client.post_alerts(alerts, targets)
        self.stats.posts += 1
        self._observe(rows, results)
        out = {row.id: list(results) for row in rows}
        rejected = [r.target for r in results if r.error_class is ErrorClass.PERMANENT]
        if rejected and len(rows) > 1:
            # One bad row fails the whole batch: split it until the culprit stands alone.
            half = len(rows) // 2
            parts = await asyncio.gather(
                self._deliver_chunk(client, rows[:half], rejected),
                self._deliver_chunk(client, rows[half:], rejected),
            )
            for part in parts:
                for row_id, sub in part.items():
                    by_target = {r.target: r for r in sub}
                    out[row_id] = [by_target.get(r.target, r) for r in out[row_id]]
        return out

    def _observe(self, rows: Sequence[ClaimedAlert], results: Sequence[TargetResult]) -> None:
        ids = _id_ranges([r.id for r in rows])
        for r in results:
            outcome = "success" if r.ok else str(r.error_class)
            metrics.DELIVERIES.labels(r.target, outcome).inc()
            metrics.DELIVERY_LATENCY.labels(r.target).observe(r.duration)
            if r.ok:
                self.stats.last_error_by_target.pop(r.target, None)
                log.info(
                    "delivered rows=%s target=%s status=%s duration_ms=%.1f",
                    ids,
                    r.target,
                    r.status_code,
                    r.duration * 1000,
                )
            else:
                self.stats.last_error_by_target[r.target] = r.error or ""
                log.warning(
                    "delivery failed rows=%s target=%s status=%s class=%s duration_ms=%.1f "
                    "error=%s",
                    ids,
                    r.target,
                    r.status_code,
                    r.error_class,
                    r.duration * 1000,
                    r.error,
                )

    # -- record

    async def _record(
        self,
        rows: Sequence[ClaimedAlert],
        stale: list[int],
        results: dict[int, list[TargetResult]],
        token: int,
        targets: list[str],
    ) -> None:
        now = self.clock()
        decisions = {
            row.id: decide(
                attempts=row.attempts,
                max_attempts=row.max_attempts,
                delivered_to=row.delivered_to,
                results=results.get(row.id, []),
                targets=targets,
                quorum=self.settings.delivery_quorum,
                now=now,
                base=self.settings.backoff_base,
                cap=self.settings.backoff_cap,
                rng=self.rng,
            )
            for row in rows
        }
        by_id = {row.id: row for row in rows}
        sent: dict[tuple[str, ...], list[int]] = defaultdict(list)
        retry: dict[tuple[datetime, str, tuple[str, ...]], list[int]] = defaultdict(list)
        failed: dict[tuple[str, tuple[str, ...]], list[int]] = defaultdict(list)
        for row_id, d in decisions.items():
            if d.verdict is Verdict.SENT:
                sent[d.delivered_to].append(row_id)
            elif d.verdict is Verdict.RETRY:
                assert d.next_attempt_at is not None
                retry[(d.next_attempt_at, d.error or "", d.delivered_to)].append(row_id)
            else:
                failed[(d.error or "", d.delivered_to)].append(row_id)

        expected = len(rows) + len(stale)
        applied: list[int] = []
        async with transaction(self.session_factory) as session:
            driver = get_alert_driver(session)
            if stale:
                applied += await driver.alerts_mark_superseded(
                    stale, token, "superseded by a newer alert with the same labels"
                )
            sent_ids: list[int] = []
            for delivered, ids in sent.items():
                got = await driver.alerts_mark_sent(ids, token, now, list(delivered))
                sent_ids += got
            applied += sent_ids
            for (at, error, delivered), ids in retry.items():
                applied += await driver.alerts_schedule_retry(
                    ids, token, at, error, list(delivered)
                )
            for (error, delivered), ids in failed.items():
                applied += await driver.alerts_mark_failed(ids, token, error, list(delivered))
            retried_fps = [
                by_id[i].fingerprint
                for ids in retry.values()
                for i in ids
                if by_id[i].fingerprint is not None
            ]
            superseded_later = await driver.alerts_supersede_older(
                [fp for fp in retried_fps if fp is not None], now
            )
            for row_id in sent_ids:
                row = by_id[row_id]
                if row.incident_id is not None and row.alert_type == "disable":
                    await driver.mark_incident_alert_sent(
                        row.incident_id, now, _response_summary(results.get(row_id, []))
                    )
            await self._record_incident_responses(session, rows, set(applied), results)
        self._count(decisions, set(applied), stale, superseded_later, by_id, now)
        lost = expected - len(applied)
        if lost:
            self.stats.fenced += lost
            metrics.LEASE_LOST.inc(lost)
            log.warning("%d outcomes not recorded: their lease was taken over", lost)

    def _count(
        self,
        decisions: dict[int, Decision],
        applied: set[int],
        stale: list[int],
        superseded_later: int,
        by_id: dict[int, ClaimedAlert],
        now: datetime,
    ) -> None:
        for row_id, d in decisions.items():
            if row_id not in applied:
                continue
            if d.verdict is Verdict.SENT:
                self.stats.sent += 1
                metrics.ROWS_SENT.inc()
                metrics.ENQUEUE_TO_SENT.observe(
                    max(0.0, (now - by_id[row_id].created_at).total_seconds())
                )
            elif d.verdict is Verdict.RETRY:
                self.stats.retried += 1
                metrics.ROWS_RETRIED.inc()
            else:
                self.stats.failed += 1
                metrics.ROWS_DEAD_LETTERED.labels(d.reason or "unknown").inc()
                log.error("row %d failed (%s): %s", row_id, d.reason, d.error)
        superseded = len([i for i in stale if i in applied]) + superseded_later
        if superseded:
            self.stats.superseded += superseded
            metrics.ROWS_SUPERSEDED.inc(superseded)

    # -- keep-alive

    async def keepalive_once(self) -> int:
        """One keep-alive pass; returns how many rows were re-armed.

        Keep-alives reuse rows, never insert them. An incident has at most two queue rows:
        its firing row (``disable``, enqueued on trip) and its resolving row (``enable``,
        enqueued on resolution). A re-send re-arms the incident's *current* row once it is
        sent or failed and its last send is about ``resend_interval`` old: fresh
        ``endsAt`` (firing), ``pending``, due now, attempts 0, no target delivered,
        ``created_at`` now. It then goes through the same claim, per-fingerprint ordering
        and fencing as any row. So however long an incident stays open, it never has more
        than 2 rows (and a purge by age never deletes an open incident's live row).

        The incident rows are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and their
        ``resolved`` re-checked in this transaction, and a row is only re-armed while no
        newer row has its labels: a firing row can never be re-armed past its resolution.
        """
        now = self.clock()
        interval = self.settings.resend_interval
        retention = self.settings.resolved_retention
        due_age = interval - keepalive_tick(interval)
        rearmed = 0
        async with transaction(self.session_factory) as session:
            driver = get_breaker_driver(session)
            candidates = await driver.keepalive_lock_candidates(
                now - timedelta(seconds=due_age),
                now - timedelta(seconds=retention),
                KEEPALIVE_BATCH,
                firing_type=FIRING_ALERT_TYPE,
                resolving_type=RESOLVING_ALERT_TYPE,
            )
            for c in candidates:
                decision = keepalive_decision(
                    alert_type=c.alert_type,
                    status=c.status,
                    sent_at=c.sent_at,
                    last_attempt_at=c.last_attempt_at,
                    incident_resolved=c.incident_resolved,
                    incident_resolved_at=c.incident_resolved_at,
                    now=now,
                    resend_interval=interval,
                    resolved_retention=retention,
                )
                if not decision.rearm:
                    continue
                payload = c.payload
                if decision.ends_at is not None:
                    payload = with_ends_at(payload, decision.ends_at)
                if await driver.alerts_rearm(c.id, payload, now):
                    rearmed += 1
            if rearmed:
                await get_alert_driver(session).notify_enqueued()
        if rearmed:
            self.stats.keepalives += rearmed
            metrics.KEEPALIVES.inc(rearmed)
            log.debug("keep-alive re-armed %d alert rows", rearmed)
            self.wake()
        return rearmed

    async def _keepalive_loop(self, done: asyncio.Event) -> None:
        """Run :meth:`keepalive_once` every :func:`keepalive_tick` until ``done``."""
        tick = keepalive_tick(self.settings.resend_interval)
        while not done.is_set():
            try:
                await self.keepalive_once()
            except Exception:
                log.exception("keep-alive pass failed; retrying in %.1fs", tick)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), tick)

    async def _record_incident_responses(
        self,
        session: AsyncSession,
        rows: Sequence[ClaimedAlert],
        applied: set[int],
        results: dict[int, list[TargetResult]],
    ) -> None:
        """Store Alertmanager's answer to each delivered incident row on its incident."""
        driver = get_breaker_driver(session)
        for row in rows:
            if row.incident_id is not None and row.id in applied and results.get(row.id):
                await driver.incident_record_response(
                    row.incident_id, _response_summary(results[row.id])
                )


def _response_summary(results: Sequence[TargetResult]) -> str:
    return "; ".join(
        f"{r.target}: {'accepted' if r.ok else r.error} (HTTP {r.status_code})" for r in results
    )[:1000]


def _id_ranges(ids: Sequence[int]) -> str:
    """Compact row ids for a log line: ``1-4,9``."""
    if not ids:
        return ""
    ordered = sorted(ids)
    runs: list[list[int]] = [[ordered[0], ordered[0]]]
    for i in ordered[1:]:
        if i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


__all__ = [
    "AlertWorker",
    "Decision",
    "KeepaliveDecision",
    "Verdict",
    "WorkerStats",
    "backoff_delay",
    "chunk_rows",
    "decide",
    "keepalive_decision",
    "keepalive_tick",
    "newest_per_fingerprint",
]
