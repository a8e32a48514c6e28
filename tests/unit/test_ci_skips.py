"""CI can never pass by skipping: the conftest hook turns any skip into a failure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import fail_skip_in_ci


def report(outcome: str, **extra: object) -> SimpleNamespace:
    return SimpleNamespace(
        outcome=outcome, skipped=outcome == "skipped", longrepr=("f.py", 1, "why"), **extra
    )


def test_a_skip_fails_in_ci() -> None:
    r = report("skipped")
    fail_skip_in_ci(r, in_ci=True)
    assert r.outcome == "failed"
    assert "CI=true fails skips" in str(r.longrepr)


@pytest.mark.parametrize(
    ("r", "in_ci"),
    [
        (report("skipped"), False),  # a developer's machine: skips stay skips
        (report("passed"), True),
        (report("skipped", wasxfail="known"), True),  # an expected failure is not a skip
    ],
)
def test_everything_else_is_left_as_it_was(r: SimpleNamespace, in_ci: bool) -> None:
    before = r.outcome
    fail_skip_in_ci(r, in_ci=in_ci)
    assert r.outcome == before
