"""The Alertmanager delivery adapter (alertq.delivery) against a fault-injecting stub and
against a real Alertmanager.

Split by test tier: these are the integration tests; see also ``tests/unit/test_delivery.py``
and ``tests/acceptance/test_delivery.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

import alertq.delivery as delivery
from alertq.config import Settings
from alertq.delivery import (
    AlertmanagerClient,
    ErrorClass,
    classify_status,
)
from tests.conftest import unavailable
from tests.support import free_port
from tests.support.stub import StubAlertmanager

ALERTS: list[dict[str, Any]] = [
    {"labels": {"alertname": "DiskFull", "instance": "db1"}, "annotations": {"summary": "90%"}},
    {"labels": {"alertname": "DiskFull", "instance": "db2"}},
]


# Slack for "costs at most about the timeout": scheduling and connection set-up.
MARGIN = 0.75


@pytest.fixture
def stub() -> Iterator[StubAlertmanager]:
    with StubAlertmanager() as s:
        yield s


@pytest.fixture
def stub2() -> Iterator[StubAlertmanager]:
    with StubAlertmanager() as s:
        yield s


@pytest.fixture
async def client(stub: StubAlertmanager) -> AsyncIterator[AlertmanagerClient]:
    async with AlertmanagerClient([stub.url], timeout=2.0) as c:
        yield c


def refused_url() -> str:
    """A URL on which nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (202, None),
        (400, ErrorClass.PERMANENT),
        (413, ErrorClass.PERMANENT),
        (415, ErrorClass.PERMANENT),
        (422, ErrorClass.PERMANENT),
        (301, ErrorClass.MISCONFIGURED),
        (302, ErrorClass.MISCONFIGURED),
        (401, ErrorClass.MISCONFIGURED),
        (403, ErrorClass.MISCONFIGURED),
        (404, ErrorClass.MISCONFIGURED),
        (405, ErrorClass.MISCONFIGURED),
        (410, ErrorClass.MISCONFIGURED),
        (408, ErrorClass.RETRYABLE),
        (429, ErrorClass.RETRYABLE),
        (500, ErrorClass.RETRYABLE),
        (502, ErrorClass.RETRYABLE),
        (503, ErrorClass.RETRYABLE),
    ],
)
async def test_http_status_is_classified(
    stub: StubAlertmanager, client: AlertmanagerClient, status: int, expected: ErrorClass | None
) -> None:
    body = "" if status < 300 else f"answer {status}"
    headers = {"Location": "http://elsewhere.example/"} if 300 <= status < 400 else {}
    stub.respond(status, body, headers=headers)

    [result] = await client.post_alerts(ALERTS)

    assert classify_status(status) is expected
    assert result.target == stub.url
    assert result.status_code == status
    assert result.ok is (expected is None)
    assert result.error_class is expected
    if expected is None:
        assert result.error is None
        assert result.response_text == ""
    else:
        assert result.error is not None and result.error.startswith(f"HTTP {status}")
    if status >= 400:
        assert result.response_text == body


async def test_connection_refused_is_retryable() -> None:
    async with AlertmanagerClient([refused_url()], timeout=2.0) as client:
        [result] = await client.post_alerts(ALERTS)
    assert not result.ok
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.status_code is None
    assert result.error == "connection refused"


