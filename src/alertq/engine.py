"""The worker: claims due alerts, delivers them, and decides what happens next.

The loop applies the pure policy of :mod:`alertq.policy` (retry, backoff, ordering,
batches) and decides what only it can see: batch splitting on a rejected payload, replica
quorum and poison rows. Keep-alive is its own service (:mod:`alertq.keepalive`), which the
worker runs beside its loops; feature bookkeeping after a record goes through record hooks
(:mod:`alertq.hooks`).

One cycle of a delivery loop is three steps, and only the first and last touch the
database, each in a short transaction:

1. **claim** up to ``batch_size`` due rows under a lease (``lease_seconds``, longer than
   the HTTP timeout), bumping their attempt count and fencing token;
2. **deliver** them outside any transaction, one POST per Alertmanager per batch;
3. **record** each outcome, fenced by the claim's token, so a late worker whose lease was
   taken over changes nothing.

While a loop has work, the record's transaction also claims the next batch (step 1 of the
next cycle), so a busy loop commits once per batch, not twice. A loop told to stop claims
nothing more and hands back a batch it claimed but will not deliver (``alerts_release``).

An idle worker waits for a wake-up (NOTIFY, the SQLite change watch, a producer of its own
process). Only one loop, the lookout, also looks every ``poll_interval`` for what nothing
announces (a retry coming due, a lease running out), and that look is one read; the other
loops wait to be woken, and look as it does only while it is busy. Its look that finds
due rows wakes them; on PostgreSQL so does any loop's full claim (a backlog), and on SQLite
the claimer's commits do, through the change watch.

A worker killed between 1 and 3 leaves leased rows that become due when the lease runs
out; the next claim takes them back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics, wakeup
from alertq.breaker import INCIDENT_RECORD_HOOK
from alertq.config import Settings
from alertq.db import (
    DatabaseOutage,
    EnqueueListener,
    SqliteChangeWatcher,
    is_database_error,
    read_transaction,
    transaction,
)
from alertq.delivery import AlertmanagerClient, ErrorClass, TargetResult
from alertq.driver import (
    SUPERSEDED_REASON,
    ClaimedAlert,
    Outcome,
    QueueCounts,
    get_queue_driver,
)
from alertq.hooks import Recorded, RecordHook
from alertq.keepalive import KeepaliveService
from alertq.models import AlertStatus, Clock, utcnow
from alertq.policy import (
    Decision,
    Verdict,
    chunk_rows,
    decide,
    newest_per_fingerprint,
)
from alertq.retention import RetentionService

log = logging.getLogger("alertq.engine")

DRAIN_UNREACHABLE_LIMIT = 15.0
"""Seconds ``run(drain=True)`` waits for an unreachable database before giving up."""

_NO_RESULTS: tuple[TargetResult, ...] = ()
_PENDING = AlertStatus.PENDING.value
_SENT = AlertStatus.SENT.value
_FAILED = AlertStatus.FAILED.value
_SUPERSEDED = AlertStatus.SUPERSEDED.value

# --------------------------------------------------------------------------- worker


class ClientFactory(Protocol):
    def __call__(self, settings: Settings) -> AlertmanagerClient: ...


@dataclass
class WorkerStats:
    """Counters of one worker, for tests, benchmarks and the status page."""

    claims: int = 0
    """Claim statements committed, empty ones included."""
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    superseded: int = 0
    reclaimed: int = 0
    fenced: int = 0
    posts: int = 0
    keepalives: int = 0
    idle_waits: int = 0
    """How often a loop found nothing to do and went to wait (for a wake-up or a poll)."""
    idle_looks: int = 0
    """How often an idle loop's wait ran out and it read the queue's counts before claiming
    (the lookout; another loop only while the lookout is busy)."""
    left_to_cycling_loop: int = 0
    """How often an idle loop went back to wait, leaving new rows to a loop in a cycle."""
    last_error_by_target: dict[str, str] = field(default_factory=dict)


class AlertWorker:
    """Delivers queued alerts with ``settings.delivery_loops(dedicated=dedicated)`` loops
    (``dedicated``: the process does nothing else, as ``alertq worker``).

    Each loop has its own Alertmanager client (one HTTP client per target per loop).
    ``clock`` and ``rng`` are injectable for tests. ``record_hooks`` run in each record
    transaction (by default the breaker's incident bookkeeping); :attr:`keepalive` is the
    keep-alive service :meth:`run` runs beside the loops. While the database cannot be
    reached the loops back off (capped) and :attr:`outage` logs a line when it goes down,
    one a minute while it stays down and one when it is back.
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
        record_hooks: Sequence[RecordHook] = (INCIDENT_RECORD_HOOK,),
        outage: DatabaseOutage | None = None,
        drain_unreachable_limit: float = DRAIN_UNREACHABLE_LIMIT,
        dedicated: bool = False,
    ) -> None:
        self.settings = settings
        self.loops = settings.delivery_loops(dedicated=dedicated)
        self.session_factory = session_factory
        self.client_factory = client_factory
        self.clock = clock
        self.rng = rng or random.Random()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self._wake = asyncio.Event()
        # SQLite has one writer: a woken idle loop leaves new rows to a loop already in a
        # cycle, whose next claim takes them, instead of contending with it for the lock
        # with a claim of its own (unless that loop's last claim was full: a backlog).
        self._one_claimer = settings.is_sqlite and self.loops > 1
        # A full claim wakes the loops waiting for a wake-up, except on SQLite: there the
        # claimer's commits wake them through the change watch, and waking them at every
        # full claim too cost 9% of a drain's rate (docs/benchmarks.md, section 3).
        self._wake_on_backlog = self.loops > 1 and not settings.is_sqlite
        self._lookout_idle = False
        """The lookout is idle (waiting, or looking and finding nothing to claim), and no
        wake-up has come since: the others need not look."""
        self._cycling = 0
        self._full = False
        self._left = 0
        """How often an idle loop left its turn to a cycling one; a claim notes the count."""
        self._lease = timedelta(seconds=settings.lease_seconds)
        self.record_hooks = tuple(record_hooks)
        self.outage = outage or DatabaseOutage(settings.database_url)
        self.drain_unreachable_limit = drain_unreachable_limit
        self.keepalive = KeepaliveService(
            settings,
            session_factory,
            clock=clock,
            on_rearm=self._on_keepalive,
            outage=self.outage,
        )
        self.retention = RetentionService(
            settings, session_factory, clock=clock, outage=self.outage
        )

    # -- public API

    def wake(self) -> None:
        """Make idle loops look for work now (called on NOTIFY)."""
        self._wake_all()

    def _wake_all(self) -> None:
        self._lookout_idle = False  # the lookout is about to be busy: the others look
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Run until ``stop`` is set (then finish in-flight deliveries), or, with ``drain``,
        until no row is due or leased.

        With ``drain``, a database that stays unreachable for ``drain_unreachable_limit``
        seconds raises :class:`alertq.db.DatabaseUnreachable` (one line, password hidden).
        """
        listener: EnqueueListener | SqliteChangeWatcher
        if self.settings.is_sqlite:
            listener = SqliteChangeWatcher(
                self.settings.database_url, self.wake, self.settings.sqlite_wake_interval
            )
        else:
            listener = EnqueueListener(
                self.settings.database_url, self.wake, timeout=self.settings.db_timeout
            )
        await listener.start()
        log.info(
            "worker %s: %d delivery loop%s, batch %d",
            self.worker_id,
            self.loops,
            "" if self.loops == 1 else "s",
            self.settings.batch_size,
        )
        # A producer of this process (the relay, enqueue_alert) wakes the loops directly.
        unsubscribe = wakeup.subscribe(_threadsafe(self.wake))
        loops_done = asyncio.Event()
        keepalive = asyncio.create_task(self.keepalive.run(loops_done), name="alertq-keepalive")
        # Not while draining: a drain delivers what is queued and exits.
        retention = (
            None
            if drain
            else asyncio.create_task(self.retention.run(loops_done), name="alertq-retention")
        )
        try:
            loops = [
                asyncio.create_task(self._loop(i, stop, drain), name=f"alertq-loop-{i}")
                for i in range(self.loops)
            ]
            try:
                await asyncio.gather(*loops)
            except BaseException:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                raise
        finally:
            loops_done.set()
            unsubscribe()
            await keepalive
            if retention is not None:
                await retention
            await listener.stop()

    async def run_once(self, client: AlertmanagerClient) -> int:
        """One claim → deliver → record cycle; returns how many rows were claimed."""
        batch = await self._claim()
        if batch.rows:
            await self._process(client, batch, claim_next=_never)
        return len(batch.rows)

    # -- claim

    async def _claim(self) -> _Batch:
        """Claim a batch in a transaction of its own (the first cycle, or after an idle wait)."""
        async with transaction(self.session_factory) as session:
            batch = await self._claim_in(session)
        self._claimed(batch)
        return batch

    async def _claim_in(self, session: AsyncSession) -> _Batch:
        """Lease up to ``batch_size`` due rows in the caller's transaction."""
        now = self.clock()
        token = secrets.randbits(62) or 1
        rows = await get_queue_driver(session).alerts_claim(
            now, self.settings.batch_size, now + self._lease, token, self.worker_id
        )
        return _Batch(rows, token, self._left)

    def _claimed(self, batch: _Batch) -> None:
        """Counters of a committed claim."""
        metrics.CLAIMS.inc()
        self.stats.claims += 1
        rows = batch.rows
        if not rows:
            return
        self.stats.claimed += len(rows)
        reclaimed = sum(r.reclaimed for r in rows)
        if reclaimed:
            self.stats.reclaimed += reclaimed
            metrics.LEASE_RECLAIMS.inc(reclaimed)
            log.warning("reclaimed %d rows whose lease had expired", reclaimed)

    async def _release(self, batch: _Batch) -> None:
        """Hand back a claimed batch that will not be delivered (the worker is stopping)."""
        try:
            async with transaction(self.session_factory) as session:
                await get_queue_driver(session).alerts_release(
                    [r.id for r in batch.rows], batch.token, self.clock()
                )
        except Exception:
            # Not lost: the rows come back when their lease runs out.
            log.warning(
                "could not release %d claimed rows; their lease will expire", len(batch.rows)
            )

    async def _process(
        self, client: AlertmanagerClient, batch: _Batch, claim_next: Callable[[], bool]
    ) -> _Batch | None:
        """Deliver a claimed batch and record it; the record's transaction also claims the
        next batch when ``claim_next()`` says so, and returns it (None otherwise)."""
        deliver, stale = newest_per_fingerprint(batch.rows)
        # A row whose leases all expired unrecorded may be what kills workers: not again.
        # With no results, decide() dead-letters it.
        poison = {r.id for r in deliver if r.reclaimed and r.attempts > r.max_attempts}
        results = await self._deliver_all(client, [r for r in deliver if r.id not in poison])
        return await self._record(deliver, stale, results, batch.token, client.targets, claim_next)

    # -- loops

    async def _loop(self, index: int, stop: asyncio.Event, drain: bool) -> None:
        client = self.client_factory(self.settings)
        # The batch the last record's transaction claimed: delivered next, with no claim
        # transaction of its own (one commit per cycle instead of two).
        carried: _Batch | None = None
        # Loop 0 looks for unannounced work while idle; a drain needs every loop to look.
        lookout = index == 0 or drain
        # The last idle wait ran out with nothing waking the loop: read before claiming.
        waited_out = False

        def claim_next() -> bool:
            return not stop.is_set()

        try:
            while not stop.is_set():
                if carried is None and self._leave_to_cycling_loop():
                    self._left += 1
                    self.stats.left_to_cycling_loop += 1
                    await self._sleep(stop, self.settings.poll_interval)
                    continue
                delay: float | None = None
                backoff: float | None = None
                # The wait ran out: one read, not a claim and a read (it finds nothing most
                # times), and a claim only when rows are due.
                looked = waited_out and carried is None
                if looked:
                    waited_out = False
                    try:
                        counts = await self._counts()
                    except Exception as exc:
                        await self._sleep(stop, self._cycle_failed(exc, drain))
                        continue
                    self.stats.idle_looks += 1
                    self.outage.recovered()
                    if counts.due == 0:
                        delay = self._delay_after(counts, drain)
                        if delay is None:
                            self._wake_all()
                            return
                        self.stats.idle_waits += 1
                        waited_out = await self._wait(stop, delay, lookout)
                        continue
                self._cycling += 1
                try:
                    batch = carried if carried is not None else await self._claim()
                    carried = None
                    if batch.rows:
                        self._full = len(batch.rows) >= self.settings.batch_size
                        if lookout:
                            self._lookout_idle = False
                        if looked and self.loops > 1:
                            # Work nothing announced, and this loop goes busy with it: the
                            # others take the rest, or wait with a timeout meanwhile. (Not
                            # when the claim found the due rows blocked by labels in flight.)
                            self._wake_all()
                        elif self._full and self._wake_on_backlog:
                            self._wake_all()  # a backlog: the loops waiting to be woken too
                        carried = await self._process(client, batch, claim_next)
                    elif lookout:
                        delay = await self._idle_delay(drain)
                    else:
                        # Used only while the lookout is busy (then this loop looks too).
                        delay = self.settings.poll_interval
                except Exception as exc:
                    carried = None  # rolled back with the record, or never claimed
                    backoff = self._cycle_failed(exc, drain)
                finally:
                    self._cycling -= 1
                if backoff is not None:
                    await self._sleep(stop, backoff)
                    continue
                self.outage.recovered()
                # A commit that this loop's claim may not have seen was left to it: look again.
                if batch.rows or self._left_to_this_loop(batch):
                    continue
                if delay is None:
                    self._wake_all()  # a loop that left its work to this one: drained too
                    return
                self.stats.idle_waits += 1
                waited_out = await self._wait(stop, delay, lookout)
        finally:
            if carried is not None and carried.rows:
                await self._release(carried)
            await client.aclose()

    def _leave_to_cycling_loop(self) -> bool:
        """Whether this idle loop leaves new rows to another loop's next claim (SQLite)."""
        return self._one_claimer and self._cycling > 0 and not self._full

    def _left_to_this_loop(self, batch: _Batch) -> bool:
        """Whether an idle loop left its turn to this one after ``batch``'s (empty) claim
        began: the commit that woke it may be one that claim did not see."""
        return self._one_claimer and self._left != batch.left

    async def _idle_delay(self, drain: bool) -> float | None:
        """How long to wait for work; None when draining and nothing is due or leased."""
        return self._delay_after(await self._counts(), drain)

    async def _counts(self) -> QueueCounts:
        async with read_transaction(self.session_factory) as session:
            return await get_queue_driver(session).alerts_counts(self.clock())

    def _delay_after(self, counts: QueueCounts, drain: bool) -> float | None:
        """The wait ``counts`` call for: the poll interval, or less when a row comes due
        sooner; None when draining and nothing is due or leased."""
        if drain and counts.due == 0 and counts.leased == 0:
            return None
        delay = self.settings.poll_interval
        if counts.next_due_at is not None:
            delay = min(delay, max(0.0, (counts.next_due_at - self.clock()).total_seconds()))
        return delay

    def _cycle_failed(self, exc: Exception, drain: bool) -> float:
        """Seconds to wait after a failed cycle; raises when a drain should give up."""
        if not is_database_error(exc):
            log.exception("delivery cycle failed; retrying after the poll interval")
            return self.settings.poll_interval
        # The next claim reconnects; rows leased by a cycle that failed come back when
        # their lease runs out.
        self.outage.failed(exc)
        if drain and self.outage.down_for() >= self.drain_unreachable_limit:
            raise self.outage.error() from exc
        return self.outage.backoff(self.settings.poll_interval)

    async def _wait(self, stop: asyncio.Event, delay: float, lookout: bool) -> bool:
        """An idle loop's wait: ``delay`` for the lookout; for the others, until woken
        while the lookout waits too, else ``delay`` (one of them looks while it is busy).
        Returns True when it ran out with nothing waking the loop."""
        if lookout:
            self._lookout_idle = True  # until a wake-up, or a claim that finds rows
            return await self._sleep(stop, delay)
        return await self._sleep(stop, None if self._lookout_idle else delay)

    async def _sleep(self, stop: asyncio.Event, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: no limit) or until woken or stopped; True if it ran out."""
        if seconds is not None and seconds <= 0:
            return False
        stopper = asyncio.ensure_future(stop.wait())
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait(
                {stopper, waker}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (stopper, waker):
                task.cancel()
            self._wake.clear()
        return not done

    # -- deliver

    async def _deliver_all(
        self, client: AlertmanagerClient, rows: Sequence[ClaimedAlert]
    ) -> dict[int, Sequence[TargetResult]]:
        """POST every row to each target that has not accepted it yet."""
        targets = client.targets
        groups: dict[tuple[str, ...], list[ClaimedAlert]] = defaultdict(list)
        everyone = tuple(targets)
        for row in rows:
            # Usually no target has the row yet: skip the per-target walk.
            if row.delivered_to:
                missing = tuple(t for t in targets if t not in row.delivered_to)
                groups[missing or everyone].append(row)
            else:
                groups[everyone].append(row)
        jobs = [
            self._deliver_chunk(client, chunk, list(missing))
            for missing, group in groups.items()
            for chunk in chunk_rows(group)
        ]
        out: dict[int, Sequence[TargetResult]] = {}
        for part in await asyncio.gather(*jobs):
            out.update(part)
        return out

    async def _deliver_chunk(
        self, client: AlertmanagerClient, rows: list[ClaimedAlert], targets: list[str]
    ) -> dict[int, Sequence[TargetResult]]:
        # The stored payloads are JSON arrays: join their elements, decode nothing.
        body = "[" + ",".join(_array_items(row.payload_json) for row in rows) + "]"
        results = tuple(await client.post_raw(body.encode(), targets))
        self.stats.posts += 1
        self._observe(rows, results)
        # One shared tuple: rows with the same results share one decision in _record.
        out: dict[int, Sequence[TargetResult]] = {row.id: results for row in rows}
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

    def _decide_all(
        self,
        rows: Sequence[ClaimedAlert],
        results: dict[int, Sequence[TargetResult]],
        targets: list[str],
        now: datetime,
    ) -> dict[int, Decision]:
        """:func:`decide` for every row, once per distinct input where that is exact.

        The rows of one POST share their results, so a cycle of 256 rows usually needs one
        call. A retry is decided per row all the same: each gets its own jitter.
        """
        settings = self.settings
        cache: dict[tuple[int, int, tuple[str, ...], int], Decision] = {}
        out: dict[int, Decision] = {}
        for row in rows:
            got = results.get(row.id, _NO_RESULTS)
            key = (row.attempts, row.max_attempts, tuple(row.delivered_to), id(got))
            d = cache.get(key)
            if d is None or d.verdict is Verdict.RETRY:
                d = decide(
                    attempts=row.attempts,
                    max_attempts=row.max_attempts,
                    delivered_to=row.delivered_to,
                    results=got,
                    targets=targets,
                    quorum=settings.delivery_quorum,
                    now=now,
                    base=settings.backoff_base,
                    cap=settings.backoff_cap,
                    rng=self.rng,
                )
                cache[key] = d
            out[row.id] = d
        return out

    async def _record(
        self,
        rows: Sequence[ClaimedAlert],
        stale: list[int],
        results: dict[int, Sequence[TargetResult]],
        token: int,
        targets: list[str],
        claim_next: Callable[[], bool] | None = None,
    ) -> _Batch | None:
        """Record every outcome of the cycle in one statement, fenced by ``token``; then,
        in the same transaction, claim the next batch if ``claim_next()`` (returned)."""
        now = self.clock()
        decisions = self._decide_all(rows, results, targets, now)
        # A finished row's due time becomes now, not the lease end the claim left: sent rows
        # due in the future made the claim's in-flight scan look unselective to the planner,
        # which then read the whole table on every claim (docs/benchmarks.md section 10).
        outcomes = [
            Outcome(i, _SUPERSEDED, SUPERSEDED_REASON, None, next_attempt_at=now) for i in stale
        ]
        retried_fps: list[str] = []
        for row in rows:
            d = decisions[row.id]
            if d.verdict is Verdict.SENT:
                outcomes.append(
                    Outcome(row.id, _SENT, None, d.delivered_to, sent_at=now, next_attempt_at=now)
                )
            elif d.verdict is Verdict.RETRY:
                outcomes.append(
                    Outcome(
                        row.id,
                        _PENDING,
                        d.error or "",
                        d.delivered_to,
                        next_attempt_at=d.next_attempt_at,
                    )
                )
                if row.fingerprint is not None:
                    retried_fps.append(row.fingerprint)
            else:
                outcomes.append(
                    Outcome(row.id, _FAILED, d.error or "", d.delivered_to, next_attempt_at=now)
                )

        async with transaction(self.session_factory) as session:
            driver = get_queue_driver(session)
            applied = set(await driver.alerts_record(token, outcomes))
            superseded_later = 0
            if retried_fps:
                superseded_later = await driver.alerts_supersede_older(retried_fps, now)
            if self.record_hooks:
                # Features keep their own tables in step, in this transaction (hooks.py).
                recorded = [
                    Recorded(row, decisions[row.id], tuple(results.get(row.id, _NO_RESULTS)))
                    for row in rows
                    if row.id in applied
                ]
                for hook in self.record_hooks:
                    await hook(session, recorded, now)
            # Last, after the supersede check and the hooks: the claim sees their writes.
            nxt = await self._claim_in(session) if claim_next and claim_next() else None
        self._count(rows, decisions, applied, stale, superseded_later, now)
        lost = len(outcomes) - len(applied)
        if lost:
            self.stats.fenced += lost
            metrics.LEASE_LOST.inc(lost)
            log.warning("%d outcomes not recorded: their lease was taken over", lost)
        if nxt is not None:
            self._claimed(nxt)
        return nxt

    def _count(
        self,
        rows: Sequence[ClaimedAlert],
        decisions: dict[int, Decision],
        applied: set[int],
        stale: list[int],
        superseded_later: int,
        now: datetime,
    ) -> None:
        """Stats and metrics of one recorded cycle, each counter bumped once."""
        sent = retried = 0
        created: list[datetime] = []
        for row in rows:
            if row.id not in applied:
                continue
            d = decisions[row.id]
            if d.verdict is Verdict.SENT:
                created.append(row.created_at)
            elif d.verdict is Verdict.RETRY:
                retried += 1
            else:
                self.stats.failed += 1
                metrics.ROWS_DEAD_LETTERED.labels(d.reason or "unknown").inc()
                log.error("row %d failed (%s): %s", row.id, d.reason, d.error)
        if created:
            sent = len(created)
            self.stats.sent += sent
            metrics.ROWS_SENT.inc(sent)
            metrics.observe_many(
                metrics.ENQUEUE_TO_SENT, [(now - c).total_seconds() for c in created], floor=0.0
            )
        if retried:
            self.stats.retried += retried
            metrics.ROWS_RETRIED.inc(retried)
        superseded = len([i for i in stale if i in applied]) + superseded_later
        if superseded:
            self.stats.superseded += superseded
            metrics.ROWS_SUPERSEDED.inc(superseded)

    # -- keep-alive

    def _on_keepalive(self, rearmed: int) -> None:
        self.stats.keepalives += rearmed
        self.wake()


@dataclass(frozen=True, slots=True)
class _Batch:
    """Rows leased by one claim, and the claim's fencing token."""

    rows: list[ClaimedAlert]
    token: int
    left: int = 0
    """:attr:`AlertWorker._left` when the claim's transaction began."""


def _never() -> bool:
    return False


def _threadsafe(wake: Callable[[], None]) -> Callable[[], None]:
    """``wake`` callable from any thread: a sync producer may run in a worker thread."""
    loop = asyncio.get_running_loop()

    def call() -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake()
        else:
            loop.call_soon_threadsafe(wake)

    return call


def _array_items(payload_json: str) -> str:
    """The elements of a stored JSON array, as text: ``'[{…}, {…}]'`` → ``'{…}, {…}'``."""
    return payload_json.strip()[1:-1]


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


__all__ = ["AlertWorker", "ClientFactory", "WorkerStats"]
