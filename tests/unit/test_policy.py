"""The delivery policy, table by table: pure functions, no services (procrastinate's
``tests/unit/test_retry.py`` style)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from alertq.alerts import MAX_ALERTS_PER_PAYLOAD
from alertq.config import DeliveryQuorum
from alertq.delivery import ErrorClass, TargetResult
from alertq.driver import ClaimedAlert
from alertq.policy import (
    MAX_RETRY_AFTER,
    MISCONFIGURED_FLOOR,
    Verdict,
    backoff_delay,
    chunk_rows,
    decide,
    newest_per_fingerprint,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
A, B = "http://a:9093", "http://b:9093"
ANY, ALL = DeliveryQuorum.ANY, DeliveryQuorum.ALL


class Jitter(random.Random):
    """A random source pinned to one end of every ``uniform`` range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def ok(target: str) -> TargetResult:
    return TargetResult(target, True, None, 200, "", None, 0.01, None)


def fail(
    target: str,
    error_class: ErrorClass = ErrorClass.RETRYABLE,
    status: int | None = 503,
    *,
    retry_after: float | None = None,
    text: str = "unavailable",
) -> TargetResult:
    return TargetResult(
        target, False, error_class, status, text, retry_after, 0.01, f"HTTP {status}: {text}"
    )


def claimed(row_id: int, fingerprint: str | None = None, alerts: int = 1) -> ClaimedAlert:
    return ClaimedAlert(
        id=row_id,
        payload_json=json.dumps(
            [{"labels": {"alertname": f"A{row_id}-{i}"}} for i in range(alerts)]
        ),
        alert_count=alerts,
        alert_type="disable",
        incident_id=None,
        fingerprint=fingerprint,
        attempts=1,
        max_attempts=10,
        delivered_to=[],
        created_at=NOW,
        reclaimed=False,
    )


# ----------------------------------------------------------------------------- backoff_delay


@pytest.mark.parametrize(
    ("attempts", "base", "cap", "low", "high"),
    [
        (0, 2.0, 300.0, 1.0, 2.0),  # no attempt yet counts as the first
        (1, 2.0, 300.0, 1.0, 2.0),
        (2, 2.0, 300.0, 2.0, 4.0),
        (5, 2.0, 300.0, 16.0, 32.0),
        (9, 2.0, 300.0, 150.0, 300.0),  # 512 s capped at 300
        (500, 2.0, 300.0, 150.0, 300.0),  # no overflow however many attempts
        (3, 0.5, 1.0, 0.5, 1.0),
        (1, 0.01, 300.0, 0.005, 0.01),
    ],
)
def test_backoff_is_capped_exponential_with_equal_jitter(
    attempts: int, base: float, cap: float, low: float, high: float
) -> None:
    assert backoff_delay(attempts, base, cap, Jitter(high=False)) == pytest.approx(low)
    assert backoff_delay(attempts, base, cap, Jitter(high=True)) == pytest.approx(high)
    for seed in range(20):
        assert low <= backoff_delay(attempts, base, cap, random.Random(seed)) <= high


# ----------------------------------------------------------------------------- decide


def run_decide(
    results: Sequence[TargetResult],
    *,
    targets: Sequence[str] = (A,),
    quorum: DeliveryQuorum = ANY,
    attempts: int = 1,
    max_attempts: int = 10,
    delivered_to: Sequence[str] = (),
    base: float = 2.0,
    cap: float = 300.0,
) -> tuple[Verdict, tuple[str, ...], float | None, str | None, str | None]:
    """``decide`` with a low-pinned jitter: (verdict, delivered_to, delay s, reason, error)."""
    d = decide(
        attempts=attempts,
        max_attempts=max_attempts,
        delivered_to=delivered_to,
        results=results,
        targets=targets,
        quorum=quorum,
        now=NOW,
        base=base,
        cap=cap,
        rng=Jitter(high=False),
    )
    delay = None if d.next_attempt_at is None else (d.next_attempt_at - NOW).total_seconds()
    return d.verdict, d.delivered_to, delay, d.reason, d.error


