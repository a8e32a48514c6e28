"""``metrics.observe_many`` counts exactly what one ``observe`` per amount would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from alertq import metrics

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_matches_observe_for_each_amount_on_bounds_and_beyond() -> None:
    amounts = [0.0, 0.005, 0.0051, 0.01, 0.3, 1.0, 1.5, 300.0, 300.1, 1e9, 0.0, 2.5, 2.5]
    one = Histogram("one_seconds", "one", buckets=BUCKETS, registry=CollectorRegistry())
    many = Histogram("many_seconds", "many", buckets=BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one.observe(amount)
    metrics.observe_many(many, amounts[:5])
    metrics.observe_many(many, amounts[5:])
    metrics.observe_many(many, [])
    got = {(n.replace("many", "one"), le): v for (n, le), v in samples(many).items()}
    assert got == samples(one)
    assert samples(one)[("one_seconds_count", "")] == len(amounts)
