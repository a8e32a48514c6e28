"""Issue 9, finding 1: an empty or blank ALERTQ_API_TOKEN means mutations are off
everywhere (the check, the banner, the start-up line and the status page read one
function), and finding 2's first half: the token is checked before the body is read.

Split by test tier: these are the acceptance tests; see also
``tests/integration/test_security_auth.py``.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.test_security_auth import MUTATIONS, TOKEN
from tests.support import free_port
from tests.support.processes import alertq_env, start_alertq, wait_until


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_run_says_on_start_up_whether_mutations_are_on(db_url: str, tmp_path: Path) -> None:
    for token, expected in (("   ", "API mutations are off"), (TOKEN, "API mutations are on")):
        port = free_port()
        env = alertq_env(
            db_url,
            f"http://127.0.0.1:{free_port()}",
            http_addr=f"127.0.0.1:{port}",
            api_token=token,
        )
        with start_alertq(["run"], env, cwd=tmp_path) as server:
            await wait_until(
                lambda: "API mutations are" in server.stderr, within=30, message=server.describe
            )
            lines = [line for line in server.stderr.splitlines() if "API mutations are" in line]
            assert len(lines) == 1 and expected in lines[0], server.describe()
            assert TOKEN not in server.stderr + server.stdout
            if token.strip():
                continue
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10
            ) as client:
                purge = await client.post("/api/alerts/purge", json=MUTATIONS[0][1])
                assert purge.status_code == 403, purge.text
                assert "mutations are off" in (await client.get("/")).text
