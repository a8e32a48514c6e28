"""Settings that cannot work are refused at start-up. Every number is bounded and finite:
``ALERTQ_LEASE_SECONDS=1e12`` once started a worker whose every claim overflowed a datetime
(a traceback a second, nothing delivered).

Split by test tier: these are the unit tests; the refusal at the CLI's edge (exit 2, one
line) is in ``tests/acceptance/test_cli.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import annotated_types
import pytest
from pydantic import ValidationError

from alertq.config import Settings, UnsafeConfigFile


def numeric_fields() -> dict[str, type]:
    """Each ``int`` or ``float`` field (optional or not) and its number type."""
    found: dict[str, type] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        for kind in (float, int):
            if annotation in (kind, kind | None):
                found[name] = kind
                break
    return found


def upper_bound(name: str) -> float:
    for rule in Settings.model_fields[name].metadata:
        if isinstance(rule, annotated_types.Le):
            return float(rule.le)  # type: ignore[arg-type]
        if isinstance(rule, annotated_types.Lt):
            return float(rule.lt)  # type: ignore[arg-type]
    raise AssertionError(f"{name} has no upper bound")


def test_the_scan_sees_the_numeric_settings() -> None:
    fields = numeric_fields()
    assert {"lease_seconds", "max_attempts", "concurrency", "default_disable_ttl"} <= set(fields)
    assert "database_url" not in fields


@pytest.mark.parametrize("name", sorted(numeric_fields()))
def test_every_numeric_setting_has_an_upper_bound_its_env_var_enforces(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    high = upper_bound(name)
    over = int(high) + 1 if numeric_fields()[name] is int else high * 2 + 1
    monkeypatch.setenv(f"ALERTQ_{name.upper()}", str(over))
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("name", sorted(n for n, kind in numeric_fields().items() if kind is float))
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
def test_no_float_setting_takes_infinity_or_nan(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"ALERTQ_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("ALERTQ_LEASE_SECONDS", "1e12"),
        ("ALERTQ_MAX_ATTEMPTS", "3000000000"),  # over the 32-bit column
        ("ALERTQ_BACKOFF_CAP", "1e300"),
        ("ALERTQ_RESEND_INTERVAL", "1e15"),
        ("ALERTQ_LOG_LEVEL", "garbage"),
        ("ALERTQ_INSTANCE", "x" * 201),
        ("ALERTQ_RUNBOOK_URL", "https://r.example/" + "x" * 2048),
    ],
)
def test_values_that_once_started_a_broken_worker_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=env.removeprefix("ALERTQ_").lower()):
        Settings()


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR", "critical"])
def test_log_level_takes_the_standard_names_in_any_case(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    monkeypatch.setenv("ALERTQ_LOG_LEVEL", level)
    assert Settings().log_level == level


@pytest.mark.parametrize("name", ["concurrency", "default_disable_ttl"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_optional_number_means_unset(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"ALERTQ_{name.upper()}", value)
    assert getattr(Settings(), name) is None


def test_the_bounds_admit_the_defaults_and_each_bound_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Settings()  # every default is within its bounds
    for name, kind in numeric_fields().items():
        if name == "alertmanager_timeout":
            continue  # must stay under lease_seconds: checked with it below
        high = upper_bound(name)
        with monkeypatch.context() as m:
            m.setenv(f"ALERTQ_{name.upper()}", str(int(high) if kind is int else high))
            assert getattr(Settings(), name) == high, name
    monkeypatch.setenv("ALERTQ_LEASE_SECONDS", "3600")
    monkeypatch.setenv("ALERTQ_ALERTMANAGER_TIMEOUT", "600")
    assert Settings().alertmanager_timeout == 600


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        # Red-team pass 3: each started, then failed at the first connect or request with
        # exit 1 and a driver's message, or never let a client in.
        ("ALERTQ_DATABASE_URL", "postgresql+asyncpg://u:pw@h:99999/db", "Port out of range"),
        ("ALERTQ_DATABASE_URL", "postgresql+asyncpg://u:pw@h:ab/db", "not a database URL"),
        ("ALERTQ_DATABASE_URL", "mysql://u:pw@h/db", "unsupported database 'mysql'"),
        ("ALERTQ_DATABASE_URL", "alertq.db", "unsupported database ''"),
        ("ALERTQ_ALERTMANAGER_URLS", "http://am:9093/?x=1", "must not have a query"),
        # Red-team pass 4: a password with '/', '?' or '#' was taken for the host's end and
        # shown, whole or in part, in the banner, the logs, /metrics and this message.
        ("ALERTQ_ALERTMANAGER_URLS", "http://am:pw/ssSECRET@h:9093", "an '@' after its host"),
        ("ALERTQ_ALERTMANAGER_URLS", "http://am:pw#ssSECRET@h:9093", "an '@' after its host"),
        ("ALERTQ_ALERTMANAGER_URLS", "http://am:pw?ssSECRET@h:9093", "an '@' after its host"),
        ("ALERTQ_DATABASE_URL", "postgresql+asyncpg://u:pw#ssSECRET@h/db", "not a database URL"),
        ("ALERTQ_DATABASE_URL", "postgresql+asyncpg://u:pw/ssSECRET@h/db", "not a database URL"),
        ("ALERTQ_ALERTMANAGER_URLS", "http://a:9093,http://a:9093/", "listed twice"),
        ("ALERTQ_ALERTMANAGER_URLS", ",", "at least one Alertmanager URL"),
        ("ALERTQ_DATABASE_URL", "sqlite:///q.db", "use sqlite+aiosqlite://"),
        ("ALERTQ_RUNBOOK_URL", "javascript:alert(1)", "must be an http(s) URL"),
        ("ALERTQ_RUNBOOK_URL", 'https://a.b/"><script>', "must be an http(s) URL"),
        ("ALERTQ_DATABASE_URL", "postgresql+psycopg2://u@h/db", "use postgresql+asyncpg://"),
        ("ALERTQ_API_TOKEN", "tökén", "ALERTQ_API_TOKEN must be visible ASCII"),
        ("ALERTQ_INTAKE_BEARER_TOKEN", "a b", "ALERTQ_INTAKE_BEARER_TOKEN must be visible ASCII"),
    ],
)
def test_settings_no_client_or_driver_could_use_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        Settings()
    shown = str(refused.value)
    assert "pw@" not in shown and "tökén" not in shown and "ssSECRET" not in shown
    assert "'pw" not in shown


def test_an_intake_username_with_a_colon_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTQ_INTAKE_USERNAME", "svc:prom")
    monkeypatch.setenv("ALERTQ_INTAKE_PASSWORD", "secret")
    with pytest.raises(ValidationError, match="must not contain ':'"):
        Settings()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./alertq.db",
        "sqlite+aiosqlite:////var/lib/alertq/alertq.db",
        "postgresql+asyncpg://alertq:pw@db.example:5432/alertq",
        "postgresql://alertq@db.example/alertq",  # create_engine picks asyncpg
        "postgresql+asyncpg://alertq@[::1]:5432/alertq?ssl=require",
    ],
)
def test_usual_database_urls_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("ALERTQ_DATABASE_URL", url)
    assert Settings().database_url == url


def test_a_config_file_anyone_may_write_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Red-team pass 3: `alertq fire` run in /tmp read /tmp/alertq.toml, anyone's file.
    toml = tmp_path / "alertq.toml"
    toml.write_text('database_url = "postgresql+asyncpg://evil@attacker.example/db"\n')
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(toml))
    monkeypatch.delenv("ALERTQ_DATABASE_URL", raising=False)
    toml.chmod(0o644)
    assert Settings().database_url.endswith("attacker.example/db")  # an own file is read
    toml.chmod(0o666)
    with pytest.raises(UnsafeConfigFile, match="writable by everyone"):
        Settings()
