"""Run the ``alertq`` command line as child processes, as an operator would.

Children get a clean environment (the test process's ``ALERTQ_*`` variables are dropped),
their own working directory, and their output in files, so a chatty worker can never
block on a full pipe::

    env = alertq_env(db_url, stub.url, lease_seconds=3, alertmanager_timeout=2)
    result = run_alertq(["worker", "--drain"], env, cwd=tmp_path)
    assert result.returncode == 0, result.describe()

    with start_alertq(["worker"], env, cwd=tmp_path) as worker:
        ...
        worker.kill9()

Waiting is always on a condition with a deadline (:func:`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

ALERTQ = (sys.executable, "-m", "alertq")
# Wide enough that rich never wraps a message in the middle of what a test looks for.
_COLUMNS = "500"


def alertq_env(database_url: str, *alertmanager_urls: str, **settings: object) -> dict[str, str]:
    """The environment for an alertq child: ``ALERTQ_DATABASE_URL``,
    ``ALERTQ_ALERTMANAGER_URLS`` (comma-separated) and ``ALERTQ_<NAME>`` for each keyword.

    Inherited ``ALERTQ_*`` variables are removed and no config file is read, so only what
    the test states configures the child.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTQ_")}
    env.update(
        {
            "ALERTQ_DATABASE_URL": database_url,
            "ALERTQ_CONFIG_FILE": os.path.join(os.sep, "nonexistent", "alertq.toml"),
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": _COLUMNS,
        }
    )
    if alertmanager_urls:
        env["ALERTQ_ALERTMANAGER_URLS"] = ",".join(alertmanager_urls)
    for name, value in settings.items():
        env[f"ALERTQ_{name.upper()}"] = str(value)
    return env


@dataclass(frozen=True)
class Finished:
    """A finished alertq command: exit code and output."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        """Everything a failed assertion should show."""
        return (
            f"alertq {' '.join(self.args)} exited {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    @property
    def message(self) -> str:
        """stderr with all whitespace runs collapsed to one space (wrapping-proof)."""
        return " ".join(self.stderr.split())


def run_alertq(
    args: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path,
    timeout: float = 60.0,
    stdin: str | None = None,
) -> Finished:
    """Run ``alertq ARGS`` to completion; a child still running at ``timeout`` is killed
    and the test fails with its output."""
    with start_alertq(args, env, cwd=cwd, stdin=stdin) as child:
        code = child.wait(timeout)
        return Finished(tuple(args), code, child.stdout, child.stderr)


async def run_alertq_async(
    args: Sequence[str],
    env: dict[str, str],
    *,
    cwd: Path,
    within: float = 60.0,
    stdin: str | None = None,
) -> Finished:
    """:func:`run_alertq` (``within`` is its timeout) without blocking the event loop."""
    return await asyncio.to_thread(run_alertq, args, env, cwd=cwd, timeout=within, stdin=stdin)


def start_alertq(
    args: Sequence[str], env: dict[str, str], *, cwd: Path, stdin: str | None = None
) -> AlertqProcess:
    """Start ``alertq ARGS`` in the background."""
    return AlertqProcess(args, env, cwd=cwd, stdin=stdin).start()


class AlertqProcess:
    """One background alertq child. Leaving the ``with`` block kills it if still running."""

    def __init__(
        self, args: Sequence[str], env: dict[str, str], *, cwd: Path, stdin: str | None = None
    ) -> None:
        self.args = tuple(args)
        self.env = env
        self.cwd = cwd
        self._stdin = stdin
        self._process: subprocess.Popen[bytes] | None = None
        words = ("".join(c for c in a if c.isalnum()) for a in self.args[:2])
        stem = "alertq-" + ("-".join(w for w in words if w) or "cli")
        n = 0
        while (cwd / f"{stem}-{n}.out").exists():
            n += 1
        self._out = cwd / f"{stem}-{n}.out"
        self._err = cwd / f"{stem}-{n}.err"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self._process = subprocess.Popen(
                [*ALERTQ, *self.args],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.PIPE if self._stdin is not None else subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        if self._stdin is not None:
            assert self._process.stdin is not None
            self._process.stdin.write(self._stdin.encode())
            self._process.stdin.close()
        return self

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit code; if still running after ``timeout`` s, kill it and fail."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(
                f"alertq {' '.join(self.args)} still running after {timeout}s; killed\n"
                f"{self.describe()}"
            ) from None

    async def wait_async(self, within: float) -> int:
        """:meth:`wait` (``within`` is its timeout) without blocking the event loop."""
        return await asyncio.to_thread(self.wait, within)

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def kill9(self) -> None:
        """``kill -9``: no handler runs, nothing is flushed or released. Waits for death."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self.kill9()

    # -- output ------------------------------------------------------------------------

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    def describe(self) -> str:
        code = self.process.poll()
        return (
            f"alertq {' '.join(self.args)} (pid {self.pid}, exit {code})\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {within}s: {text}")
        await asyncio.sleep(interval)  # the polling interval, not a synchronisation


async def until_ready(
    server: AlertqProcess, url: str, path: str = "/-/ready", **client_options: object
) -> None:
    """Poll ``url + path`` until it answers 200; fail at once if ``server`` exits, after
    30 s otherwise."""
    import httpx  # only the tests that start a server need it

    async def ready() -> bool:
        assert server.running, server.describe()
        try:
            async with httpx.AsyncClient(trust_env=False, **client_options) as client:  # type: ignore[arg-type]
                return (await client.get(f"{url}{path}")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(ready, within=30, message=server.describe)
