"""The relay's intake-by-source count (status page, ``alertq stats``) under a flood, on SQLite.

10,000 rows, half relayed from four senders, loaded and ANALYZEd. The statement checked is
the exact one the driver sends, captured from SQLAlchemy while the driver method runs,
then EXPLAINed (``EXPLAIN QUERY PLAN``) with the same parameters on the same connection:
it reads only the covering index ``ix_costsim_alert_queue_intake_source`` (migration
0006, partial: relayed rows only), in group order, never the table and its payloads.
Measured on 200,000 relayed rows: 150 ms of CPU per count without the index, 35 ms with it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from alertq.driver.intake import IntakeDriver

ROWS = 10_000
SENDERS = [
    ("10.0.0.1", "Prometheus/2.42.0"),
    ("10.0.0.2", "vmalert/1.93"),
    ("10.0.0.3", "Grafana/10.0"),
    ("10.0.0.3", "amtool"),
]
INDEX = "ix_costsim_alert_queue_intake_source"

# Test SQL: the fastest way to a flooded queue.
FILL = text(
    """
    INSERT INTO costsim_alert_queue
        (payload, alert_type, status, attempts, max_attempts, next_attempt_at, created_at,
         fingerprint, lease_token, delivered_to, source_addr, source_agent)
    VALUES (:payload, :alert_type, :status, 0, 10, :at, :at, :fp, 0, '[]', :addr, :agent)
    """
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_intake_sources_reads_only_its_covering_index(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    payload = '[{"labels":{"alertname":"Flood","instance":"' + "x" * 200 + '"}}]'
    rows: list[dict[str, Any]] = []
    for i in range(ROWS):
        addr, agent = SENDERS[i // 2 % len(SENDERS)] if i % 2 else (None, None)
        rows.append(
            {
                "payload": payload,
                "alert_type": "relay" if i % 2 else "disable",
                "status": "pending" if i >= ROWS - 100 else "sent",
                "at": datetime(2026, 1, 1, 0, i // 60 % 60, i % 60, tzinfo=UTC),
                "fp": f"{i:016x}",
                "addr": addr,
                "agent": agent,
            }
        )
    async with engine.begin() as conn:
        await conn.execute(FILL, rows)
        await conn.execute(text("ANALYZE"))

    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with session_factory() as session:
            sources = await IntakeDriver(session).intake_sources("relay", 20)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    ((statement, params),) = captured
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        plan = [str(r[-1]) for r in result]
    assert any(f"USING COVERING INDEX {INDEX}" in step for step in plan), plan
    assert not any(step.startswith("SCAN costsim_alert_queue") for step in plan), plan
    assert not any("TEMP B-TREE FOR GROUP BY" in step for step in plan), plan
    assert sorted((s.addr, s.agent, s.rows) for s in sources) == sorted(
        (addr, agent, ROWS // 2 // len(SENDERS)) for addr, agent in SENDERS
    )
    assert sum(s.pending for s in sources) == 50
