"""Builds the async engine and session factory, and owns the one helper that commits.

Layers below (the driver) take the session they are given and never commit; layers above
(engine, breaker, CLI, API) open their transactions with :func:`transaction`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

from alertq.config import Settings
from alertq.driver import NOTIFY_CHANNEL

log = logging.getLogger("alertq.db")


class DatabaseUnreachable(RuntimeError):
    """The database could not be reached. ``str()`` is one line, safe to show: the URL with
    its password hidden and the cause's type and first line. The CLI prints it and exits 1."""


def redacted_url(database_url: str) -> str:
    """``database_url`` with any password replaced by ``***``, for messages and logs."""
    try:
        url = make_url(database_url)
    except Exception:
        return "<unparseable database URL>"
    if url.host and "@" in url.host:
        # An unescaped '@' in the password ends SQLAlchemy's password there and the rest
        # lands in the host, which is shown: only what follows the last '@' is a host.
        url = url.set(host=url.host.rpartition("@")[2])
    return url.render_as_string(hide_password=True)


def describe_error(exc: BaseException) -> str:
    """A database error in one line that is safe to show: the driver's exception type and
    the first line of its message (no SQL, no parameters, no credentials)."""
    # SQLAlchemy's own text carries the statement and its parameters: keep the driver's.
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:200]
    name = type(cause).__name__
    if not first and isinstance(cause, TimeoutError):  # asyncpg's has no message
        first = "no answer within the timeout (ALERTQ_DB_TIMEOUT)"
    return f"{name}: {first}" if first else name


_ASYNCPG_ADAPTER = "sqlalchemy.dialects.postgresql.asyncpg"


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or used (connection refused,
    timed out, dropped, or the server refused us), rather than a bug in alertq."""
    if isinstance(exc, OSError | TimeoutError | sa_exc.DBAPIError | sa_exc.TimeoutError):
        return True
    # The claim and the record run asyncpg under the session (driver.sql.pg_connection),
    # past SQLAlchemy's wrapping: a backend the server ended mid-cycle raises asyncpg's own
    # errors there, or the asyncpg adapter's DBAPI ones, where elsewhere a DBAPIError is.
    module = type(exc).__module__
    return module.partition(".")[0] == "asyncpg" or module == _ASYNCPG_ADAPTER


OUTAGE_REPEAT_SECONDS = 60.0
OUTAGE_BACKOFF_CAP = 10.0


class DatabaseOutage:
    """One voice for "the database is down" in a process, and the backoff while it is.

    Every database user of a worker (its loops, their idle checks, keep-alive) reports here:
    :meth:`failed` after a database error, :meth:`recovered` after a success. The log gets
    one line when the database goes down, one a minute while it stays down, and one when it
    is back; tracebacks only at DEBUG. ``monotonic`` is injectable for tests.
    """

    def __init__(
        self,
        database_url: str,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = redacted_url(database_url)
        self.monotonic = monotonic
        self.log = logger or log
        self.failures = 0
        """Consecutive failures since the database was last reached."""
        self.last_error = ""
        self._down_since: float | None = None
        self._last_line = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def down_for(self) -> float:
        """Seconds since the first failure of this outage (0 when up)."""
        return 0.0 if self._down_since is None else self.monotonic() - self._down_since

    def failed(self, exc: BaseException) -> None:
        now = self.monotonic()
        self.failures += 1
        self.last_error = describe_error(exc)
        self.log.debug("database error at %s", self.url, exc_info=exc)
        if self._down_since is None:
            self._down_since = self._last_line = now
            self.log.error(
                "database unreachable at %s: %s; retrying with backoff (at most %.0fs apart)",
                self.url,
                self.last_error,
                OUTAGE_BACKOFF_CAP,
            )
        elif now - self._last_line >= OUTAGE_REPEAT_SECONDS:
            self._last_line = now
            self.log.error(
                "database still unreachable at %s after %.0fs: %s",
                self.url,
                now - self._down_since,
                self.last_error,
            )

    def recovered(self) -> None:
        if self._down_since is not None:
            self.log.info("database reachable again at %s after %.0fs", self.url, self.down_for())
        self._down_since = None
        self.failures = 0

    def backoff(self, base: float) -> float:
        """Seconds to wait before the next attempt: ``base`` doubling per failure, capped."""
        if self.failures == 0:
            return base
        return float(min(max(base, OUTAGE_BACKOFF_CAP), base * 2 ** min(self.failures - 1, 30)))

    def error(self) -> DatabaseUnreachable:
        """The outage as one line, for giving up (``alertq worker --drain``)."""
        return DatabaseUnreachable(
            f"cannot reach the database at {self.url} (for {self.down_for():.0f}s): "
            f"{self.last_error}"
        )


async def repeat(
    step: Callable[[], Awaitable[float | None]],
    every: float,
    done: asyncio.Event,
    outage: DatabaseOutage,
    log: logging.Logger,
    what: str,
) -> None:
    """Run ``step`` every ``every`` seconds until ``done`` is set (a maintenance service's
    loop). ``step`` may return a shorter wait. A database error is reported once per outage
    and retried with its backoff; any other error is logged with its traceback and retried
    after ``every``."""
    while not done.is_set():
        wait = every
        try:
            sooner = await step()
        except Exception as exc:
            if not is_database_error(exc):
                log.exception("%s failed; retrying in %.1fs", what, every)
            else:
                outage.failed(exc)
                wait = outage.backoff(every)
        else:
            outage.recovered()
            if sooner is not None:
                wait = sooner
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, start transactions.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # FULL: in WAL mode NORMAL can lose the last commits on a power loss or an OS
        # crash, and a producer (the relay's 200 above all) promises they are durable.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


_READ_ONLY = "alertq_read_only"

WRITE_LOCK_RETRY = 0.001
"""Seconds between two tries of a SQLite write transaction's ``BEGIN IMMEDIATE``."""


