"""An idle worker learns of new rows without waiting for its poll: on SQLite from
``PRAGMA data_version`` (another connection or process committed), and from a producer of
its own process directly (:mod:`alertq.wakeup`, what the relay calls after its commit).

Split by test tier: these are the unit tests; see also ``tests/integration/test_wakeup.py``.
"""

from __future__ import annotations

import pytest

from alertq.config import Settings


def test_sqlite_wake_interval_is_bounded() -> None:
    for bad in (0, -1, 61):
        with pytest.raises(ValueError, match="sqlite_wake_interval"):
            Settings(sqlite_wake_interval=bad)