SENT, RETRY, FAILED = Verdict.SENT, Verdict.RETRY, Verdict.FAILED
AB = {"targets": (A, B)}
AB_ALL = {"targets": (A, B), "quorum": ALL}
MISCONF, PERM = ErrorClass.MISCONFIGURED, ErrorClass.PERMANENT


def case(
    name: str, results: list[TargetResult], kwargs: dict[str, object], *expected: object
) -> object:
    return pytest.param(results, kwargs, expected, id=name)


# fmt: off
DECIDE_TABLE = [
    # name                                  results               arguments
    #                                       verdict  delivered  delay s  reason
    case("accepted",                        [ok(A)], {},
                                            SENT, (A,), None, None),
    case("any: one replica is enough",      [fail(B), ok(A)], AB,
                                            SENT, (A,), None, None),
    case("any: delivered in target order",  [ok(B), ok(A)], AB,
                                            SENT, (A, B), None, None),
    case("all: a missing replica retries",  [ok(A), fail(B)], AB_ALL,
                                            RETRY, (A,), 1.0, None),
    case("all: earlier acceptances count",  [ok(B)], {**AB_ALL, "delivered_to": (A,)},
                                            SENT, (A, B), None, None),
    case("retryable: backoff from 1st",     [fail(A)], {},
                                            RETRY, (), 1.0, None),
    case("retryable: backoff grows",        [fail(A)], {"attempts": 4},
                                            RETRY, (), 8.0, None),
    case("retryable: backoff capped",       [fail(A)], {"attempts": 9, "cap": 10.0},
                                            RETRY, (), 5.0, None),
    case("retry-after beats backoff",       [fail(A, retry_after=120.0)], {},
                                            RETRY, (), 120.0, None),
    case("retry-after capped at an hour",   [fail(A, retry_after=1e9)], {},
                                            RETRY, (), MAX_RETRY_AFTER, None),
    case("backoff beats short retry-after", [fail(A, retry_after=0.1)], {"attempts": 4},
                                            RETRY, (), 8.0, None),
    case("misconfigured: 60 s floor",       [fail(A, MISCONF, 404)], {},
                                            RETRY, (), MISCONFIGURED_FLOOR, None),
    case("misconfigured: floor <= cap",     [fail(A, MISCONF, 404)], {"cap": 5.0},
                                            RETRY, (), 5.0, None),
    case("permanent: dead-letter at once",  [fail(A, PERM, 400)], {},
                                            FAILED, (), None, "permanent"),
    case("permanent beats max_attempts",    [fail(A, PERM, 400)], {"attempts": 10},
                                            FAILED, (), None, "permanent"),
    case("all: permanent keeps acceptance", [ok(A), fail(B, PERM, 422)], AB_ALL,
                                            FAILED, (A,), None, "permanent"),
    case("last attempt failed",             [fail(A)], {"attempts": 10},
                                            FAILED, (), None, "max_attempts"),
    case("past max_attempts",               [fail(A)], {"attempts": 11},
                                            FAILED, (), None, "max_attempts"),
    case("one attempt allowed",             [fail(A)], {"max_attempts": 1},
                                            FAILED, (), None, "max_attempts"),
    case("no result, attempts left",        [], {},
                                            RETRY, (), 1.0, None),
    case("no result, none left (poison)",   [], {"attempts": 11},
                                            FAILED, (), None, "max_attempts"),
]
# fmt: on


@pytest.mark.parametrize(("results", "kwargs", "expected"), DECIDE_TABLE)
def test_decide(
    results: list[TargetResult], kwargs: dict[str, object], expected: tuple[object, ...]
) -> None:
    verdict, delivered, delay, reason, _ = run_decide(results, **kwargs)  # type: ignore[arg-type]
    want_verdict, want_delivered, want_delay, want_reason = expected
    assert (verdict, delivered, reason) == (want_verdict, want_delivered, want_reason)
    if want_delay is None:
        assert delay is None
    else:
        assert delay == pytest.approx(want_delay)


