"""The unit tier's guard (``tests/unit/conftest.py``) refuses every way to a service."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from collections.abc import Callable

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

ATTEMPTS: list[tuple[str, Callable[[], object], str]] = [
    ("tcp", lambda: socket.create_connection(("127.0.0.1", 5432), timeout=1), "socket connect"),
    ("listen", lambda: socket.create_server(("127.0.0.1", 0)), "socket bind"),
    ("subprocess", lambda: subprocess.run(["true"], check=True), "subprocess"),
    ("sqlite", lambda: sqlite3.connect(":memory:"), "SQLite connection"),
    ("engine", lambda: create_async_engine("sqlite+aiosqlite://"), "SQLAlchemy engine"),
]


@pytest.mark.parametrize(
    ("attempt", "named"), [a[1:] for a in ATTEMPTS], ids=[a[0] for a in ATTEMPTS]
)
def test_the_unit_tier_refuses_services(
    attempt: Callable[[], object], named: str, purity_guard: list[str]
) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"{named} in the unit tier"):
        attempt()
    assert purity_guard, "the refusal is recorded for the check after the test"
    purity_guard.clear()  # refusing was the point here: do not fail this test afterwards
