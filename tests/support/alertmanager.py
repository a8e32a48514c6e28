"""A real Prometheus Alertmanager (the Debian package's binary) run as a child process.

Each instance gets a free 127.0.0.1 port, its own storage directory and config file, and
no cluster gossip. ``start()`` returns once ``GET /-/ready`` answers 200.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from . import free_port

DEFAULT_BINARY = "/usr/bin/prometheus-alertmanager"
# Lets a developer point the tests at another build without editing code.
BINARY_ENV = "ALERTQ_TEST_ALERTMANAGER_BIN"


class AlertmanagerNotFound(FileNotFoundError):
    """The Alertmanager binary is not installed (or not executable)."""


class AlertmanagerProcess:
    """One throw-away Alertmanager.

    ``resolve_timeout`` is Alertmanager's ``global.resolve_timeout`` (the ``endsAt`` given
    to alerts posted without one). ``webhook_url``, if set, is the receiver of every alert;
    otherwise a receiver that sends nothing is used. ``route`` entries override the route.
    """

    def __init__(
        self,
        *,
        resolve_timeout: str = "5m",
        webhook_url: str | None = None,
        route: Mapping[str, Any] | None = None,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = binary or os.environ.get(BINARY_ENV) or DEFAULT_BINARY
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise AlertmanagerNotFound(
                f"Alertmanager binary not found or not executable: {self.binary} "
                f"(install the Debian package prometheus-alertmanager, or set {BINARY_ENV})"
            )
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="alertq-am-"))
        self.storage = self._dir / "data"
        self.config_file = self._dir / "alertmanager.yml"
        self.log_file = self._dir / "alertmanager.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config(resolve_timeout, webhook_url, route or {})

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the process and wait (polling ``/-/ready``) until it is ready."""
        if self.running:
            return self
        self.storage.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            f"--config.file={self.config_file}",
            f"--storage.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Terminate the process and wait for it to exit (kill after 10 s)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, wipe: bool = True) -> None:
        """Stop, optionally wipe the storage (state is lost), and start again on the same port."""
        self.stop()
        if wipe:
            shutil.rmtree(self.storage, ignore_errors=True)
        self.start()

    def close(self) -> None:
        """Stop and delete the temporary directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- API ---------------------------------------------------------------------------

    def alerts(
        self,
        active: bool | None = None,
        filter: str | list[str] | None = None,
        *,
        silenced: bool | None = None,
        inhibited: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``; ``filter`` is one or more matchers like ``alertname="X"``."""
        params: list[tuple[str, str | int | float | bool | None]] = []
        for name, flag in (("active", active), ("silenced", silenced), ("inhibited", inhibited)):
            if flag is not None:
                params.append((name, "true" if flag else "false"))
        for matcher in [filter] if isinstance(filter, str) else filter or []:
            params.append(("filter", matcher))
        response = httpx.get(
            f"{self.url}/api/v2/alerts", params=params, timeout=10, trust_env=False
        )
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the process's log, for failure messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------

    def _write_config(
        self, resolve_timeout: str, webhook_url: str | None, route: Mapping[str, Any]
    ) -> None:
        receiver: dict[str, Any] = {"name": "default"}
        if webhook_url is not None:
            receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
        config = {
            "global": {"resolve_timeout": resolve_timeout},
            "route": {"receiver": "default", **route},
            "receivers": [receiver],
        }
        # JSON is valid YAML, so no YAML library is needed.
        self.config_file.write_text(json.dumps(config, indent=2))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise RuntimeError(
                    f"Alertmanager exited during start-up (code {code}):\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}/-/ready", timeout=1, trust_env=False)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)  # polling interval of the readiness probe
        self.stop()
        raise RuntimeError(
            f"Alertmanager not ready on {self.url} after {self.startup_timeout}s ({last}):\n"
            f"{self.log_tail()}"
        )
