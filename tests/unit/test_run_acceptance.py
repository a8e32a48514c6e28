"""Acceptance: ``alertq run`` as a child process on SQLite, driven over HTTP the way an
operator (and Prometheus, and a load balancer's probes) would.

Split by test tier: these are the unit tests; see also
``tests/acceptance/test_run_acceptance.py``.
"""

from __future__ import annotations

import io

import pytest

from alertq.config import Settings
from alertq.runner import parse_http_addr, print_banner


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:8787", ("127.0.0.1", 8787)),
        ("[::1]:9000", ("::1", 9000)),
        (":8787", ("0.0.0.0", 8787)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_http_addr_forms(addr: str, expected: tuple[str, int]) -> None:
    assert parse_http_addr(addr) == expected


@pytest.mark.parametrize("addr", ["8787", "::1:8787", "host:port", "host:70000"])
def test_bad_http_addr_is_refused_with_the_reason(addr: str) -> None:
    with pytest.raises(ValueError, match="ALERTQ_HTTP_ADDR"):
        parse_http_addr(addr)


def test_the_banner_shows_urls_but_not_the_database_password() -> None:
    settings = Settings(
        database_url="postgresql+asyncpg://alertq:db-pa55-Vq3@db.example:5432/alertq",
        alertmanager_urls=["http://am-1:9093", "https://user:am-pa55@am-2:9093"],
    )
    out = io.StringIO()
    print_banner(settings, "http://127.0.0.1:8787", ["http://am-1:9093", "https://am-2:9093"], out)
    text = out.getvalue()
    assert "http://127.0.0.1:8787/" in text and "https://am-2:9093" in text
    assert "db-pa55-Vq3" not in text and "postgresql+asyncpg://alertq:***@db.example" in text
    assert "mutations off: set ALERTQ_API_TOKEN" in text


@pytest.mark.parametrize(
    ("auth", "says"),
    [
        ({}, "no auth"),
        ({"intake_username": "prom", "intake_password": "pw"}, "basic auth required"),
        ({"intake_bearer_token": "tok"}, "bearer token required"),
    ],
)
def test_the_banner_lists_the_relay_endpoints_and_their_auth(
    auth: dict[str, str], says: str
) -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///x.db", **auth)
    out = io.StringIO()
    print_banner(settings, "http://127.0.0.1:8787", ["http://am:9093"], out)
    lines = out.getvalue().splitlines()
    (intake,) = [line for line in lines if "/api/v2/alerts" in line]
    assert "POST http://127.0.0.1:8787/api/v2/alerts" in intake and says in intake
    (health,) = [line for line in lines if "/api/v2/status" in line]
    for path in ("/api/v2/status", "/-/healthy", "/-/ready"):
        assert f"http://127.0.0.1:8787{path}" in health