def _begin_write(raw: sqlite3.Connection, timeout_ms: int) -> None:
    """``BEGIN IMMEDIATE``, tried again every :data:`WRITE_LOCK_RETRY` until ``timeout_ms``.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms
    between tries: a writer that waits behind a steady producer (a lock taken every few
    ms) tries again only every 25-100 ms and keeps missing the gaps, for hundreds of ms.
    Trying every millisecond takes the first gap. Runs on the connection's own thread, so
    the sleeps block no event loop; the busy timeout stays for every other statement.
    """
    raw.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # and BUSY_RECOVERY
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(WRITE_LOCK_RETRY)
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")


def _begin(busy_timeout_ms: int) -> Callable[[Any], None]:
    def begin(conn: Any) -> None:
        # A read-only transaction (read_transaction) must not queue for the write lock.
        if conn.get_execution_options().get(_READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        adapted = conn.connection.dbapi_connection  # SQLAlchemy's aiosqlite adapter
        try:
            # One hop to aiosqlite's thread for the whole wait (SQLAlchemy's adapter also
            # uses aiosqlite's queue directly, for isolation_level).
            adapted.run_async(lambda aio: aio._execute(_begin_write, aio._conn, busy_timeout_ms))
        except sqlite3.Error as exc:
            raise sa_exc.OperationalError("BEGIN IMMEDIATE", None, exc) from exc

    return begin


def create_engine(settings: Settings, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``settings.database_url`` (aiosqlite or asyncpg).

    On SQLite every connection gets WAL, a busy timeout, ``synchronous=FULL`` and
    ``BEGIN IMMEDIATE`` transactions; on PostgreSQL connections are checked before use so
    a restarted server is ridden out, and connecting and every statement are bounded by
    ``settings.db_timeout`` (``connect_args`` in ``kwargs`` override that), as is the wait
    for a free pooled connection.
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, **kwargs)
        event.listen(
            engine.sync_engine, "connect", _sqlite_pragmas(settings.sqlite_busy_timeout_ms)
        )
        # IMMEDIATE takes the write lock up front: SQLite's writers are serialised anyway, and
        # a deferred transaction that reads then writes fails with SQLITE_BUSY_SNAPSHOT
        # instead of waiting out the busy timeout. The wait for it is _begin_write's.
        event.listen(engine.sync_engine, "begin", _begin(settings.sqlite_busy_timeout_ms))
        _SQLITE_TURNS[engine.sync_engine] = (settings.db_timeout, weakref.WeakKeyDictionary())
        return engine
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "asyncpg":
        url = url.set(drivername="postgresql+asyncpg")
    kwargs.setdefault("pool_size", settings.db_pool_size)
    # A request waits for a free pooled connection as long as for a statement (SQLAlchemy's
    # default is 30 s; Prometheus gives up on a send after 10 s and sends again).
    kwargs.setdefault("pool_timeout", settings.db_timeout)
    # A silently dropped network path answers nothing, not even a reset: without these a
    # connect, a statement or the pool's checkout ping waits until TCP gives up (minutes).
    # asyncpg also bounds the cancel request it sends after a timeout by command_timeout.
    kwargs["connect_args"] = {
        "timeout": settings.db_timeout,
        "command_timeout": settings.db_timeout,
        **kwargs.get("connect_args", {}),
    }
    if kwargs.get("pool_pre_ping"):
        engine = create_async_engine(url, **kwargs)
    else:
        kwargs["pool_pre_ping"] = False
        engine = create_async_engine(url, **kwargs)
        _check_on_checkout(engine)
    event.listen(engine.sync_engine, "close", _close_briefly)
    return engine


CLOSE_TIMEOUT = 0.5
"""Seconds a PostgreSQL connection's close waits for the server's goodbye before it drops
the socket: one round trip on a live path."""


def _close_briefly(dbapi_conn: Any, _record: Any) -> None:
    """Close a pooled connection gracefully within :data:`CLOSE_TIMEOUT`, else drop it.

    asyncpg's close waits for the server up to ``command_timeout``: on a silently dropped
    path a shutdown's dispose took ``ALERTQ_DB_TIMEOUT`` per pooled connection, one after
    another, and SQLAlchemy logged each timeout with a traceback. Runs before SQLAlchemy's
    own close, which then finds the connection closed.
    """
    conn = dbapi_conn.driver_connection
    if conn.is_closed():
        return
    if not in_greenlet():  # garbage collection: nothing may be awaited
        conn.terminate()
        return
    try:
        await_only(conn.close(timeout=CLOSE_TIMEOUT))
    except Exception as exc:  # asyncpg has dropped the socket itself
        log.debug("closing a database connection: %s", describe_error(exc))


PING_AFTER_REST = 1.0
"""Seconds a pooled PostgreSQL connection may rest before its checkout pings the server."""

_RESTED_SINCE = "alertq_rested_since"


def _check_on_checkout(engine: AsyncEngine) -> None:
    """Hand out only live connections, without a round trip on the worker's hot path.

    SQLAlchemy's ``pool_pre_ping`` costs three round trips per checkout (BEGIN, ping,
    ROLLBACK), once per delivery cycle. A server that restarts or ends a backend closes
    its socket, and asyncpg marks the connection closed as soon as the event loop reads
    that: checking the flag costs nothing. Only a connection that rested longer than
    :data:`PING_AFTER_REST` (an idle loop's, where a round trip costs nothing) is pinged,
    for what no close reached (a dropped network path). A connection that fails either
    check is replaced before the caller sees it (``DisconnectionError``).
    """
    sync = engine.sync_engine
    dialect = sync.dialect

    def rested(_dbapi_conn: Any, record: Any, *_: Any) -> None:
        record.info[_RESTED_SINCE] = time.monotonic()

    def checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if dbapi_conn.driver_connection.is_closed():
            raise sa_exc.DisconnectionError("connection closed by the server")
        since = record.info.get(_RESTED_SINCE)
        if since is not None and time.monotonic() - since < PING_AFTER_REST:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise sa_exc.DisconnectionError(describe_error(exc)) from exc

    event.listen(sync, "connect", rested)
    event.listen(sync, "checkin", rested)
    event.listen(sync, "checkout", checkout)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


class _WriterTurn:
    """A first-come-first-served turn among one process's SQLite writers on one engine.

    SQLite has one writer. Racing for its lock, each waiter tries every millisecond
    (_begin_write) and the luckiest wins: with six relay bodies of 10,000 alerts storing
    at once, a one-alert body lost again and again until its busy timeout, and its sender
    got a 500 (red-team pass 3). In turn, a writer waits only for those ahead of it.

    Never worse than the race: a task that holds the turn gets it again at once (a nested
    transaction), and a writer that waited ``ALERTQ_DB_TIMEOUT`` for its turn goes ahead
    and races as before.
    """

    def __init__(self, wait: float) -> None:
        self._lock = asyncio.Lock()
        self._wait = wait
        self._owner: asyncio.Task[Any] | None = None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        task = asyncio.current_task()
        acquired = False
        if task is None or task is not self._owner:
            with contextlib.suppress(TimeoutError):  # waited long enough: race as before
                async with asyncio.timeout(self._wait):
                    acquired = await self._lock.acquire()
        if not acquired:
            yield
            return
        self._owner = task
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()


_SQLITE_TURNS: weakref.WeakKeyDictionary[
    Any, tuple[float, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriterTurn]]
] = weakref.WeakKeyDictionary()
"""For each SQLite engine (set by create_engine): how long its writers wait for their turn
(``ALERTQ_DB_TIMEOUT``, as a PostgreSQL request waits for a pooled connection), and its
turn in each event loop (an asyncio lock serves one loop)."""


