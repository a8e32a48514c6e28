"""Findings of the red-team pass on the relay intake (issue 11 on top of issue 9): each
test failed on main before its fix.

Split by test tier: these are the acceptance tests; see also
``tests/unit/test_redteam_intake.py`` and ``tests/integration/test_redteam_intake.py``.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx

from tests.acceptance.test_cli_hardening import alertq
from tests.support import free_port
from tests.support.processes import alertq_env, start_alertq, until_ready, wait_until


async def test_bidi_and_line_separators_in_a_reason_are_shown_escaped_by_the_cli(
    db_url: str, tmp_path: Path
) -> None:
    # The CLI escaped C0/C1 controls only, while the text logs also escape format and
    # line-separator characters: a reason with U+202E (right-to-left override) printed
    # reversed text on the operator's terminal ("Trojan Source"). One rule for both now.
    reason = "ok \u202egnp.exe\u202c and \u2028 a new line"
    trip = await alertq(db_url, tmp_path, "breaker", "trip", "cb3", "--reason", reason)
    assert trip.returncode == 0, trip.describe()
    for command in (["breaker", "status"], ["breaker", "incidents"]):
        result = await alertq(db_url, tmp_path, *command)
        assert result.returncode == 0, result.describe()
        assert "\u202e" not in result.stdout and "\u2028" not in result.stdout, result.describe()
        assert "\\u202egnp.exe" in result.stdout, result.describe()


def _stall_a_body(port: int) -> socket.socket:
    """A connection that sent headers and 64 KiB of a 4 MB body, then stops sending."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        "POST /api/v2/alerts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 4000000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"[" + b" " * 65536)
    return sock


async def test_connections_are_bounded_so_stalled_bodies_cannot_exhaust_memory(
    db_url: str, tmp_path: Path
) -> None:
    # 300 connections that each sent 3 MiB of a legal 4 MiB body and then stalled took an
    # unauthenticated attacker from 101 MB to 1,024 MB of RSS (977 MB after they closed):
    # nothing bounded how many bodies were buffered at once.
    port = free_port()
    env = alertq_env(db_url, http_addr=f"127.0.0.1:{port}", max_connections=3)
    url = f"http://127.0.0.1:{port}"
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        stalled = [_stall_a_body(port) for _ in range(8)]
        try:

            def still_buffered() -> int:
                """Stalled bodies the server is still waiting on (no answer yet)."""
                waiting = 0
                for sock in stalled:
                    sock.setblocking(False)
                    try:
                        sock.recv(1, socket.MSG_PEEK)
                    except BlockingIOError:
                        waiting += 1
                return waiting

            # Over the limit a connection gets 503 at once instead of having its body
            # buffered: at most max_connections bodies are held.
            await wait_until(lambda: still_buffered() <= 3, within=10, message=server.describe)
        finally:
            for sock in stalled:
                sock.close()
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:

            async def served() -> bool:
                return (await client.get(f"{url}/-/healthy")).status_code == 200

            await wait_until(served, within=10, message=server.describe)


async def test_a_body_that_stalls_is_answered_408_and_its_connection_freed(
    db_url: str, tmp_path: Path
) -> None:
    # A stalled body held its connection and buffer for ever: nothing timed a body out.
    port = free_port()
    env = alertq_env(db_url, http_addr=f"127.0.0.1:{port}", body_timeout=1)
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, f"http://127.0.0.1:{port}")
        sock = _stall_a_body(port)
        try:
            sock.setblocking(False)
            answer = b""

            def answered() -> bool:
                nonlocal answer
                with contextlib.suppress(BlockingIOError):
                    answer += sock.recv(4096)
                return b"\r\n\r\n" in answer

            await wait_until(answered, within=10, message=server.describe)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        finally:
            sock.close()


