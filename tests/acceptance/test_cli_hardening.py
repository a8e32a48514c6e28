"""The CLI's edges (issue 9, findings 4 to 7 and the CLI half of 9), run as an operator runs
it: a child ``alertq`` process against a real database.

* user data prints verbatim, never as Rich markup;
* a database that cannot be reached is one line (password hidden) and exit 1;
* every bad argument is one line naming it and exit 2, and touches nothing;
* breaker names and reasons follow the same rule as the API.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from alertq import limits
from alertq.alerts import MAX_PAYLOAD_BYTES
from alertq.models import CostSimAlertQueueModel, CostSimCBIncidentModel, CostSimCBStateModel
from tests.integration.test_api import TOKEN, api_settings, serve
from tests.support import free_port
from tests.support.processes import Finished, alertq_env, run_alertq_async

Factory = async_sessionmaker[AsyncSession]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
PASSWORD = "s3cret-pw-9f2"


async def counts(factory: Factory) -> tuple[int, int, int]:
    """(queue rows, breakers, incidents)."""
    async with factory() as s:
        found = [
            int(await s.scalar(select(func.count()).select_from(model)) or 0)
            for model in (CostSimAlertQueueModel, CostSimCBStateModel, CostSimCBIncidentModel)
        ]
    return found[0], found[1], found[2]


def one_line(result: Finished) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert "Traceback" not in result.stderr
    return lines[0]


async def alertq(db_url: str, tmp_path: Path, *args: str, **env: object) -> Finished:
    return await run_alertq_async(list(args), alertq_env(db_url, **env), cwd=tmp_path)


# --------------------------------------------------------------- finding 4: no markup


MARKUP_REASON = "drift [/] and [red]not red[/red] :smile: [link=http://x]y[/link]"


async def test_breaker_status_and_incidents_print_a_markup_reason_verbatim(
    db_url: str, tmp_path: Path
) -> None:
    trip = await alertq(db_url, tmp_path, "breaker", "trip", "cb1", "--reason", MARKUP_REASON)
    assert trip.returncode == 0, trip.describe()

    for command in (["breaker", "status"], ["breaker", "incidents"]):
        result = await alertq(db_url, tmp_path, *command)
        assert result.returncode == 0, result.describe()
        assert MARKUP_REASON in result.stdout, result.describe()


async def test_control_characters_in_a_reason_are_shown_escaped_not_sent_to_the_terminal(
    db_url: str, tmp_path: Path
) -> None:
    reason = "evil \x1b[31mred\x1b[0m \x07 bell"
    trip = await alertq(db_url, tmp_path, "breaker", "trip", "cb2", "--reason", reason)
    assert trip.returncode == 0, trip.describe()

    for command in (["breaker", "status"], ["breaker", "incidents"]):
        result = await alertq(db_url, tmp_path, *command)
        assert result.returncode == 0, result.describe()
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, result.describe()
        assert "evil \\x1b[31mred\\x1b[0m \\x07 bell" in result.stdout, result.describe()


@SQLITE_ONLY
async def test_enqueue_prints_a_label_named_markup_and_the_rule_verbatim(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"labels": {"alertname": "A", "[/]": "x"}}]))

    result = await alertq(db_url, tmp_path, "enqueue", "--file", str(bad), "--type", "t")

    assert result.returncode == 2, result.describe()
    line = one_line(result)
    assert "'[/]'" in line and "must match [a-zA-Z_][a-zA-Z0-9_]*" in line, line
    assert await counts(session_factory) == (0, 0, 0)


# ------------------------------------------------- finding 5: unreachable database


def refused_url() -> str:
    """PostgreSQL URL on a port nothing listens on, with a password that must not leak."""
    return f"postgresql+asyncpg://alertq:{PASSWORD}@127.0.0.1:{free_port()}/alertq"


def payload_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.json"
    path.write_text(json.dumps([{"labels": {"alertname": "A"}}]))
    return path


def unreachable_commands(tmp_path: Path) -> dict[str, list[str]]:
    return {
        "stats": ["stats"],
        "enqueue": ["enqueue", "--file", str(payload_file(tmp_path)), "--type", "t"],
        "db-upgrade": ["db", "upgrade"],
        "breaker-status": ["breaker", "status"],
    }


@pytest.mark.parametrize("command", ["stats", "enqueue", "db-upgrade", "breaker-status"])
async def test_a_refused_database_is_one_line_with_the_url_and_exit_1(
    tmp_path: Path, command: str
) -> None:
    url = refused_url()
    args = unreachable_commands(tmp_path)[command]

    result = await run_alertq_async(args, alertq_env(url), cwd=tmp_path)

    assert result.returncode == 1, result.describe()
    line = one_line(result)
    assert "cannot reach the database" in line and "127.0.0.1:" in line, line
    assert "alertq:***@" in line, line
    assert PASSWORD not in result.stderr + result.stdout


async def test_an_unopenable_sqlite_file_is_one_line_every_time(tmp_path: Path) -> None:
    # Red-team pass 4: one run in four also printed aiosqlite's worker-thread traceback
    # ("Event loop is closed") after the one line. Twelve at once: all one line.
    env = alertq_env(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'q.db'}")
    results = await asyncio.gather(
        *(run_alertq_async(["stats"], env, cwd=tmp_path) for _ in range(12))
    )
    for result in results:
        assert result.returncode == 1, result.describe()
        assert "unable to open database file" in one_line(result), result.describe()


async def test_debug_shows_the_traceback_of_a_refused_database(tmp_path: Path) -> None:
    result = await run_alertq_async(["--debug", "stats"], alertq_env(refused_url()), cwd=tmp_path)
    assert result.returncode == 1, result.describe()
    assert "Traceback" in result.stderr and "ConnectionRefusedError" in result.stderr


async def test_worker_drain_gives_up_on_a_refused_database_with_one_line(
    tmp_path: Path,
) -> None:
    """Needs helper ``core``'s bounded wait in ``worker --drain`` (it raises
    ``DatabaseUnreachable``); the CLI's half is printing that as one line, exit 1."""
    result = await run_alertq_async(
        ["worker", "--drain"], alertq_env(refused_url()), cwd=tmp_path, within=180
    )
    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert PASSWORD not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "127.0.0.1:" in last and "***" in last, result.describe()