def _writer_turn(
    factory: async_sessionmaker[AsyncSession],
) -> contextlib.AbstractAsyncContextManager[Any]:
    """On SQLite, this process's write transactions take turns (:class:`_WriterTurn`);
    elsewhere nothing."""
    bind = factory.kw.get("bind")
    entry = _SQLITE_TURNS.get(bind.sync_engine) if bind is not None else None
    if entry is None:
        return contextlib.nullcontext()
    wait, turns = entry
    loop = asyncio.get_running_loop()
    turn = turns.get(loop)
    if turn is None:
        turn = turns[loop] = _WriterTurn(wait)
    return turn()


@asynccontextmanager
async def transaction(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Open a session, begin, yield it, and commit, or roll back on any exception. Every
    write goes through here (on SQLite, in turn: :func:`_writer_turn`)."""
    async with _writer_turn(factory), factory() as session, session.begin():
        yield session


@asynccontextmanager
async def read_transaction(
    factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Like :func:`transaction`, for reads only: on SQLite it begins ``DEFERRED``, so it
    neither waits for nor holds up writers (an idle worker's look at the queue would
    otherwise take the write lock from producers several times a second)."""
    async with factory() as session:
        await session.connection(execution_options={_READ_ONLY: True})  # begins
        yield session
        await session.commit()


class EnqueueListener:
    """LISTENs for enqueue notifications on PostgreSQL and calls ``on_notify``.

    Holds one dedicated asyncpg connection and reconnects by itself after the server
    restarts; every (re)connect also calls ``on_notify``, since notifications sent while
    disconnected are lost. Polling stays the fallback.
    """

    def __init__(self, database_url: str, on_notify: Callable[[], None], *, timeout: float) -> None:
        url = make_url(database_url)
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_notify = on_notify
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alertq-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import asyncpg

        delay = 0.5
        while True:
            conn = None
            try:
                # Bounded like the pool's connections: its "SELECT 1" would otherwise wait
                # forever on a dropped path, and no reconnect would follow.
                conn = await asyncpg.connect(
                    self._dsn, timeout=self._timeout, command_timeout=self._timeout
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_a: self._on_notify())
                self._on_notify()
                delay = 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=5)
                    if not lost.is_set():
                        await conn.execute("SELECT 1")  # detects a dead server
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # DEBUG only: the worker's DatabaseOutage already says the database is down,
                # once, and polling covers the notifications missed meanwhile.
                log.debug("LISTEN connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


WATCH_RETRY = 1.0
"""Seconds between attempts of a SQLite change watch that cannot read the database."""


class SqliteChangeWatcher:
    """Calls ``on_change`` soon after another connection commits to a SQLite database.

    SQLite has no NOTIFY. ``PRAGMA data_version`` changes whenever another connection (of
    any process) has committed since the last look; reading it costs a few microseconds and
    no lock. One dedicated connection reads it every ``interval`` seconds, so an idle
    worker notices a producer's commit within ``interval`` without running a query.
    Errors (a file being replaced, a busy disk) are logged and the watch goes on.
    """

    def __init__(self, database_url: str, on_change: Callable[[], None], interval: float) -> None:
        self._path = make_url(database_url).database or ""
        self._on_change = on_change
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    @property
    def usable(self) -> bool:
        """False for an in-memory database: no other connection can write to it."""
        return self._path not in ("", ":memory:")

    async def start(self) -> None:
        if self.usable:
            self._task = asyncio.create_task(self._run(), name="alertq-sqlite-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        seen: int | None = None
        failing = False
        try:
            while True:
                try:
                    if conn is None:
                        # mode=rw: never create the file (a missing database is an outage
                        # the worker reports, not something to paper over).
                        uri = f"file:{quote(self._path)}?mode=rw"
                        conn = sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None)
                    # Microseconds, lock-free: fine to run on the event loop itself.
                    version = int(conn.execute("PRAGMA data_version").fetchone()[0])
                    if failing or (seen is not None and version != seen):
                        self._on_change()  # after a failure, a commit may have been missed
                    seen, failing = version, False
                except sqlite3.Error as exc:
                    # The worker's own cycles meet the same outage and report it (once a
                    # minute); here it only slows the watch down, and wakes nobody.
                    log.debug("SQLite change watch failed: %s", exc)
                    if conn is not None:
                        conn.close()
                    conn, seen, failing = None, None, True
                await asyncio.sleep(WATCH_RETRY if failing else self._interval)
        finally:
            if conn is not None:
                conn.close()