async def test_garbage_response_is_retryable(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    stub.garbage()
    [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.status_code is None
    assert result.error is not None and result.error.startswith("protocol error")


async def test_redirect_loop_is_misconfigured_and_not_followed(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    stub.redirect_loop()
    start = time.monotonic()
    [result] = await client.post_alerts(ALERTS)
    assert time.monotonic() - start < 1.0
    assert result.error_class is ErrorClass.MISCONFIGURED
    assert result.status_code == 302
    assert stub.requests == 1  # the redirect was not followed
    assert result.error is not None and "redirect" in result.error


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        # Red-team pass 4: an auth proxy's relative or query-string redirect raised in the
        # description of the answer, which failed the record of every row of the cycle.
        ("/oauth2/sign_in", "/oauth2/sign_in"),
        ("https://sso.example.com/login?rd=%2F", "https://sso.example.com/login"),
        ("https://user:pw@sso.example.com/x#frag", "https://sso.example.com/x"),
    ],
)
async def test_any_redirect_is_described_without_raising_or_credentials(
    stub: StubAlertmanager, client: AlertmanagerClient, location: str, shown: str
) -> None:
    stub.respond(302, "", headers={"Location": location})
    [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.MISCONFIGURED and result.status_code == 302
    assert result.error == f"HTTP 302: redirect to {shown} (redirects are not followed)"


async def test_response_text_is_truncated(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    stub.respond(400, "x" * 100_000)
    [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.PERMANENT
    assert result.response_text == "x" * delivery.RESPONSE_TEXT_LIMIT
    assert result.error is not None and len(result.error) < 300


async def test_retry_after_seconds_is_reported(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    stub.respond(503, "busy", retry_after=7)
    [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.retry_after == 7.0


async def test_retry_after_http_date_is_reported_in_seconds(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    stub.respond(429, "slow down", retry_after=format_datetime(when, usegmt=True))
    [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.retry_after is not None and 110 <= result.retry_after <= 120


async def test_hanging_server_costs_at_most_the_timeout(stub: StubAlertmanager) -> None:
    stub.hang(60)
    async with AlertmanagerClient([stub.url], timeout=1.0) as client:
        start = time.monotonic()
        [result] = await client.post_alerts(ALERTS)
        elapsed = time.monotonic() - start
    assert elapsed < 1.0 + MARGIN
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.error == "timeout after 1.0s"
    assert stub.requests == 1


async def test_dripping_server_costs_at_most_the_timeout(stub: StubAlertmanager) -> None:
    # One byte every 0.2 s never trips httpx's per-read timeout; only the overall deadline
    # can stop this response, which would otherwise take ~20 s.
    stub.drip(interval=0.2)
    async with AlertmanagerClient([stub.url], timeout=1.0) as client:
        start = time.monotonic()
        [result] = await client.post_alerts(ALERTS)
        elapsed = time.monotonic() - start
    assert elapsed < 1.0 + MARGIN
    assert result.error_class is ErrorClass.RETRYABLE
    assert result.error == "timeout after 1.0s"


async def test_cancellation_propagates(stub: StubAlertmanager, client: AlertmanagerClient) -> None:
    stub.hang(60)
    task = asyncio.create_task(client.post_alerts(ALERTS))
    assert await stub.wait_for_requests_async(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_posts_to_all_targets_concurrently(
    stub: StubAlertmanager, stub2: StubAlertmanager
) -> None:
    # Each stub answers only once the other has seen its request: sequential posting
    # would time out on the first target.
    stub.script(lambda _: (200, "") if stub2.wait_for_requests(1, 5) else (500, "alone"))
    stub2.script(lambda _: (200, "") if stub.wait_for_requests(1, 5) else (500, "alone"))
    async with AlertmanagerClient([stub2.url, stub.url], timeout=3.0) as client:
        results = await client.post_alerts(ALERTS)

    assert [r.target for r in results] == [stub2.url, stub.url]  # configured order
    assert all(r.ok for r in results), results
    assert stub.received == [ALERTS]
    assert stub2.received == [ALERTS]


async def test_posts_to_a_subset_of_targets_only(
    stub: StubAlertmanager, stub2: StubAlertmanager
) -> None:
    async with AlertmanagerClient([stub.url, stub2.url]) as client:
        assert client.targets == [stub.url, stub2.url]
        results = await client.post_alerts(ALERTS, targets=[stub2.url])
        with pytest.raises(ValueError, match="unknown Alertmanager target"):
            await client.post_alerts(ALERTS, targets=["http://nowhere:1"])

    assert [r.target for r in results] == [stub2.url]
    assert results[0].ok
    assert stub.requests == 0
    assert stub2.requests == 1


async def test_one_target_failing_does_not_affect_the_other(stub: StubAlertmanager) -> None:
    dead = refused_url()
    async with AlertmanagerClient([dead, stub.url]) as client:
        down, up = await client.post_alerts(ALERTS)
    assert (down.target, down.ok, down.error_class) == (dead, False, ErrorClass.RETRYABLE)
    assert (up.target, up.ok) == (stub.url, True)


async def test_body_is_encoded_once_as_json(
    stub: StubAlertmanager, stub2: StubAlertmanager, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real_dumps = json.dumps

    def counting_dumps(obj: object, **kwargs: Any) -> str:
        calls.append(obj)
        return real_dumps(obj, **kwargs)

    monkeypatch.setattr("alertq.delivery.json.dumps", counting_dumps)
    async with AlertmanagerClient([stub.url, stub2.url]) as client:
        await client.post_alerts(ALERTS)

    assert len(calls) == 1
    for s in (stub, stub2):
        [request] = s.received_requests
        assert request.headers["content-type"] == "application/json"
        assert request.alerts == ALERTS


async def test_connections_are_kept_alive(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    for _ in range(3):
        [result] = await client.post_alerts(ALERTS)
        assert result.ok
    peers = {r.peer for r in stub.received_requests}
    assert len(peers) == 1


async def test_closed_client_refuses_to_post(stub: StubAlertmanager) -> None:
    client = AlertmanagerClient([stub.url])
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.post_alerts(ALERTS)


async def test_check_ready_reports_each_target(
    stub: StubAlertmanager, stub2: StubAlertmanager
) -> None:
    dead = refused_url()
    stub2.set_ready(False)
    async with AlertmanagerClient([stub.url, stub2.url, dead]) as client:
        up, down, refused = await client.check_ready()
    assert (up.target, up.ready, up.error) == (stub.url, True, None)
    assert (down.target, down.ready) == (stub2.url, False)
    assert down.error is not None and down.error.startswith("HTTP 503")
    assert (refused.target, refused.ready, refused.error) == (dead, False, "connection refused")
    assert stub.ready_checks == 1


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_basic_auth_header_is_sent(stub: StubAlertmanager) -> None:
    async with AlertmanagerClient([stub.url], username="alice", password="wonder") as client:
        [result] = await client.post_alerts(ALERTS)
    assert result.ok
    assert stub.received_headers[0]["authorization"] == basic("alice", "wonder")


async def test_bearer_token_header_is_sent(stub: StubAlertmanager) -> None:
    async with AlertmanagerClient([stub.url], bearer_token="tok-123") as client:
        [result] = await client.post_alerts(ALERTS)
    assert result.ok
    assert stub.received_headers[0]["authorization"] == "Bearer tok-123"


async def test_no_authorization_header_without_credentials(
    stub: StubAlertmanager, client: AlertmanagerClient
) -> None:
    await client.post_alerts(ALERTS)
    assert "authorization" not in stub.received_headers[0]


async def test_userinfo_in_url_becomes_basic_auth_and_leaves_the_key(
    stub: StubAlertmanager,
) -> None:
    url = stub.url.replace("http://", "http://bob:p%40ss%3Aword@") + "/"
    async with AlertmanagerClient([url]) as client:
        assert client.targets == [stub.url]
        [result] = await client.post_alerts(ALERTS)
    assert result.target == stub.url
    assert stub.received_headers[0]["authorization"] == basic("bob", "p@ss:word")


async def test_secrets_never_leak_into_results_repr_or_logs(
    stub: StubAlertmanager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    password, token, url_password = "s3cret-Pw", "tok-SECRET-42", "urlPw-77"
    encoded = basic("alice", password).removeprefix("Basic ")
    # The server echoes the credentials back, as a careless proxy might.
    stub.respond(401, f"bad credentials {basic('alice', password)} {password}")
    other = StubAlertmanager()
    other.start()
    try:
        other.hang(60)
        urls = [stub.url, other.url, refused_url()]
        async with AlertmanagerClient(urls, timeout=0.5, username="alice", password=password) as c:
            results = await c.post_alerts(ALERTS)
            health = await c.check_ready()
            text = repr(c) + repr(results) + repr(health) + str(c)
        stub.respond(403, f"no {basic('carol', url_password)} {url_password} {token}")
        userinfo_url = stub.url.replace("http://", f"http://carol:{url_password}@")
        async with AlertmanagerClient(
            [userinfo_url, other.url], timeout=0.5, bearer_token=token
        ) as c2:
            results2 = await c2.post_alerts(ALERTS)
            text += repr(c2) + repr(results2) + repr(await c2.check_ready())
    finally:
        other.stop()

    assert [r.error_class for r in results] == [
        ErrorClass.MISCONFIGURED,
        ErrorClass.RETRYABLE,
        ErrorClass.RETRYABLE,
    ]
    assert "***" in results[0].response_text  # the echo was scrubbed, the rest kept
    assert "bad credentials" in results[0].response_text
    assert [r.error_class for r in results2] == [ErrorClass.MISCONFIGURED, ErrorClass.RETRYABLE]
    assert stub.received_headers[-1]["authorization"] == basic("carol", url_password)
    assert other.received_headers[-1]["authorization"] == f"Bearer {token}"
    everything = text + caplog.text
    for secret in (password, encoded, token, url_password):
        assert secret not in everything
    assert stub.url in caplog.text  # logging did happen, with the credential-free key


async def test_from_settings_uses_alertmanager_fields(stub: StubAlertmanager) -> None:
    settings = Settings(
        alertmanager_urls=[stub.url, "http://other:9093"],
        alertmanager_timeout=3.0,
        alertmanager_username="svc",
        alertmanager_password="from-settings",
    )
    async with AlertmanagerClient.from_settings(settings) as client:
        assert client.targets == [stub.url, "http://other:9093"]
        assert client.timeout == 3.0
        [result] = await client.post_alerts(ALERTS, targets=[stub.url])
    assert result.ok
    assert stub.received_headers[0]["authorization"] == basic("svc", "from-settings")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl", "the CLI is not installed: cannot make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_stub(tls_files: tuple[Path, Path]) -> Iterator[StubAlertmanager]:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with StubAlertmanager(ssl_context=context) as s:
        yield s


async def test_tls_with_custom_ca_file_is_trusted(
    tls_stub: StubAlertmanager, tls_files: tuple[Path, Path]
) -> None:
    async with AlertmanagerClient([tls_stub.url], ca_file=tls_files[0]) as client:
        [result] = await client.post_alerts(ALERTS)
    assert result.ok, result
    assert tls_stub.received == [ALERTS]


async def test_tls_unknown_ca_is_misconfigured(tls_stub: StubAlertmanager) -> None:
    async with AlertmanagerClient([tls_stub.url], timeout=2.0) as client:
        [result] = await client.post_alerts(ALERTS)
    assert result.error_class is ErrorClass.MISCONFIGURED
    assert result.error is not None and "certificate" in result.error
    assert tls_stub.requests == 0


async def test_tls_verify_false_skips_the_check(tls_stub: StubAlertmanager) -> None:
    async with AlertmanagerClient([tls_stub.url], verify=False) as client:
        [result] = await client.post_alerts(ALERTS)
    assert result.ok