# ------------------------------------------- findings 6, 7, 9: arguments at the edge


def _big(tmp_path: Path) -> str:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_PAYLOAD_BYTES + 1))
    return str(path)


BAD_ARGUMENTS: list[tuple[str, list[str], str]] = [
    ("purge-older-than-inf", ["purge", "--older-than", "inf"], "--older-than"),
    ("purge-older-than-float", ["purge", "--older-than", "1.5h"], "--older-than"),
    ("purge-status-bogus", ["purge", "--older-than", "1d", "--status", "bogus"], "--status"),
    ("purge-status-empty", ["purge", "--older-than", "1d", "--status", ","], "--status"),
    ("trip-until-1e20d", ["breaker", "trip", "x", "--reason", "r", "--until", "1e20d"], "--until"),
    ("trip-empty-name", ["breaker", "trip", "", "--reason", "r"], "NAME"),
    ("trip-spaced-name", ["breaker", "trip", "spaced name", "--reason", "r"], "NAME"),
    ("trip-long-name", ["breaker", "trip", "n" * 201, "--reason", "r"], "NAME"),
    ("trip-empty-reason", ["breaker", "trip", "x", "--reason", ""], "--reason"),
    ("trip-blank-reason", ["breaker", "trip", "x", "--reason", "  "], "--reason"),
    ("trip-long-reason", ["breaker", "trip", "x", "--reason", "r" * 1001], "--reason"),
    ("reset-blank-reason", ["breaker", "reset", "x", "--reason", " "], "--reason"),
    (
        "incidents-limit-huge",
        ["breaker", "incidents", "--limit", "99999999999999999999"],
        "--limit",
    ),
    ("incidents-limit-0", ["breaker", "incidents", "--limit", "0"], "--limit"),
    ("retry-max-retries-int32", ["retry-failed", "--max-retries", "2147483647"], "--max-retries"),
    ("retry-max-retries-0", ["retry-failed", "--max-retries", "0"], "--max-retries"),
    (
        "drift-samples-huge",
        ["breaker", "report-drift", "b", "0.5", "--samples", "99999999999"],
        "--samples",
    ),
    ("drift-nan", ["breaker", "report-drift", "b", "nan"], "SCORE"),
    ("drift-inf", ["breaker", "report-drift", "b", "inf"], "SCORE"),
    (
        "enqueue-incident-16k",
        ["enqueue", "--file", "{good}", "--type", "t", "--incident", "i" * 16_000],
        "--incident",
    ),
    ("enqueue-type-long", ["enqueue", "--file", "{good}", "--type", "t" * 101], "--type"),
    ("enqueue-type-blank", ["enqueue", "--file", "{good}", "--type", " "], "--type"),
    (
        "enqueue-breaker-long",
        ["enqueue", "--file", "{good}", "--type", "t", "--breaker", "b" * 201],
        "--breaker",
    ),
    ("enqueue-dev-zero", ["enqueue", "--file", "/dev/zero", "--type", "t"], "--file"),
    ("enqueue-huge-file", ["enqueue", "--file", "{big}", "--type", "t"], "--file"),
    ("enqueue-directory", ["enqueue", "--file", "{dir}", "--type", "t"], "--file"),
    ("worker-concurrency-0", ["worker", "--concurrency", "0"], "--concurrency"),
    ("worker-concurrency-65", ["worker", "--concurrency", "65"], "--concurrency"),
    ("run-concurrency-65", ["run", "--concurrency", "65"], "--concurrency"),
]


