"""The producer's entry point: put an alert payload in the queue (the outbox pattern).

:func:`enqueue_alert` runs in the caller's transaction and never commits: the row becomes
visible to workers exactly when the caller's own changes do, or never.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from alertq import limits, wakeup
from alertq.alerts import InvalidAlertPayload, payload_fingerprint, validate_payload
from alertq.config import get_settings
from alertq.driver import QueueDriver
from alertq.models import CostSimAlertQueueModel

__all__ = ["InvalidAlertPayload", "check_enqueue_args", "enqueue_alert"]

# When this process last sent a NOTIFY (time.monotonic()); None before the first.
_last_notify_at: float | None = None


_WAKE_FLAG = "alertq.wake_workers"


def _wake_on_commit(session: Session) -> None:
    if session.info.pop(_WAKE_FLAG, False):
        wakeup.wake_workers()


def _wake_after_commit(session: AsyncSession) -> None:
    """Wake this process's workers once the caller commits (not before: they could not
    see the row yet). Other processes learn of it by NOTIFY or PRAGMA data_version."""
    sync = session.sync_session
    sync.info[_WAKE_FLAG] = True
    if not event.contains(sync, "after_commit", _wake_on_commit):
        event.listen(sync, "after_commit", _wake_on_commit)


def _check_text_arg(value: object, field: str, *, required: bool) -> None:
    """Refuse what the database would refuse mid-transaction (NUL, lone surrogates)."""
    if value is None and not required:
        return
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise InvalidAlertPayload(f"must be a string (got {got})", field=field)
    if required and not value.strip():
        raise InvalidAlertPayload("must be a non-empty string", field=field)
    if "\x00" in value:
        raise InvalidAlertPayload("must not contain NUL (\\u0000)", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAlertPayload("is not valid UTF-8 (lone surrogate)", field=field) from None


def _check_length(value: object, field: str, max_length: int) -> None:
    """Identifiers are bounded like everything else (see :mod:`alertq.limits`)."""
    if isinstance(value, str) and len(value) > max_length:
        raise InvalidAlertPayload(
            f"is too long: {len(value)} characters (max {max_length})", field=field
        )


def check_enqueue_args(
    alert_type: object, circuit_breaker_name: object = None, incident_id: object = None
) -> None:
    """:func:`enqueue_alert`'s checks of its text arguments, for callers (the CLI) that
    want to refuse bad arguments before they open a database connection."""
    _check_text_arg(alert_type, "alert_type", required=True)
    _check_text_arg(circuit_breaker_name, "circuit_breaker_name", required=False)
    _check_text_arg(incident_id, "incident_id", required=False)
    _check_length(alert_type, "alert_type", limits.MAX_ALERT_TYPE_LENGTH)
    _check_length(circuit_breaker_name, "circuit_breaker_name", limits.MAX_NAME_LENGTH)
    _check_length(incident_id, "incident_id", limits.MAX_INCIDENT_ID_LENGTH)


async def enqueue_alert(
    session: AsyncSession,
    payload: object,
    alert_type: str,
    circuit_breaker_name: str | None = None,
    incident_id: str | None = None,
    *,
    max_attempts: int | None = None,
    now: datetime | None = None,
    notify_throttle: float | None = None,
) -> CostSimAlertQueueModel:
    """Validate ``payload`` and insert it as a pending row in ``session``'s transaction.

    Everything is checked before any statement runs: a bad payload or argument raises
    :class:`InvalidAlertPayload` and leaves the transaction untouched (on PostgreSQL a
    failed statement would abort the caller's whole transaction). Then, in order:

    1. insert the normalised payload with its :func:`~alertq.alerts.payload_fingerprint`,
       due at ``now`` (default: the current time, aware UTC);
    2. retire older undelivered rows with the same fingerprint (superseded: the newest
       state of a label set wins);
    3. NOTIFY the workers (PostgreSQL only; sent when the caller commits), unless this
       process already did less than ``notify_throttle`` seconds ago. A skipped NOTIFY
       only delays pickup: workers also poll (``poll_interval``), which is the fallback.
       Workers of this very process are woken directly when the caller commits
       (:mod:`alertq.wakeup`), on either backend.

    On PostgreSQL the three are one statement (one round trip for the producer).
    Never commits, rolls back or flushes beyond what the statements need. Returns the row.
    ``max_attempts`` and ``notify_throttle`` default to the process settings
    (``ALERTQ_MAX_ATTEMPTS``, ``ALERTQ_NOTIFY_THROTTLE``; :func:`alertq.config.get_settings`).
    Naive ``now`` or ``max_attempts < 1`` are programming errors: :class:`ValueError`.
    """
    global _last_notify_at

    check_enqueue_args(alert_type, circuit_breaker_name, incident_id)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1 (got {max_attempts})")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware UTC datetime")
    alerts = validate_payload(payload, now=now)
    fingerprint = payload_fingerprint(alerts)

    if max_attempts is None or notify_throttle is None:
        settings = get_settings()
        max_attempts = settings.max_attempts if max_attempts is None else max_attempts
        notify_throttle = settings.notify_throttle if notify_throttle is None else notify_throttle

    mono = time.monotonic()
    notify = _last_notify_at is None or mono - _last_notify_at >= notify_throttle
    if notify:
        _last_notify_at = mono
    if wakeup.has_subscribers():
        _wake_after_commit(session)
    return await QueueDriver(session).alerts_enqueue(
        alerts,
        alert_type,
        circuit_breaker_name,
        incident_id,
        fingerprint=fingerprint,
        now=now,
        max_attempts=max_attempts,
        notify=notify,
    )
