"""Issue 9, finding 8: the audit actor cannot be spoofed with X-Forwarded-For unless the
peer is in ALERTQ_TRUSTED_PROXIES, and a message cannot forge a text log line.

Split by test tier: these are the unit tests; see also
``tests/integration/test_security_audit.py`` and ``tests/acceptance/test_security_audit.py``.
"""

from __future__ import annotations

import io
import logging

import pytest

from alertq.config import Settings
from alertq.logs import configure_logging

TEXT_LINE_START = "20"  # every text log line starts with the year


def test_a_trusted_proxy_that_is_not_an_address_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTQ_CONFIG_FILE", "/nonexistent/alertq.toml")
    monkeypatch.setenv("ALERTQ_TRUSTED_PROXIES", "10.0.0.0/8,proxy.example")
    with pytest.raises(ValueError, match=r"invalid trusted proxy 'proxy\.example'"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_text_logs_escape_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("text", "INFO")
    try:
        hostile = "a\nb\r\x1b[31mred\u202eevil\u2028c\x00d\x85e"
        logging.getLogger("alertq.test").info("reason: %s", hostile)
        logging.getLogger("alertq.test").warning("%s", "x\n2099-01-01 forged line")
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(r"reason: a\nb\r\x1b[31mred\u202eevil\u2028c\x00d\x85e")
    assert all(line.startswith(TEXT_LINE_START) for line in lines)
    assert "\x1b" not in stream.getvalue()