@pytest.mark.parametrize(
    ("args", "flag"), [(a, f) for _, a, f in BAD_ARGUMENTS], ids=[i for i, _, _ in BAD_ARGUMENTS]
)
async def test_a_bad_argument_exits_2_with_one_line_naming_it_and_changes_nothing(
    db_url: str, session_factory: Factory, tmp_path: Path, args: list[str], flag: str
) -> None:
    files = {"good": str(payload_file(tmp_path)), "big": "", "dir": str(tmp_path)}
    if "{big}" in args:
        files["big"] = _big(tmp_path)
    args = [a.format(**files) if a.startswith("{") else a for a in args]

    result = await alertq(db_url, tmp_path, *args, failure_threshold=1)

    assert result.returncode == 2, result.describe()
    line = one_line(result)
    assert f"invalid {flag}:" in line, line
    assert len(line) < 400, line
    assert result.stdout == ""
    assert await counts(session_factory) == (0, 0, 0)


async def test_report_drift_nan_does_not_trip_even_at_threshold_1(
    db_url: str, session_factory: Factory, tmp_path: Path
) -> None:
    result = await alertq(
        db_url, tmp_path, "breaker", "report-drift", "b", "nan", failure_threshold=1
    )
    assert result.returncode == 2, result.describe()
    assert await counts(session_factory) == (0, 0, 0)

    result = await alertq(
        db_url, tmp_path, "breaker", "report-drift", "b", "0.9", failure_threshold=1
    )
    assert result.returncode == 0, result.describe()
    assert await counts(session_factory) == (1, 1, 1)  # the control: a real score trips


@SQLITE_ONLY
async def test_a_usage_error_is_one_line_and_exit_2(db_url: str, tmp_path: Path) -> None:
    result = await alertq(db_url, tmp_path, "stats", "--no-such-option")
    assert result.returncode == 2, result.describe()
    assert "--no-such-option" in one_line(result)


# --------------------------------------------------- finding 7: one rule for names


NAMES = ["ok_name.v2:@-", "spaced name", "-dash-first", "n" * 200, "n" * 201, "ümlaut"]


@SQLITE_ONLY
@pytest.mark.parametrize("name", NAMES, ids=["ok", "spaced", "dash-first", "200", "201", "umlaut"])
async def test_the_cli_and_the_api_accept_and_refuse_the_same_breaker_names(
    db_url: str, session_factory: Factory, tmp_path: Path, name: str
) -> None:
    cli = await alertq(db_url, tmp_path, "breaker", "trip", name, "--reason", "r")
    async with serve(api_settings(db_url), session_factory) as (client, _):
        api = await client.post(
            f"/api/breakers/{name}/reset",
            json={"reason": "done"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    try:
        limits.check_name(name)
        valid = True
    except ValueError:
        valid = False

    assert (cli.returncode == 0) is valid, cli.describe()
    assert (api.status_code == 200) is valid, api.text
    if not valid:
        assert cli.returncode == 2 and api.status_code == 422


@SQLITE_ONLY
@pytest.mark.parametrize("reason", ["", "   "], ids=["empty", "blank"])
async def test_the_cli_and_the_api_both_refuse_an_empty_reason(
    db_url: str, session_factory: Factory, tmp_path: Path, reason: str
) -> None:
    cli = await alertq(db_url, tmp_path, "breaker", "trip", "cb", "--reason", reason)
    async with serve(api_settings(db_url), session_factory) as (client, _):
        api = await client.post(
            "/api/breakers/cb/trip",
            json={"reason": reason},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert cli.returncode == 2 and "--reason" in one_line(cli), cli.describe()
    assert api.status_code == 422, api.text
    assert await counts(session_factory) == (0, 0, 0)
