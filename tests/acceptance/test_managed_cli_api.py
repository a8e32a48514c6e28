"""Managed alerts and heartbeats from the command line (real subprocesses) and over the
ops API (in-process): what they store, and bad input refused with the rule broken.

Split by test tier: these are the acceptance tests; see also
``tests/integration/test_managed_cli_api.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from alertq.models import CostSimAlertQueueModel, HeartbeatModel
from tests.integration.test_managed_cli_api import SQLITE_ONLY, Factory, managed
from tests.support.processes import alertq_env, run_alertq_async


async def queue(factory: Factory) -> list[CostSimAlertQueueModel]:
    async with factory() as s:
        q = CostSimAlertQueueModel
        return list((await s.scalars(select(q).order_by(q.id))).all())


async def test_cli_fire_resolve_heartbeat_and_listing(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    env = alertq_env(db_url)

    async def cli(*args: str) -> Any:
        return await run_alertq_async(list(args), env, cwd=tmp_path)

    fired = await cli(
        "fire", "alertname=DiskFull", "host=db1", "--annotation", "summary=disk 95% full",
        "--expires-in", "2h",
    )  # fmt: skip
    assert fired.returncode == 0, fired.describe()
    assert fired.stdout.startswith('fired: DiskFull{host="db1"}')
    (m,) = await managed(session_factory)
    assert m.labels == {"alertname": "DiskFull", "host": "db1"} and m.state == "firing"
    assert m.annotations == {"summary": "disk 95% full"} and m.expires_at is not None
    listed = await cli("alerts", "--managed", "--json")
    assert listed.returncode == 0 and '"state": "firing"' in listed.stdout
    resolved = await cli("resolve", "alertname=DiskFull", "host=db1")
    assert resolved.returncode == 0 and resolved.stdout.startswith("resolved:")
    again = await cli("resolve", "alertname=DiskFull", "host=db1")
    assert again.returncode == 0 and "not firing (nothing to do)" in again.stdout
    ping = await cli("heartbeat", "backup", "--within", "26h", "--label", "team=ops")
    assert ping.returncode == 0 and ping.stdout.startswith("ping recorded: backup")
    async with session_factory() as s:
        (hb,) = (await s.scalars(select(HeartbeatModel))).all()
    assert hb.window_seconds == 26 * 3600 and hb.labels == {"team": "ops"}
    assert [r.alert_type for r in await queue(session_factory)] == [
        "managed_firing",
        "managed_resolving",
    ]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fire", "alertname=A", "bad-name=x"], "labels: invalid label name 'bad-name'"),
        (["fire", "host=db1"], "labels.alertname: labels must include alertname"),
        (["fire", "alertname=A", "host="], "labels.host: label value must not be empty"),
        (["fire", "alertname"], "label 'alertname': expected name=value"),
        (["fire", "alertname=A", "--annotation", "1x=y"], "invalid annotation name '1x'"),
        (["fire", "alertname=A", "--expires-in", "0s"], "--expires-in: invalid duration"),
        (["fire", "alertname=A", "--expires-in", "9999d"], "at most 1000 days"),
        (["resolve", "alertname=A", "alertname=B"], "label 'alertname': given twice"),
        (["heartbeat", "backup", "--within", "soon"], "--within: invalid duration"),
        (["heartbeat", "backup", "--within", "1h", "-l", "heartbeat=x"], "set by alertq"),
        (["alerts"], "pass --managed"),
        # The API's name rule, for the CLI and the Python API too (red-team pass 3).
        (["heartbeat", "hb\nline2", "--within", "1h"], "invalid heartbeat name 'hb\\nline2'"),
        (["heartbeat", "nightly backup", "--within", "1h"], "invalid heartbeat name"),
        (["heartbeat", "x" * 201, "--within", "1h"], "heartbeat name is too long"),
        # Keyset cursors: malformed, or naming nothing (gone since the last page).
        (["alerts", "--managed", "--after", "x" * 300], "after: not a fingerprint"),
        (["alerts", "--managed", "--after", "0123456789abcdef"], "no managed alert has this"),
        (["heartbeats", "--after", "no such\tname"], "invalid after"),
        (["heartbeats", "--after", "nobody"], "no heartbeat has this name"),
    ],
)
async def test_cli_bad_input_exits_2_with_the_rule_and_stores_nothing(
    db_url: str, session_factory: Factory, tmp_path: Path, args: list[str], message: str
) -> None:
    result = await run_alertq_async(args, alertq_env(db_url), cwd=tmp_path)
    assert result.returncode == 2, result.describe()
    assert message in result.stderr, result.describe()
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert await managed(session_factory) == [] and await queue(session_factory) == []


@SQLITE_ONLY
async def test_cli_shows_control_characters_of_a_label_value_escaped(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    # Red-team pass 3: `alertq fire` echoed the labels as given, so an ESC sequence in a
    # value (a valid label value) reached the operator's terminal.
    env = alertq_env(db_url)
    value = "red\x1b[31mtext\u202e"
    fired = await run_alertq_async(["fire", "alertname=Esc", f"host={value}"], env, cwd=tmp_path)
    assert fired.returncode == 0, fired.describe()
    assert "\x1b" not in fired.stdout and "\u202e" not in fired.stdout
    assert 'host="red\\x1b[31mtext\\u202e"' in fired.stdout, fired.stdout
    (m,) = await managed(session_factory)
    assert m.labels["host"] == value  # stored and sent as given; only the echo escapes
    listed = await run_alertq_async(["alerts", "--managed"], env, cwd=tmp_path)
    assert listed.returncode == 0 and "\x1b" not in listed.stdout, listed.describe()


async def test_cli_unreachable_database_exits_1_without_the_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://alertq:s3cr3t@127.0.0.1:1/alertq"
    result = await run_alertq_async(["fire", "alertname=A"], alertq_env(url), cwd=tmp_path)
    assert result.returncode == 1, result.describe()
    # The one message every command prints for an unreachable database (cli.main).
    assert "cannot reach the database at" in result.stderr and "s3cr3t" not in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
