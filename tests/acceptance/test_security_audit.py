"""Issue 9, finding 8: the audit actor cannot be spoofed with X-Forwarded-For unless the
peer is in ALERTQ_TRUSTED_PROXIES, and a message cannot forge a text log line.

Split by test tier: these are the acceptance tests; see also
``tests/unit/test_security_audit.py`` and ``tests/integration/test_security_audit.py``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.test_security_audit import AUTH, TOKEN
from tests.support import free_port
from tests.support.processes import alertq_env, start_alertq, wait_until


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_run_does_not_trust_forwarded_for_from_localhost(db_url: str, tmp_path: Path) -> None:
    """uvicorn's own proxy-header handling trusts 127.0.0.1; alertq run turns it off."""
    port = free_port()
    env = alertq_env(
        db_url,
        f"http://127.0.0.1:{free_port()}",
        http_addr=f"127.0.0.1:{port}",
        api_token=TOKEN,
    )
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10
        ) as client:

            async def serving() -> bool:
                assert server.running, server.describe()
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(serving, within=30, message=server.describe)
            trip = await client.post(
                "/api/breakers/b/trip",
                json={"reason": "line one\n2099-01-01 00:00:00,000 INFO forged: all clear"},
                headers={**AUTH, "X-Forwarded-For": "203.0.113.7"},
            )
            assert trip.status_code == 200, trip.text
            assert trip.json()["disabled_by"] == "api@127.0.0.1"
            await wait_until(lambda: "tripped via API" in server.stderr, within=10)
            assert "forged: all clear" in server.stderr
            for line in server.stderr.splitlines():
                assert not line.startswith("2099"), server.stderr
