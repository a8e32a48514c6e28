"""In-process wake-up: a producer in the worker's own process wakes its loops at once.

Across processes, workers learn of new rows from PostgreSQL's NOTIFY or, on SQLite, from
``PRAGMA data_version`` (:class:`alertq.db.SqliteChangeWatcher`). Within one process (the
relay, ``alertq run`` enqueuing for its own worker) nothing has to travel: a producer calls
:func:`wake_workers` after its commit, and every worker of this process that
:func:`subscribe`\\ d looks for work now.

Call it only after the commit: a worker woken earlier cannot see the row yet.
"""

from __future__ import annotations

from collections.abc import Callable

_subscribers: list[Callable[[], None]] = []


def subscribe(wake: Callable[[], None]) -> Callable[[], None]:
    """Call ``wake`` on every :func:`wake_workers`; returns the function that unsubscribes."""
    _subscribers.append(wake)

    def unsubscribe() -> None:
        if wake in _subscribers:
            _subscribers.remove(wake)

    return unsubscribe


def has_subscribers() -> bool:
    """Whether any worker of this process listens (lets producers skip the bookkeeping)."""
    return bool(_subscribers)


def wake_workers() -> None:
    """Wake every subscribed worker of this process. Cheap: sets an event per worker."""
    for wake in tuple(_subscribers):
        wake()


__all__ = ["has_subscribers", "subscribe", "wake_workers"]
