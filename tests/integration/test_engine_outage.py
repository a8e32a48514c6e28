"""A worker whose database cannot be reached: capped backoff, a few log lines, no tracebacks,
and ``--drain`` gives up after a bounded wait."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from alertq.config import Settings
from alertq.db import DatabaseOutage, DatabaseUnreachable, create_engine, create_session_factory
from alertq.engine import AlertWorker
from tests.support import free_port
from tests.support.processes import wait_until


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused_url() -> str:
    return f"postgresql+asyncpg://alertq:s3cret-pw@127.0.0.1:{free_port()}/alertq"


def outage_settings(url: str) -> Settings:
    return Settings(
        database_url=url,
        alertmanager_urls=["http://127.0.0.1:9"],
        concurrency=2,
        poll_interval=0.05,
        resend_interval=0.25,  # keep-alive passes every 50 ms: they must stay quiet too
    )


def alertq_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("alertq") and r.levelno >= logging.INFO]


async def test_worker_on_a_refused_port_backs_off_and_logs_one_line_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await asyncio.wait_for(asyncio.shield(task), 3.0)
    except TimeoutError:
        pass  # still running after 3 s, as it should
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    lines = alertq_lines(caplog)
    text = "\n".join(r.getMessage() for r in lines)
    assert [r for r in lines if r.exc_info] == [], text
    assert "Traceback" not in caplog.text
    down = [r for r in lines if "unreachable" in r.getMessage()]
    assert len(down) == 1, text
    assert len(lines) == 1, text
    assert "s3cret-pw" not in caplog.text and "***" in down[0].getMessage()
    # Capped exponential backoff from 50 ms: a handful of attempts per loop, not 60.
    assert worker.outage.failures <= 20, worker.outage.failures


async def test_worker_logs_once_a_minute_while_down_and_once_when_back(
    caplog: pytest.LogCaptureFixture, sqlite_template: Path, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    missing = tmp_path / "not-yet"
    settings = outage_settings(f"sqlite+aiosqlite:///{missing / 'alertq.db'}")
    monotonic = FakeMonotonic()
    engine = create_engine(settings)
    worker = AlertWorker(
        settings,
        create_session_factory(engine),
        outage=DatabaseOutage(settings.database_url, monotonic=monotonic),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: worker.outage.failures >= 3, within=20)
        monotonic.now += 30  # half a minute: still no second line
        seen = worker.outage.failures
        await wait_until(lambda: worker.outage.failures >= seen + 2, within=30)
        assert len(alertq_lines(caplog)) == 1
        monotonic.now += 31  # past a minute since the first line
        seen = worker.outage.failures
        await wait_until(lambda: worker.outage.failures >= seen + 2, within=30)
        assert len(alertq_lines(caplog)) == 2
        # The database comes back: a migrated file appears where the URL points.
        missing.mkdir()
        shutil.copy(sqlite_template, missing / "alertq.db")
        await wait_until(lambda: not worker.outage.down, within=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
    lines = alertq_lines(caplog)
    messages = [r.getMessage() for r in lines]
    assert len(lines) == 3, messages
    assert "unreachable" in messages[0] and "still unreachable" in messages[1]
    assert "reachable again" in messages[2]
    assert [r for r in lines if r.exc_info] == []


async def test_drain_gives_up_with_database_unreachable_after_a_bounded_wait() -> None:
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine), drain_unreachable_limit=1.0)
    try:
        with pytest.raises(DatabaseUnreachable) as caught:
            await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 30)
    finally:
        await engine.dispose()
    message = str(caught.value)
    assert "\n" not in message and "s3cret-pw" not in message
    assert "127.0.0.1" in message and "ConnectionRefusedError" in message


async def test_drain_waits_out_the_default_bound_then_gives_up() -> None:
    """Without the test-only bound: the default is finite, so ``--drain`` always ends."""
    settings = outage_settings(refused_url())
    engine = create_engine(settings)
    worker = AlertWorker(settings, create_session_factory(engine))
    try:
        with pytest.raises(DatabaseUnreachable):
            await asyncio.wait_for(worker.run(asyncio.Event(), drain=True), 60)
    finally:
        await engine.dispose()
