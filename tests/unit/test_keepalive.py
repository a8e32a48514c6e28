"""Keep-alive: incident alerts are re-sent through the queue, reusing their rows.

Split by test tier: these are the unit tests; see also ``tests/integration/test_keepalive.py``.
The pure re-send decision is the managed alerts' ``keepalive_step``
(``tests/unit/test_managed_keepalive.py``).
"""

from __future__ import annotations

import pytest

from alertq.keepalive import keepalive_tick


@pytest.mark.parametrize(("interval", "tick"), [(60, 5.0), (5, 1.0), (1, 0.2), (3600, 5.0)])
def test_keepalive_tick_is_a_fifth_of_the_interval_at_most_five_seconds(
    interval: float, tick: float
) -> None:
    assert keepalive_tick(interval) == tick