@pytest.mark.parametrize(
    ("results", "kwargs", "expected"),
    [
        ([fail(A, ErrorClass.PERMANENT, 400, text="bad label")], {}, "HTTP 400: bad label"),
        (
            [fail(A, text="down"), fail(B, text="gone")],
            {"targets": (A, B)},
            f"{A}: HTTP 503: down; {B}: HTTP 503: gone",
        ),
        (
            [],
            {"attempts": 11},
            "no outcome recorded: every lease expired (worker died mid-delivery?)",
        ),
        ([fail(A, text="x" * 5000)], {}, (f"{A}: HTTP 503: " + "x" * 5000)[:2000]),
    ],
)
def test_decide_error_text_names_each_target_and_is_bounded(
    results: list[TargetResult], kwargs: dict[str, object], expected: str
) -> None:
    *_, error = run_decide(results, **kwargs)  # type: ignore[arg-type]
    assert error == expected
    assert len(error or "") <= 2000


# ------------------------------------------------------------------ newest_per_fingerprint


@pytest.mark.parametrize(
    ("rows", "keep", "stale"),
    [
        ([], [], []),
        ([(1, None), (2, None)], [1, 2], []),  # no fingerprint: never superseded
        ([(1, "a"), (2, "a")], [2], [1]),
        ([(3, "a"), (1, "a"), (2, "b")], [2, 3], [1]),  # kept rows come back in id order
        ([(1, "a"), (2, None), (3, "a"), (4, "b"), (5, "a")], [2, 4, 5], [1, 3]),
        ([(7, "a"), (4, "a"), (9, "a")], [9], [7, 4]),  # stale keep the claim's order
    ],
)
def test_newest_row_per_fingerprint_is_delivered_and_older_ones_are_stale(
    rows: list[tuple[int, str | None]], keep: list[int], stale: list[int]
) -> None:
    got_keep, got_stale = newest_per_fingerprint([claimed(i, fp) for i, fp in rows])
    assert ([r.id for r in got_keep], got_stale) == (keep, stale)


# ----------------------------------------------------------------------------- chunk_rows


@pytest.mark.parametrize(
    ("sizes", "limit", "chunks"),
    [
        ([], 256, []),
        ([1, 1, 1], 2, [[0, 1], [2]]),
        ([256], 256, [[0]]),
        ([200, 100], 256, [[0], [1]]),
        ([300], 256, [[0]]),  # an oversized row still goes, alone
        ([100, 100, 56, 1], 256, [[0, 1, 2], [3]]),
        ([1, 300, 1], 256, [[0], [1], [2]]),
    ],
)
def test_rows_are_chunked_into_bodies_of_at_most_limit_alerts_in_claim_order(
    sizes: list[int], limit: int, chunks: list[list[int]]
) -> None:
    rows = [claimed(i, alerts=n) for i, n in enumerate(sizes)]
    assert [[r.id for r in c] for c in chunk_rows(rows, limit)] == chunks


def test_default_chunk_is_the_payload_limit() -> None:
    rows = [claimed(i) for i in range(MAX_ALERTS_PER_PAYLOAD + 1)]
    assert [len(c) for c in chunk_rows(rows)] == [MAX_ALERTS_PER_PAYLOAD, 1]


def test_retry_is_scheduled_from_now() -> None:
    d = decide(
        attempts=1,
        max_attempts=3,
        delivered_to=[],
        results=[fail(A)],
        targets=[A],
        quorum=ANY,
        now=NOW,
        base=2.0,
        cap=300.0,
        rng=Jitter(high=True),
    )
    assert d.next_attempt_at == NOW + timedelta(seconds=2)
