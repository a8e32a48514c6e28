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


def test_observe_many_raises_amounts_below_the_floor_to_it() -> None:
    amounts = [-3.0, -0.001, 0.0, 0.004, 7.0]
    one = Histogram("one_seconds", "one", buckets=BUCKETS, registry=CollectorRegistry())
    many = Histogram("many_seconds", "many", buckets=BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one.observe(max(0.0, amount))
    metrics.observe_many(many, amounts, floor=0.0)
    got = {(n.replace("many", "one"), le): v for (n, le), v in samples(many).items()}
    assert got == samples(one)


def test_observe_many_falls_back_to_observe_without_the_private_attributes() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    plain = Plain()
    metrics.observe_many(plain, [2.0, -1.0, 1.0], floor=0.0)  # type: ignore[arg-type]
    assert sorted(plain.seen) == [0.0, 1.0, 2.0]
