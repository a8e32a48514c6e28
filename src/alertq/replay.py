"""Restart replay: a restarted Alertmanager relearns every live relayed alert at once.

Alertmanager keeps alerts in memory only (it declines to persist them), so after a restart
it knows nothing until senders re-send: Prometheus does so only every ``resend-delay``, and
a resolution that arrives in between never notifies. alertq holds the latest state of every
relayed alert, so it re-sends them itself.

:class:`ReplayService` reads each Alertmanager's ``/api/v2/status`` every
``replay_interval`` seconds (through :class:`~alertq.delivery.AlertmanagerClient`, the
only HTTP to Alertmanager). A replica restarted when its ``uptime`` changed, or when it
answers again after being unreachable. It is then sent the latest delivered state of every
relayed label set that is still live:

* firing: ``endsAt`` in the future (no ``endsAt``: received within Alertmanager's default
  ``resolve_timeout``, 5 minutes);
* resolved: ``endsAt`` within ``resolved_retention`` (15 minutes, as Prometheus keeps).

Batches of 256, at most :data:`MAX_REPLAY_ALERTS` per restart, counted in
``alertq_replayed_alerts_total``. A replay that fails (the replica is not ready yet) is
tried again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import metrics
from alertq.config import Settings
from alertq.db import transaction
from alertq.delivery import AlertmanagerClient
from alertq.driver.intake import IntakeDriver
from alertq.intake import DEFAULT_RESOLVE_TIMEOUT

__all__ = ["MAX_REPLAY_ALERTS", "ReplayService", "is_live"]

log = logging.getLogger("alertq.replay")

RELAY_ALERT_TYPE = "relay"
BATCH = 256
PAGE = 2000
MAX_REPLAY_ALERTS = 100_000
"""At most this many alerts are re-sent to one restarted replica (the newest are kept)."""
LOOKBACK = timedelta(days=7)
"""Rows older than this are not considered: senders re-send live alerts far more often."""


def _parse(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def is_live(
    alert: dict[str, Any], received_at: datetime, now: datetime, resolved_retention: timedelta
) -> bool:
    """Whether a stored alert should be re-sent: firing, or resolved within retention."""
    ends = _parse(alert.get("endsAt"))
    if ends is None:
        return received_at + DEFAULT_RESOLVE_TIMEOUT > now
    return ends > now - resolved_retention


class ReplayService:
    """Detects Alertmanager restarts and re-sends live relayed alerts. :meth:`run_once` is
    one round; :meth:`run` repeats it every ``settings.replay_interval`` seconds."""

    def __init__(
        self,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        client: AlertmanagerClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.client = client
        self.clock = clock
        self._uptime: dict[str, str | None] = {}  # last reading; None: unreachable
        self._owed: set[str] = set()  # restarted replicas not yet fully replayed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a bad round must not end replay for the process
                log.exception("replay round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.replay_interval)

    async def run_once(self) -> int:
        """Read every replica's uptime, and replay to those that restarted; returns the
        number of alerts re-sent."""
        for reading in await self.client.read_uptimes():
            known = reading.target in self._uptime
            before = self._uptime.get(reading.target)
            self._uptime[reading.target] = reading.uptime
            if reading.uptime is None or not known:
                continue  # down, or first sight: nothing to compare with
            if before != reading.uptime:
                why = "came back" if before is None else f"uptime {before} -> {reading.uptime}"
                log.info(
                    "Alertmanager %s restarted (%s): replaying live alerts", reading.target, why
                )
                self._owed.add(reading.target)
        sent = 0
        for target in sorted(self._owed):
            if self._uptime.get(target) is None:
                continue  # down again: replay when it answers
            done, count = await self._replay(target)
            sent += count
            if done:
                self._owed.discard(target)
        return sent

    async def _live_alerts(self) -> list[dict[str, Any]]:
        now = self.clock()
        retention = timedelta(seconds=self.settings.resolved_retention)
        alerts: list[dict[str, Any]] = []
        after = 0
        while len(alerts) < MAX_REPLAY_ALERTS:
            async with transaction(self.session_factory) as session:
                rows = await IntakeDriver(session).alerts_latest_sent(
                    RELAY_ALERT_TYPE, now - LOOKBACK, after, PAGE
                )
            if not rows:
                break
            after = rows[-1].id
            for row in rows:
                alerts.extend(a for a in row.payload if is_live(a, row.created_at, now, retention))
        return alerts[-MAX_REPLAY_ALERTS:]

    async def _replay(self, target: str) -> tuple[bool, int]:
        alerts = await self._live_alerts()
        sent = 0
        for start in range(0, len(alerts), BATCH):
            batch = alerts[start : start + BATCH]
            (result,) = await self.client.post_alerts(batch, targets=[target])
            if not result.ok:
                log.warning(
                    "replay to %s stopped after %d of %d alerts: %s",
                    target,
                    sent,
                    len(alerts),
                    result.error,
                )
                return False, sent
            sent += len(batch)
            metrics.REPLAYED_ALERTS.labels(target).inc(len(batch))
        log.info("replayed %d live alerts to %s", sent, target)
        return True, sent
