"""Prometheus metrics, all named ``alertq_*``. The engine and breaker update them; the ops
server exposes them at ``/metrics``."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "alertq_deliveries_total",
    "POSTs to an Alertmanager, by outcome (success, retryable, permanent, misconfigured).",
    ["alertmanager", "outcome"],
)
DELIVERY_LATENCY = Histogram(
    "alertq_delivery_duration_seconds",
    "Duration of one POST of a batch to one Alertmanager.",
    ["alertmanager"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ENQUEUE_TO_SENT = Histogram(
    "alertq_enqueue_to_sent_seconds",
    "Time from a row's creation to its being recorded as sent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
ROWS_SENT = Counter("alertq_alerts_sent_total", "Queue rows recorded as sent.")
ROWS_RETRIED = Counter("alertq_alerts_retried_total", "Queue rows scheduled for another try.")
ROWS_DEAD_LETTERED = Counter(
    "alertq_alerts_dead_lettered_total", "Queue rows marked failed.", ["reason"]
)
ROWS_SUPERSEDED = Counter(
    "alertq_alerts_superseded_total", "Rows retired because a newer row had the same labels."
)
LEASE_RECLAIMS = Counter(
    "alertq_lease_reclaims_total", "Rows claimed again after another claim's lease expired."
)
LEASE_LOST = Counter(
    "alertq_lease_lost_total", "Outcomes not recorded because the row's lease was taken over."
)
KEEPALIVES = Counter(
    "alertq_keepalives_sent_total", "Alerts re-armed to be re-sent while their state holds."
)
CLAIMS = Counter("alertq_claims_total", "Claim statements run by workers.")
RETENTION_DELETED = Counter(
    "alertq_retention_deleted_rows_total",
    "Finished queue rows deleted once older than ALERTQ_HISTORY_RETENTION.",
)

QUEUE_ROWS = Gauge("alertq_queue_rows", "Rows in the queue by status.", ["status"])
OLDEST_DUE_AGE = Gauge(
    "alertq_queue_oldest_due_age_seconds", "How long the oldest due pending row has waited."
)
BREAKER_OPEN = Gauge(
    "alertq_breaker_open", "1 while the named circuit breaker is open (disabled).", ["breaker"]
)
OPEN_INCIDENTS = Gauge("alertq_open_incidents", "Unresolved circuit breaker incidents.")
ALERTMANAGER_UP = Gauge(
    "alertq_alertmanager_up",
    "1 if the Alertmanager answered its last readiness check.",
    ["alertmanager"],
)
ALERTMANAGER_LAST_CHECK = Gauge(
    "alertq_alertmanager_last_check_timestamp_seconds",
    "When the Alertmanager's readiness was last checked (UNIX time).",
    ["alertmanager"],
)
QUEUE_STATS_TIMESTAMP = Gauge(
    "alertq_queue_stats_timestamp_seconds",
    "When the cached queue stats behind alertq_queue_rows were last read (UNIX time).",
)
OPS_ACTIONS = Counter(
    "alertq_ops_actions_total",
    "Operator actions accepted by the ops API (retry, purge, breaker trip and reset).",
    ["action"],
)

KNOWN_STATUSES = ("pending", "sent", "failed", "superseded")


def set_queue_stats(by_status: Mapping[str, int], oldest_due_age: float, at: float) -> None:
    """Publish one queue-stats reading; statuses absent from it read 0, not their last value."""
    for status in {*KNOWN_STATUSES, *by_status}:
        QUEUE_ROWS.labels(status).set(by_status.get(status, 0))
    OLDEST_DUE_AGE.set(oldest_due_age)
    QUEUE_STATS_TIMESTAMP.set(at)


def set_breakers(open_by_name: Mapping[str, bool], open_incidents: int) -> None:
    """Publish every breaker's state (1 open, 0 closed) and the count of open incidents."""
    for name, is_open in open_by_name.items():
        BREAKER_OPEN.labels(name).set(1 if is_open else 0)
    OPEN_INCIDENTS.set(open_incidents)


def set_alertmanager_up(target: str, up: bool, at: float) -> None:
    """Publish one readiness check of one Alertmanager (by its credential-free key)."""
    ALERTMANAGER_UP.labels(target).set(1 if up else 0)
    ALERTMANAGER_LAST_CHECK.labels(target).set(at)


# Relay (issue 11)
INTAKE_ALERTS = Counter(
    "alertq_intake_alerts_total",
    "POST /api/v2/alerts by outcome: stored and invalid count alerts (an invalid one is "
    "refused alone, as Alertmanager does); rejected (a body refused whole) and unauthorized "
    "count requests; error counts alerts the database did not store.",
    ["outcome"],
)
INTAKE_LATENCY = Histogram(
    "alertq_intake_request_seconds",
    "POST /api/v2/alerts: from the request's arrival to the answer, after the commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REPLAYED_ALERTS = Counter(
    "alertq_replayed_alerts_total",
    "Live relayed alerts re-sent to an Alertmanager replica after it restarted.",
    ["alertmanager"],
)
# Managed alerts and heartbeats.
MANAGED_FIRED = Counter("alertq_managed_fired_total", "Managed alerts that started firing.")
MANAGED_RESOLVED = Counter(
    "alertq_managed_resolved_total", "Managed alerts resolved by hand (expiries not counted)."
)
HEARTBEATS_MISSED = Counter(
    "alertq_heartbeats_missed_total", "Heartbeats that missed their deadline (fired once each)."
)


def observe_many(
    histogram: Histogram, amounts: Iterable[float], *, floor: float | None = None
) -> None:
    """``histogram.observe(a)`` for every amount (raised to ``floor`` if below it), with
    one increment per bucket touched.

    The worker observes every sent row's enqueue-to-sent time: 256 ``observe`` calls per
    cycle (a lock and a walk over the buckets each) cost about 0.3 ms of CPU. This counts
    the amounts per bucket first. It reads the histogram's bucket bounds and values, which
    prometheus_client keeps in private attributes; without them it falls back to
    ``observe`` (``tests/unit/test_metrics.py`` holds both to the same result).
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    values = sorted(amounts)
    if floor is not None and values and values[0] < floor:
        low = bisect_left(values, floor)
        values[:low] = [floor] * low
    if bounds is None or buckets is None or total is None:
        for amount in values:
            histogram.observe(amount)
        return
    if not values:
        return
    # observe() counts an amount in the first bucket whose bound is >= it (the last bound
    # is +Inf): bucket i gets the amounts <= bounds[i] that no earlier bucket took.
    below = 0
    for bucket, bound in zip(buckets, bounds, strict=True):
        upto = bisect_right(values, bound, lo=below)
        if upto > below:
            bucket.inc(upto - below)
            below = upto
    total.inc(sum(values))
