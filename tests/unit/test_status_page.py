"""The status page: rendered in-process, and loaded by headless Chromium from a real
``alertq run`` while alerts are pending and failed (screenshots for the README).

Split by test tier: these are the unit tests; see also ``tests/integration/test_status_page.py``
and ``tests/acceptance/test_status_page.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alertq.opsview import Sample
from alertq.statuspage import build_chart


def test_chart_plots_delivery_rate_and_queue_depth_from_samples() -> None:
    now = datetime.now(UTC)
    samples = [
        Sample(now - timedelta(seconds=40), 0, 10, 0),
        Sample(now - timedelta(seconds=30), 100, 5, 0),  # 10 rows/s
        Sample(now - timedelta(seconds=20), 100, 5, 0),  # idle
        Sample(now - timedelta(seconds=10), 400, 0, 0),  # 30 rows/s
    ]
    chart = build_chart(samples, now)
    rate, depth = chart.series
    assert (rate.latest, rate.peak) == ("30.0/s", "30.0/s")
    assert (depth.latest, depth.peak) == ("0", "10")
    rate_points = [tuple(map(float, p.split(","))) for p in rate.line.split()]
    assert [round(x) for x, _ in rate_points] == [150, 300, 450]  # 40 s span over 600 units
    heights = [120 - y for _, y in rate_points]
    assert heights[1] == 0 and heights[2] == pytest.approx(3 * heights[0], abs=0.5)
    assert chart.axis == ("−40 s", "−20 s", "now")
    old = [Sample(now - timedelta(hours=2), 0, 1, 0), *samples]
    assert build_chart(old, now).series[1].peak == "10"  # older than an hour: left out