async def test_connections_that_never_finish_their_headers_are_closed(
    db_url: str, tmp_path: Path
) -> None:
    # uvicorn times no request headers, and limit_concurrency counts every open connection:
    # ALERTQ_MAX_CONNECTIONS sockets that sent nothing (or a header line now and then) got
    # every other request, senders' alerts included, a 503 for as long as they stayed open.
    port = free_port()
    env = alertq_env(db_url, http_addr=f"127.0.0.1:{port}", max_connections=3, body_timeout=1)
    url = f"http://127.0.0.1:{port}"
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        partial = socket.create_connection(("127.0.0.1", port), timeout=10)
        partial.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:

                async def served() -> bool:
                    return (await client.get(f"{url}/-/healthy")).status_code == 200

                await wait_until(served, within=10, message=server.describe)
            partial.settimeout(10)
            assert partial.recv(4096).startswith(b"HTTP/1.1 408"), server.describe()
        finally:
            for sock in [*silent, partial]:
                sock.close()


async def test_request_headers_over_64_kib_are_refused_431(db_url: str, tmp_path: Path) -> None:
    # httptools buffered request headers without a bound: one 20 MB header was read whole.
    port = free_port()
    env = alertq_env(db_url, http_addr=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            big = await client.get(f"{url}/-/healthy", headers={"X-Big": "a" * 200_000})
            assert big.status_code == 431, server.describe()
            # Ordinary headers (a few KiB) still pass, on a new connection.
            ok = await client.get(f"{url}/-/healthy", headers={"X-Ok": "a" * 8000})
            assert ok.status_code == 200, server.describe()


def _unread_body(port: int, path: str) -> tuple[socket.socket, bytes]:
    """POST with a 1,000-byte body declared and none sent; the answer (the app reads no
    body: 401 from the intake, 404), then one byte of the body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n".encode()
    )
    answer = sock.recv(4096)
    sock.sendall(b"[")
    return sock, answer


async def test_a_connection_answered_before_its_body_was_read_is_closed(
    db_url: str, tmp_path: Path
) -> None:
    # Red-team pass 3: uvicorn's keep-alive timer is cancelled by any byte that arrives,
    # and body bytes after a complete response re-arm nothing. Unauthenticated, each
    # socket answered 401 (or 404) and then fed one more byte was held for ever: with
    # ALERTQ_MAX_CONNECTIONS of them, every other request got 503.
    port = free_port()
    env = alertq_env(
        db_url,
        http_addr=f"127.0.0.1:{port}",
        max_connections=4,
        intake_bearer_token="intake-secret",
    )
    url = f"http://127.0.0.1:{port}"
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        held = [_unread_body(port, "/api/v2/alerts") for _ in range(2)]
        held.append(_unread_body(port, "/no/such/route"))
        try:
            for sock, answer in held:
                head = answer.split(b"\r\n\r\n")[0].lower()
                assert head.startswith((b"http/1.1 401", b"http/1.1 404")), answer
                assert b"\r\nconnection: close" in head, answer
                sock.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(4096):  # the rest of the answer, then the server's close
                        pass
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                assert (await client.get(f"{url}/-/healthy")).status_code == 200
                # A request whose body was read keeps its connection (Prometheus reuses it).
                ok = await client.post(
                    f"{url}/api/v2/alerts",
                    json=[{"labels": {"alertname": "KeepAlive"}}],
                    headers={"Authorization": "Bearer intake-secret"},
                )
                assert ok.status_code == 200, ok.text
                assert ok.headers.get("connection") != "close"
        finally:
            for sock, _ in held:
                sock.close()


async def test_every_x_forwarded_for_line_counts_not_only_the_first(
    db_url: str, tmp_path: Path
) -> None:
    # Red-team pass 3: HAProxy's `option forwardfor` adds its own header line after the
    # client's; reading the first line alone made the audit actor (and the intake's
    # source address) whatever the client wrote.
    port = free_port()
    env = alertq_env(
        db_url, http_addr=f"127.0.0.1:{port}", api_token="t0ken", trusted_proxies="127.0.0.1"
    )
    url = f"http://127.0.0.1:{port}"
    with start_alertq(["run"], env, cwd=tmp_path) as server:
        await until_ready(server, url)
        headers = [
            ("Authorization", "Bearer t0ken"),
            ("X-Forwarded-For", "6.6.6.6"),  # written by the client
            ("X-Forwarded-For", "10.9.8.7"),  # added by the proxy
        ]
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            r = await client.post(
                f"{url}/api/breakers/xff/trip", json={"reason": "x"}, headers=headers
            )
        assert r.status_code == 200, r.text
        assert r.json()["disabled_by"] == "api@10.9.8.7", r.json()
