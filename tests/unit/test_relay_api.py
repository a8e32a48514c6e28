"""The relay's Alertmanager API in-process (httpx over ASGI), on SQLite and PostgreSQL:
one durable row per alert, one transaction per body, superseding, the source of each row,
the probes, intake auth, and the settings behind them.

Split by test tier: these are the unit tests; see also ``tests/integration/test_relay_api.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from alertq.config import Settings
from alertq.runner import warn_open_intake

# A self-signed pair for tests only (openssl req -x509 -nodes -days 36500, CN 127.0.0.1).
TLS = Path(__file__).parents[1] / "support" / "tls"


def test_intake_and_tls_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ALERTQ_INTAKE_USERNAME", "prom")
    monkeypatch.setenv("ALERTQ_INTAKE_PASSWORD", "pw")
    monkeypatch.setenv("ALERTQ_TLS_CERT_FILE", str(TLS / "cert.pem"))
    monkeypatch.setenv("ALERTQ_TLS_KEY_FILE", str(TLS / "key.pem"))
    settings = Settings()
    assert settings.intake_username == "prom"
    assert settings.intake_password is not None
    assert settings.intake_password.get_secret_value() == "pw"
    assert settings.tls_cert_file == TLS / "cert.pem"
    assert settings.tls_key_file == TLS / "key.pem"
    monkeypatch.setenv("ALERTQ_INTAKE_BEARER_TOKEN", "t")
    with pytest.raises(ValueError, match="either basic auth or a bearer token"):
        Settings()
    monkeypatch.delenv("ALERTQ_INTAKE_BEARER_TOKEN")
    monkeypatch.delenv("ALERTQ_TLS_KEY_FILE")
    with pytest.raises(ValueError, match="TLS needs both"):
        Settings()


@pytest.mark.parametrize(
    ("env", "name"),
    [
        # Red-team pass 4: these started, then failed with exit 1 and a stray traceback
        # (the server's TLS) or "failed: FileNotFoundError" (the client's CA file).
        ({"ALERTQ_TLS_CERT_FILE": "missing.pem", "ALERTQ_TLS_KEY_FILE": "key.pem"}, "TLS_CERT"),
        ({"ALERTQ_TLS_CERT_FILE": "cert.pem", "ALERTQ_TLS_KEY_FILE": "cert.pem"}, "TLS_CERT"),
        ({"ALERTQ_ALERTMANAGER_CA_FILE": "missing.pem"}, "ALERTMANAGER_CA_FILE"),
        ({"ALERTQ_ALERTMANAGER_CA_FILE": "key.pem"}, "ALERTMANAGER_CA_FILE"),
    ],
)
def test_tls_files_that_cannot_be_loaded_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for var, file in env.items():
        monkeypatch.setenv(var, str(TLS / file))
    with pytest.raises(ValueError, match=f"ALERTQ_{name}.*: cannot load it") as refused:
        Settings(database_url="sqlite+aiosqlite://")
    assert "PRIVATE KEY" not in str(refused.value)


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
