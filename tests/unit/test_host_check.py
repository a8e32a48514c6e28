"""Which ``Host`` headers the ops server answers (red-team pass 4: DNS rebinding). Pure:
``httpguard.host_allowed`` on settings, no server.

Split by test tier: these are the unit tests; see also
``tests/integration/test_security_body.py``.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from alertq.config import Settings
from alertq.httpguard import host_allowed

LOOPBACK = "127.0.0.1:8787"


@pytest.mark.parametrize(
    ("bind", "allowed", "host", "answered"),
    [
        # Bound to loopback (the default): loopback names only, unless listed.
        (LOOPBACK, [], "127.0.0.1:8787", True),
        (LOOPBACK, [], "localhost:8787", True),
        (LOOPBACK, [], "[::1]:8787", True),
        (LOOPBACK, [], "127.9.9.9", True),
        (LOOPBACK, [], "attacker.example:8787", False),
        (LOOPBACK, [], "attacker.example", False),
        (LOOPBACK, [], "10.0.0.5:8787", False),
        (LOOPBACK, [], None, True),  # HTTP/1.0: no browser sends none
        (LOOPBACK, ["alertq.example"], "ALERTQ.example:443", True),
        (LOOPBACK, ["alertq.example"], "other.example", False),
        (LOOPBACK, ["*"], "anything.example", True),
        ("[::1]:8787", [], "attacker.example", False),
        ("localhost:8787", [], "attacker.example", False),
        # Bound to a network address: any name, unless some are listed.
        ("0.0.0.0:8787", [], "alertq.internal:8787", True),
        (":8787", [], "alertq.internal", True),
        ("10.0.0.5:8787", ["alertq.internal"], "alertq.internal:8787", True),
        ("10.0.0.5:8787", ["alertq.internal"], "attacker.example", False),
        ("10.0.0.5:8787", ["[2001:db8::1]"], "[2001:db8::1]:8787", True),
    ],
)
def test_host_allowed(bind: str, allowed: list[str], host: str | None, answered: bool) -> None:
    settings = Settings(database_url="sqlite+aiosqlite://", http_addr=bind, allowed_hosts=allowed)
    assert host_allowed(settings, host) is answered


def test_allowed_hosts_come_from_the_environment_lowercased(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALERTQ_ALLOWED_HOSTS", "Alertq.Example, 10.0.0.5 ,[::1]")
    assert Settings().allowed_hosts == ["alertq.example", "10.0.0.5", "[::1]"]
    monkeypatch.setenv("ALERTQ_ALLOWED_HOSTS", "http://alertq.example/")
    with pytest.raises(ValidationError, match="not a host name"):
        Settings()
