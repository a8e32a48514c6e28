"""Record hooks: how a feature keeps its own tables in step with delivery outcomes.

The engine records each cycle's outcomes in one transaction and then, in that same
transaction, calls every record hook it was given with the rows whose outcome was applied
(fenced rows are left out). A hook may write through a driver on ``session`` and must not
commit. The circuit breaker registers one to keep its incidents' ``alert_sent`` and
``alert_response`` current (:data:`alertq.breaker.INCIDENT_RECORD_HOOK`), so the engine
knows nothing about incidents.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from alertq.delivery import TargetResult
from alertq.driver import ClaimedAlert
from alertq.policy import Decision


class Recorded(NamedTuple):
    """One delivered row whose outcome was recorded (one per row: a named tuple)."""

    row: ClaimedAlert
    decision: Decision
    results: tuple[TargetResult, ...]
    """This attempt's answer from each target (empty if the row was not posted)."""


class RecordHook(Protocol):
    async def __call__(
        self, session: AsyncSession, recorded: Sequence[Recorded], now: datetime
    ) -> None: ...


__all__ = ["RecordHook", "Recorded"]
