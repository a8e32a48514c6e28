"""label_fingerprints (a batch at once, in lanes of one big int) against label_fingerprint
(one byte at a time), and both against Alertmanager's known values."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alertq.alerts import label_fingerprint, label_fingerprints
from tests.unit.test_alerts import ALERTMANAGER_0_25_VECTORS, PROMETHEUS_COMMON_VECTORS

VECTORS = PROMETHEUS_COMMON_VECTORS + ALERTMANAGER_0_25_VECTORS


def test_a_batch_gets_alertmanagers_values_in_order() -> None:
    batch = [labels for labels, _ in VECTORS] * 3 + [{}, {"a": ""}]
    expected = [fp for _, fp in VECTORS] * 3 + [label_fingerprint({})] * 2
    assert label_fingerprints(batch) == expected
    assert label_fingerprints([]) == []


def test_sets_of_every_length_and_more_than_one_int_of_them() -> None:
    # Lengths 0 to 1,500 bytes (past the lanes' limit) and 600 sets (three ints).
    batch = [{"alertname": "A", "v": "é" * (i % 750)} for i in range(600)]
    assert label_fingerprints(batch) == [label_fingerprint(s) for s in batch]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["alertname", "a", "b", "job", "", "ünï", "n\x00"]),
            st.one_of(st.sampled_from(["", "x", "\x00", "\xff"]), st.text(max_size=40)),
            max_size=4,
        ),
        max_size=40,
    )
)
def test_the_same_values_as_one_at_a_time(batch: list[dict[str, str]]) -> None:
    batch = [{k: v.encode("utf-8", "replace").decode() for k, v in s.items()} for s in batch]
    assert label_fingerprints(batch) == [label_fingerprint(s) for s in batch]
