"""The delivery policy, pure: what happens to a row after an attempt, and in which order
and batches rows are sent.

No I/O, no clock, no database: every input is an argument (the random source too), so
the tables in ``tests/unit/test_policy.py`` pin every rule. The engine applies the decisions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from alertq.alerts import MAX_ALERTS_PER_PAYLOAD
from alertq.config import DeliveryQuorum
from alertq.delivery import ErrorClass, TargetResult
from alertq.driver import ClaimedAlert

MAX_RETRY_AFTER = 3600.0
MISCONFIGURED_FLOOR = 60.0


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
    rows: Sequence[ClaimedAlert], limit: int = MAX_ALERTS_PER_PAYLOAD
) -> list[list[ClaimedAlert]]:
    """Group rows into POST bodies of at most ``limit`` alerts, keeping claim order.

    The default is the payload limit: a body never holds more alerts than one enqueue may.
    """
    chunks: list[list[ClaimedAlert]] = []
    current: list[ClaimedAlert] = []
    size = 0
    for row in rows:
        n = row.alert_count
        if current and size + n > limit:
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += n
    if current:
        chunks.append(current)
    return chunks


__all__ = [
    "MAX_RETRY_AFTER",
    "MISCONFIGURED_FLOOR",
    "Decision",
    "Verdict",
    "backoff_delay",
    "chunk_rows",
    "decide",
    "newest_per_fingerprint",
]
