"""Issue 9, finding 8: the audit actor cannot be spoofed with X-Forwarded-For unless the
peer is in ALERTQ_TRUSTED_PROXIES, and a message cannot forge a text log line.

Split by test tier: these are the unit tests; see also
``tests/integration/test_security_audit.py`` and ``tests/acceptance/test_security_audit.py``.
"""

from __future__ import annotations

import io
import ipaddress
import logging

import pytest

from alertq.config import Settings
from alertq.httpguard import forwarded_client
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


@pytest.mark.parametrize(
    ("peer", "chain", "client"),
    [
        # A dual-stack listener reports IPv4 peers as IPv4-mapped IPv6 (red-team pass 3).
        ("::ffff:10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("10.0.0.5", "203.0.113.9", "203.0.113.9"),
        ("::ffff:10.0.0.6", "203.0.113.9", "::ffff:10.0.0.6"),  # not a trusted proxy
        # Every line joined by the guard: the proxy's own line comes last and counts.
        ("10.0.0.5", "6.6.6.6,198.51.100.4", "198.51.100.4"),
        ("10.0.0.5", "::ffff:198.51.100.4", "198.51.100.4"),
    ],
)
def test_the_client_behind_a_trusted_proxy(peer: str, chain: str, client: str) -> None:
    trusted = [ipaddress.ip_network("10.0.0.5/32")]
    assert forwarded_client(peer, chain, trusted) == client
