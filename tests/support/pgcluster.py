"""A throw-away PostgreSQL cluster: ``initdb`` into a temporary directory, ``pg_ctl`` on a
free port, trust authentication.

It exists so that tests and benchmarks can stop and restart *a* PostgreSQL server without
touching the machine's shared one (5432). PostgreSQL refuses to run as root, so when this
process is root every server command runs as the ``postgres`` OS user (``runuser``) and the
directory is handed to that user.

    with PostgresCluster() as pg:
        url = pg.url            # postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres
        pg.restart()            # pg_ctl restart -m fast
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from . import free_port

# Lets a developer point the helper at another PostgreSQL build without editing code.
BIN_ENV = "ALERTQ_TEST_PG_BIN"
DEFAULT_BIN_DIR = "/usr/lib/postgresql/15/bin"
OS_USER = "postgres"


class PostgresNotFound(FileNotFoundError):
    """``initdb``/``pg_ctl`` are not installed, or root has no ``postgres`` user to run them."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``, or raise :class:`PostgresNotFound`."""
    candidates = [os.environ.get(BIN_ENV, ""), DEFAULT_BIN_DIR]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if all(os.access(path / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    raise PostgresNotFound(
        "initdb/pg_ctl not found (install the Debian package postgresql, or set "
        f"{BIN_ENV} to the directory holding them)"
    )


def check_available() -> Path:
    """Raise :class:`PostgresNotFound` unless a cluster can be created here; returns the
    binaries' directory. Cheap: runs nothing."""
    bin_dir = find_bin_dir()
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            raise PostgresNotFound(
                f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL as"
            ) from None
        if shutil.which("runuser") is None:
            raise PostgresNotFound("running as root and runuser is not installed")
    return bin_dir


class PostgresCluster:
    """One throw-away PostgreSQL server with its own data directory, socket and port.

    The constructor runs ``initdb`` (a few seconds); :meth:`start` starts the server and
    waits until it accepts connections; :meth:`close` stops it and deletes everything.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        settings: dict[str, str] | None = None,
        startup_timeout: int = 60,
    ) -> None:
        self.bin_dir = bin_dir or check_available()
        self._as_user: list[str] = []
        self._uid = self._gid = -1
        if os.geteuid() == 0:
            entry = pwd.getpwnam(OS_USER)
            self._as_user = [shutil.which("runuser") or "runuser", "-u", OS_USER, "--"]
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.settings = {"listen_addresses": "127.0.0.1", "max_connections": "200"}
        self.settings.update(settings or {})
        self.dir = Path(tempfile.mkdtemp(prefix="alertq-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_file = self.dir / "postgres.log"
        self.socket_dir.mkdir()
        self.log_file.touch()
        if self._as_user:
            for path in (self.dir, self.socket_dir, self.log_file):
                os.chown(path, self._uid, self._gid)
        try:
            self._run(
                "initdb",
                f"--pgdata={self.data}",
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database over TCP."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        """Whether ``pg_ctl status`` finds a server on the data directory."""
        result = subprocess.run(
            [*self._as_user, str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def start(self) -> Self:
        """Start the server and wait (``pg_ctl -w``) until it accepts connections."""
        self._pg_ctl("start", "-o", self._options(), "-l", str(self.log_file))
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m mode``); a no-op when it is not running."""
        if self.running:
            self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m mode`` on the same port: clients see their connections drop."""
        self._pg_ctl("restart", "-m", mode, "-o", self._options(), "-l", str(self.log_file))

    def close(self) -> None:
        """Stop the server (immediately) and delete the directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server log, for failure messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ---------------------------------------------------------------------

    def _options(self) -> str:
        opts = [f"-p {self.port}", f"-k {self.socket_dir}"]
        opts += [f"-c {key}={value}" for key, value in self.settings.items()]
        return " ".join(opts)

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-w", "-t", str(self.startup_timeout), *args
        )

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            # pg_ctl's children inherit the cwd; root's may be unreadable for postgres.
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} {args[0] if args else ''} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{self.log_tail()}"
            )
