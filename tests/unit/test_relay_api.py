"""The relay's Alertmanager API in-process (httpx over ASGI), on SQLite and PostgreSQL:
one durable row per alert, one transaction per body, superseding, the source of each row,
the probes, intake auth, and the settings behind them.

Split by test tier: these are the unit tests; see also ``tests/integration/test_relay_api.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from alertq.config import Settings
from alertq.runner import warn_open_intake


def test_intake_and_tls_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ALERTQ_INTAKE_USERNAME", "prom")
    monkeypatch.setenv("ALERTQ_INTAKE_PASSWORD", "pw")
    monkeypatch.setenv("ALERTQ_TLS_CERT_FILE", "/etc/alertq/cert.pem")
    monkeypatch.setenv("ALERTQ_TLS_KEY_FILE", "/etc/alertq/key.pem")
    settings = Settings()
    assert settings.intake_username == "prom"
    assert settings.intake_password is not None
    assert settings.intake_password.get_secret_value() == "pw"
    assert str(settings.tls_cert_file) == "/etc/alertq/cert.pem"
    assert str(settings.tls_key_file) == "/etc/alertq/key.pem"
    monkeypatch.setenv("ALERTQ_INTAKE_BEARER_TOKEN", "t")
    with pytest.raises(ValueError, match="either basic auth or a bearer token"):
        Settings()
    monkeypatch.delenv("ALERTQ_INTAKE_BEARER_TOKEN")
    monkeypatch.delenv("ALERTQ_TLS_KEY_FILE")
    with pytest.raises(ValueError, match="TLS needs both"):
        Settings()


def test_open_intake_on_a_network_address_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    open_settings = Settings(database_url="sqlite+aiosqlite://")
    closed = Settings(database_url="sqlite+aiosqlite://", intake_bearer_token="t")
    with caplog.at_level(logging.WARNING, logger="alertq.runner"):
        assert warn_open_intake(open_settings, "127.0.0.1") is False
        assert warn_open_intake(open_settings, "::1") is False
        assert warn_open_intake(closed, "0.0.0.0") is False
        assert warn_open_intake(open_settings, "0.0.0.0") is True
    warnings = [r for r in caplog.records if "without credentials" in r.getMessage()]
    assert len(warnings) == 1
