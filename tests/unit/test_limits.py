"""Table tests of :mod:`alertq.limits`, the one set of input rules for every edge."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alertq import limits


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("costsim_v2", True),
        ("a", True),
        ("A1_.:@-", True),
        ("x" * limits.MAX_NAME_LENGTH, True),
        ("x" * (limits.MAX_NAME_LENGTH + 1), False),
        ("", False),
        ("spaced name", False),
        ("-leading-dash", False),
        ("_leading_underscore", False),
        ("[/]", False),
        ("slash/name", False),
        ("tab\tname", False),
        ("é", False),
        ("nul\x00", False),
        (None, False),
        (12, False),
    ],
)
def test_check_name_accepts_only_the_api_path_rule(value: object, accepted: bool) -> None:
    if accepted:
        assert limits.check_name(value) == value
    else:
        with pytest.raises(ValueError, match="name"):
            limits.check_name(value)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("drift [/] by hand", None),
        ("x" * limits.MAX_TEXT_LENGTH, None),
        ("x" * (limits.MAX_TEXT_LENGTH + 1), "too long"),
        ("", "blank"),
        ("   \t\n", "blank"),
        ("nul\x00here", "NUL"),
        ("lone \ud800 surrogate", "UTF-8"),
        (None, "must be a string"),
    ],
)
def test_check_text_refuses_blank_long_and_unstorable_text(
    value: object, error: str | None
) -> None:
    if error is None:
        assert limits.check_text(value, "reason") == value
    else:
        with pytest.raises(ValueError, match=error) as info:
            limits.check_text(value, "reason")
        assert str(info.value).startswith("reason") or "reason" in str(info.value)


def test_check_optional_text_lets_none_through_and_checks_the_rest() -> None:
    assert limits.check_optional_text(None) is None
    with pytest.raises(ValueError, match="blank"):
        limits.check_optional_text("")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("1w", timedelta(weeks=1)),
        ("3600", timedelta(seconds=3600)),
        (" 2H ", timedelta(hours=2)),
        ("9999w", timedelta(weeks=9999)),
        ("inf", None),
        ("nan", None),
        ("1e20d", None),
        ("10000w", None),
        ("0", None),
        ("0s", None),
        ("-5m", None),
        ("1.5h", None),
        ("soon", None),
        ("", None),
        ("5y", None),
    ],
)
def test_parse_duration_accepts_whole_bounded_amounts_only(
    text: str, expected: timedelta | None
) -> None:
    if expected is not None:
        assert limits.parse_duration(text) == expected
    else:
        with pytest.raises(ValueError, match="invalid until"):
            limits.parse_duration(text, "until")


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (1, True),
        (1000, True),
        (0, False),
        (-1, False),
        (1001, False),
        (2147483647, False),
        (99999999999999999999, False),
        (True, False),
        (1.0, False),
        ("5", False),
    ],
)
def test_check_count_is_inclusive_and_refuses_non_integers(value: object, accepted: bool) -> None:
    if accepted:
        assert limits.check_count(value, "limit", 1, 1000) == value
    else:
        with pytest.raises(ValueError, match="limit"):
            limits.check_count(value, "limit", 1, 1000)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (0.0, True),
        (0.5, True),
        (-3, True),
        (limits.MAX_DRIFT_SCORE, True),
        (float("nan"), False),
        (float("inf"), False),
        (float("-inf"), False),
        (limits.MAX_DRIFT_SCORE * 10, False),
        (True, False),
        ("0.5", False),
    ],
)
def test_check_drift_score_refuses_nan_infinity_and_non_numbers(
    value: object, accepted: bool
) -> None:
    if accepted:
        assert limits.check_drift_score(value) == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(ValueError, match="score"):
            limits.check_drift_score(value)


@pytest.mark.parametrize(
    ("values", "expected", "error"),
    [
        (["sent"], ["sent"], None),
        (["sent", "failed", "superseded"], ["sent", "failed", "superseded"], None),
        (["sent", "sent"], ["sent"], None),
        (["bogus"], None, "unknown status 'bogus'"),
        (["sent", ""], None, "unknown status ''"),
        (["pending"], None, "refusing to purge pending rows"),
        ([], None, "at least one"),
    ],
)
def test_check_purge_statuses_knows_only_finished_statuses(
    values: list[str], expected: list[str] | None, error: str | None
) -> None:
    if error is None:
        assert limits.check_purge_statuses(values) == expected
    else:
        with pytest.raises(ValueError, match=error):
            limits.check_purge_statuses(values)


@pytest.mark.parametrize("value", [*limits.STATUSES])
def test_check_status_accepts_every_queue_status(value: str) -> None:
    assert limits.check_status(value) == value


@pytest.mark.parametrize("value", ["bogus", "", "PENDING", None])
def test_check_status_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError, match="unknown status"):
        limits.check_status(value)


def test_a_refused_value_is_echoed_short() -> None:
    with pytest.raises(ValueError) as info:
        limits.check_name("x y" * 5000)
    assert len(str(info.value)) < 200
