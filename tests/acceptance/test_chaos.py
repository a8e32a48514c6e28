"""The short chaos runs (``bench/chaos.py --quick``, and ``--relay --quick``) as acceptance
tests.

Real processes throughout: a throw-away PostgreSQL cluster, two Alertmanagers, four
``alertq worker`` processes that are ``kill -9``-ed at random, one Alertmanager restarted
and PostgreSQL restarted mid-run. The run itself checks every alert against the queue and
the Alertmanagers' API; this test checks its verdict and that the faults really happened.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.support.alertmanager import AlertmanagerNotFound, AlertmanagerProcess
from tests.support.pgcluster import PostgresNotFound, check_available

ROOT = Path(__file__).resolve().parents[2]
CHAOS = ROOT / "bench" / "chaos.py"
# The quick run takes about a minute here (2 cores); the limit leaves room for a machine
# shared with other work, and stops a run that hangs.
TIME_LIMIT = 240.0


def _require_tools() -> None:
    """initdb/pg_ctl and Alertmanager, or fail in CI / skip locally."""
    try:
        check_available()
    except PostgresNotFound as exc:
        unavailable("PostgreSQL server binaries", str(exc))
    try:
        AlertmanagerProcess().close()
    except AlertmanagerNotFound as exc:
        unavailable("Alertmanager", str(exc))


def _figures(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


def _run_chaos(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """Run ``bench/chaos.py ARGS``; return the run, the figures of its last line, and the
    tail of its output (for assertion messages)."""
    _require_tools()
    # Its own session, so that a run that overruns can be stopped with everything it started.
    proc = subprocess.Popen(
        [sys.executable, str(CHAOS), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the run cleans up its processes on SIGTERM
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        pytest.fail(f"quick chaos run took more than {TIME_LIMIT:.0f} s:\n{stdout[-3000:]}")
    run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    output = run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines, output
    assert lines[-1].startswith("lost="), output[-4000:]
    return run, _figures(lines[-1]), output[-4000:]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.alertmanager
def test_no_alert_is_lost_or_stuck_when_workers_alertmanager_and_postgres_fail() -> None:
    run, figures, output = _run_chaos("--quick", "--seed", "7")

    assert figures["lost"] == "0", output
    assert figures["stuck"] == "0", output
    assert figures["worker_crashes"] == "0", output
    assert run.returncode == 0, output
    # Every alert is accounted for: 2,000 enqueued, of which every 500th is refused.
    assert int(figures["delivered"]) == 1996, output
    assert int(figures["failed"]) == 4, output
    assert int(figures["duplicates"]) <= int(figures["duplicate_bound"]), output
    # The faults happened: without them the run proves nothing.
    assert int(figures["kills"]) >= 3, output
    assert figures["pg_restarts"] == "1", output
    assert figures["am_restarts"] == "1", output


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.alertmanager
def test_no_relayed_alert_answered_200_is_lost_when_alertq_run_alertmanager_and_pg_fail() -> None:
    """Relay mode (issue 11): 3,000 alerts POSTed at 200/s to two ``alertq run`` through
    ``/api/v2/alerts``; every one that got a 200 is listed by an Alertmanager at the end."""
    run, figures, output = _run_chaos("--relay", "--quick", "--seed", "7")

    assert figures["lost"] == "0", output
    assert figures["stuck"] == "0", output
    assert figures["worker_crashes"] == "0", output
    assert run.returncode == 0, output
    assert int(figures["delivered"]) == 3000, output
    assert int(figures["duplicates"]) <= int(figures["duplicate_bound"]), output
    # The restarted Alertmanager lists every alert again: replay, not a sender's re-send.
    assert int(figures["listed_b"]) == 3000, output
    assert int(figures["kills"]) >= 3, output
    assert figures["pg_restarts"] == "1", output
    assert figures["am_restarts"] == "1", output
