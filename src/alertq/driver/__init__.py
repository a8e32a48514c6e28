"""The alert queue's data access: every SQL statement on the queue and incident tables.

Pure data access, split by what it serves:

* :mod:`alertq.driver.queue`: :class:`QueueDriver`, the queue table (``alerts_*``);
* :mod:`alertq.driver.breaker`: :class:`BreakerDriver`, breaker states and incidents
  (``states_*``, ``incidents_*``);
* :mod:`alertq.driver.seed`: :class:`AlertDriver`, the seed's nine methods over the queue
  driver (what :func:`get_alert_driver` returns);
* :mod:`alertq.driver.managed`: :class:`ManagedDriver`, managed alerts and heartbeats
  (``managed_*``, ``heartbeats_*``);
* :mod:`alertq.driver.intake`: ``IntakeDriver``, the relay's batch insert and its reads;
* :mod:`alertq.driver.sql`: statements built once and the per-dialect steps.

Every driver takes the session it is given and never commits or rolls back: the caller
owns the transaction (``alertq.db.transaction``). Method names put the table first, then
the verb. One contract suite (``tests/integration/test_driver_contract*.py``) runs every
method of every driver class here on SQLite and PostgreSQL, and fails for a method it
does not call.
"""

from alertq.driver.breaker import BreakerDriver, get_breaker_driver
from alertq.driver.managed import ManagedDriver, ManagedDue, get_managed_driver
from alertq.driver.queue import (
    PURGE_BATCH,
    ClaimedAlert,
    QueueCounts,
    QueueDriver,
    get_queue_driver,
)
from alertq.driver.seed import AlertDriver, get_alert_driver
from alertq.driver.sql import NOTIFY_CHANNEL, SUPERSEDED_REASON, Outcome

__all__ = [
    "NOTIFY_CHANNEL",
    "PURGE_BATCH",
    "SUPERSEDED_REASON",
    "AlertDriver",
    "BreakerDriver",
    "ClaimedAlert",
    "ManagedDriver",
    "ManagedDue",
    "Outcome",
    "QueueCounts",
    "QueueDriver",
    "get_alert_driver",
    "get_breaker_driver",
    "get_managed_driver",
    "get_queue_driver",
]
