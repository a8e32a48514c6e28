"""The unit tier is pure: no database (SQLite included), no network socket, no subprocess.

An autouse fixture makes each way out fail the test with a message that names it, so a
test that needs a service cannot land in this tier by accident. The refusal is also
recorded and checked after the test, in case the code under test swallowed it (a thread,
a broad ``except``).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest
from sqlalchemy.engine import Engine

HINT = "unit tests are pure; move this test to tests/integration or tests/acceptance"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def purity_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """Refuse sockets, subprocesses, SQLite and SQLAlchemy engines; yield what was tried."""
    tried: list[str] = []

    def refuse(what: str) -> Callable[..., NoReturn]:
        def refused(*args: object, **kwargs: object) -> NoReturn:
            tried.append(what)
            pytest.fail(f"{what} in the unit tier: {HINT}", pytrace=False)

        return refused

    monkeypatch.setattr(socket.socket, "connect", refuse("a socket connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("a socket connect"))
    monkeypatch.setattr(socket.socket, "bind", refuse("a socket bind"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    monkeypatch.setattr(os, "fork", refuse("os.fork"))
    monkeypatch.setattr(os, "system", refuse("os.system"))
    monkeypatch.setattr(sqlite3, "connect", refuse("an SQLite connection"))
    monkeypatch.setattr(Engine, "__init__", refuse("an SQLAlchemy engine"))
    yield tried
    if tried and not request.node.stash.get(_CALL_FAILED, False):
        pytest.fail(f"{', '.join(sorted(set(tried)))} in the unit tier: {HINT}", pytrace=False)
