"""Settings, read from ``ALERTQ_*`` environment variables and optionally a TOML file.

The TOML file is named by ``ALERTQ_CONFIG_FILE`` (default ``alertq.toml`` when it exists);
environment variables win over the file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from alertq.alerts import check_generator_url
from alertq.limits import (  # parse_duration is re-exported: callers import it from here
    MAX_DRIFT_SCORE,
    MAX_ERROR_COUNT,
    MAX_NAME_LENGTH,
    parse_duration,
    split_http_url,
)

__all__ = ["DeliveryQuorum", "Settings", "UnsafeConfigFile", "get_settings", "parse_duration"]


class DeliveryQuorum(StrEnum):
    """When a row counts as ``sent``: once any Alertmanager accepted it, or once all did."""

    ANY = "any"
    ALL = "all"


_HOUR = 3600
_DAY = 24 * _HOUR


def _load_tls(setting: str, load: Callable[[], object]) -> None:
    """Run ``load``; a file that cannot be read or parsed is a one-line ValueError (an
    encrypted key is refused, never prompted for: alertq has no key password)."""
    try:
        load()
    except OSError as exc:  # ssl.SSLError is one
        reason = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
        raise ValueError(f"{setting}: cannot load it ({reason})") from None


_HOST_NAME = re.compile(r"\*|[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


_RUNBOOK_URL = re.compile(r"https?://[^\s\x00-\x1f\x7f\"'<>\\`]+", re.IGNORECASE)


class UnsafeConfigFile(ValueError):
    """The TOML file is one another user could have written: its settings (the database
    URL, the Alertmanager URLs and their credentials) are not to be trusted."""


def _config_file() -> Path:
    return Path(os.environ.get("ALERTQ_CONFIG_FILE", "alertq.toml"))


def _check_owner(path: Path) -> None:
    """Refuse ``path`` if anyone may write it, or it belongs to another user than this
    one or root: ``alertq fire`` run in /tmp read /tmp/alertq.toml (red-team pass 3)."""
    info = path.stat()
    if info.st_mode & 0o002 or info.st_uid not in (os.getuid(), 0):
        raise UnsafeConfigFile(
            f"refusing {str(path)[:200]}: it is writable by everyone or owned by another "
            "user (set ALERTQ_CONFIG_FILE to a file of your own)"
        )


class Settings(BaseSettings):
    """Every knob of alertq. Field ``x`` is set by ``ALERTQ_X``."""

    # hide_input_in_errors: a bad URL setting may carry a password; the message must not.
    # allow_inf_nan=False: "inf" and "nan" parse as floats, and NaN passes every bound (a
    # comparison with it is False). Every number below has an upper bound too: a lease of
    # 1e12 s overflowed the claim's datetime on every cycle (a traceback a second).
    model_config = SettingsConfigDict(
        env_prefix="ALERTQ_", extra="ignore", hide_input_in_errors=True, allow_inf_nan=False
    )

    # Storage
    database_url: str = "sqlite+aiosqlite:///./alertq.db"
    db_pool_size: int = Field(default=10, ge=1, le=1000)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0, le=_HOUR * 1000)
    # Seconds PostgreSQL gets to accept a connection and to answer each statement (asyncpg's
    # connect timeout and command_timeout), and a request waits for a pooled connection: a
    # network path that silently drops packets then fails a cycle or a request instead of
    # hanging it. The longest statements alertq runs, the stats query on 1M rows and a
    # purge batch, take under 0.3 s (docs/benchmarks.md). On SQLite: how long a write
    # transaction waits for its turn among the process's writers (db._WriterTurn).
    db_timeout: float = Field(default=10.0, gt=0, le=3600)

    # Alertmanager targets and HTTP options (the delivery adapter reads these)
    alertmanager_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:9093"]
    )
    alertmanager_timeout: float = Field(default=10.0, gt=0, le=600)
    alertmanager_username: str | None = None
    alertmanager_password: SecretStr | None = None
    alertmanager_bearer_token: SecretStr | None = None
    alertmanager_ca_file: Path | None = None
    alertmanager_tls_verify: bool = True

    # Engine
    lease_seconds: float = Field(default=30.0, gt=0, le=_HOUR)
    # Fits the 32-bit ``max_attempts`` column; at the default backoff cap, about 350 days.
    max_attempts: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=256, ge=1, le=256)
    # Delivery loops per process; unset, ``delivery_loops`` chooses by role and backend.
    concurrency: int | None = Field(default=None, ge=1, le=64)
    delivery_quorum: DeliveryQuorum = DeliveryQuorum.ANY
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    backoff_base: float = Field(default=2.0, gt=0, le=_HOUR)
    backoff_cap: float = Field(default=300.0, gt=0, le=_DAY)
    notify_throttle: float = Field(default=0.01, ge=0, le=10)

    # Wake-up on SQLite (issue 10): how often an idle worker reads PRAGMA data_version to
    # notice another process's commit. Each look is a timer wake-up (~0.15 ms of CPU here):
    # 40 ms costs about 0.6 % of a core while idle and keeps enqueue→delivered p99 well
    # under 100 ms at 200 alerts/s (docs/benchmarks.md).
    sqlite_wake_interval: float = Field(default=0.04, gt=0, le=60)

    # Keep-alive (Prometheus semantics: resend firing alerts, resend resolved ones for a while)
    resend_interval: float = Field(default=60.0, gt=0, le=_HOUR)
    resolved_retention: float = Field(default=900.0, ge=0, le=30 * _DAY)
    # Seconds finished queue rows (sent, superseded, failed) are kept; 0 keeps them until
    # `alertq purge` (retention.py). 7 days: what the replay after a restart reads.
    history_retention: float = Field(default=7 * _DAY, ge=0, le=366 * _DAY)

    # Circuit breaker
    drift_threshold: float = Field(default=0.2, ge=-MAX_DRIFT_SCORE, le=MAX_DRIFT_SCORE)
    failure_threshold: int = Field(default=3, ge=1, le=MAX_ERROR_COUNT)
    schema_error_threshold: int = Field(default=5, ge=1, le=MAX_ERROR_COUNT)
    # At most what ``--until`` accepts (9999 weeks), so ``now + ttl`` is a valid datetime.
    default_disable_ttl: float | None = Field(default=None, gt=0, le=9999 * 7 * _DAY)
    severity_p1_drift: float = Field(default=0.5, ge=-MAX_DRIFT_SCORE, le=MAX_DRIFT_SCORE)
    severity_p2_drift: float = Field(default=0.3, ge=-MAX_DRIFT_SCORE, le=MAX_DRIFT_SCORE)
    instance: str = Field(default="alertq", max_length=MAX_NAME_LENGTH)
    runbook_url: str = Field(
        default="https://runbooks.example.com/alertq/circuit-breaker", max_length=2048
    )
    generator_url: str | None = None

    # Operations
    http_addr: str = "127.0.0.1:8787"
    api_token: SecretStr | None = None
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = Field(
        default="INFO", pattern="(?i)^(debug|info|warning|error|critical)$", max_length=8
    )
    stats_cache_seconds: float = Field(default=5.0, ge=0, le=_HOUR)

    # Security (issue 9): request size limit and the proxies whose forwarded headers count
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Host names the ops server answers to besides loopback ones (red-team pass 4: DNS
    # rebinding). Bound to a loopback address, only loopback names are answered unless
    # listed here; bound elsewhere, any name unless this is set. "*": any, always.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Relay (issue 11): the Alertmanager-compatible intake, its auth, TLS and replay
    intake_username: str | None = None
    intake_password: SecretStr | None = None
    intake_bearer_token: SecretStr | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    replay_interval: float = Field(default=2.0, gt=0, le=_HOUR)

    # Red team (intake bounds): alerts in one POST /api/v2/alerts body. Alertmanager has no
    # limit, but parsing ~165k tiny alerts (a 4 MiB body) froze the server for 22 s.
    intake_max_alerts: int = Field(default=10_000, ge=1, le=1_000_000)
    # Connections the server serves at once (503 above): with ALERTQ_MAX_REQUEST_BYTES it
    # bounds the memory that stalled bodies can pin (300 of them held ~900 MB).
    max_connections: int = Field(default=200, ge=2, le=100_000)
    # Seconds a request's headers, and then its body, may take to arrive in full (408
    # after): frees the connection of a sender that stalls (httpguard.HeaderBoundProtocol
    # for the headers, RequestGuard for the body).
    body_timeout: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("concurrency", "default_disable_ttl", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # ALERTQ_CONCURRENCY= (a template that rendered nothing) means "the default".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("alertmanager_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [h.strip() for h in value.split(",") if h.strip()]
        if isinstance(value, list):
            for host in value:
                if not isinstance(host, str) or not _HOST_NAME.fullmatch(host):
                    raise ValueError(
                        f"not a host name: {str(host)[:80]!r} (e.g. alertq.example.com, "
                        "10.0.0.5, [2001:db8::1], or * for any)"
                    )
            return [h.lower() for h in value]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"invalid trusted proxy {entry[:100]!r}: use an IP address or a CIDR "
                    "such as 10.0.0.0/8"
                ) from None
        return value

    @field_validator("alertmanager_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        # The delivery adapter's own rule (limits.split_http_url), so a URL it would refuse,
        # or one whose password holds an unencoded '/', stops the command at start.
        # alertq appends /api/v2/alerts: a query or a fragment has no place to go.
        if not value:
            raise ValueError("at least one Alertmanager URL is needed")
        keys: set[str] = set()
        for url in value:
            key = split_http_url(url)[0]
            if key in keys:
                raise ValueError(f"Alertmanager URL listed twice: {key!r}")
            keys.add(key)
        return [u.rstrip("/") for u in value]

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        # Checked here so a typo stops the command with exit 2 and the setting's name, not
        # with exit 1 and a driver's message at the first connect.
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port  # ValueError unless a number from 0 to 65535
        except ValueError as exc:  # its text can quote a password holding '/', '?' or '#'
            reason = (
                "Port out of range 0-65535"
                if "out of range" in str(exc)
                else ("no valid host or port; percent-encode '/', '?', '#' and '@' in a password")
            )
            raise ValueError(
                f"not a database URL ({reason}): use sqlite+aiosqlite:///… or "
                "postgresql+asyncpg://…"
            ) from None
        backend = parts.scheme.partition("+")[0]
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {backend[:40]!r}: use sqlite+aiosqlite:///… or "
                "postgresql+asyncpg://…"
            )
        # SQLAlchemy picks asyncpg for a bare postgresql://, but pysqlite (not async) for
        # sqlite://: that failed at the first statement with exit 1.
        driver = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}[backend]
        if parts.scheme not in (f"{backend}+{driver}", "postgresql"):
            raise ValueError(
                f"use {backend}+{driver}://… (alertq's driver; got {parts.scheme[:40]!r})"
            )
        if port == 0:
            raise ValueError("port 0 is out of range (1-65535)")
        return value

    # Payload rules (issue 9): a generatorURL the breaker's alerts would be refused with must
    # fail at start-up, not when a breaker trips.
    @field_validator("generator_url")
    @classmethod
    def _check_generator_url(cls, value: str | None) -> str | None:
        return None if value is None else check_generator_url(value)

    # Red-team pass 4: javascript:alert(1) was accepted, and every breaker alert carried it
    # into the notifications built from it (a link in Slack, e-mail, the Alertmanager UI).
    @field_validator("runbook_url")
    @classmethod
    def _check_runbook_url(cls, value: str) -> str:
        if not _RUNBOOK_URL.fullmatch(value):
            raise ValueError(
                "must be an http(s) URL without spaces, quotes or angle brackets "
                "(e.g. https://runbooks.example.com/alertq)"
            )
        return value

    @model_validator(mode="after")
    def _lease_outlives_request(self) -> Settings:
        if self.lease_seconds <= self.alertmanager_timeout:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must exceed alertmanager_timeout "
                f"({self.alertmanager_timeout}): a lease that expires mid-request lets a "
                "second worker deliver the same row"
            )
        if self.alertmanager_bearer_token is not None and self.alertmanager_username is not None:
            raise ValueError("configure either basic auth or a bearer token, not both")
        if self.intake_bearer_token is not None and self.intake_username is not None:
            raise ValueError("intake: configure either basic auth or a bearer token, not both")
        if (self.intake_username is None) != (self.intake_password is None):
            raise ValueError("intake basic auth needs both ALERTQ_INTAKE_USERNAME and _PASSWORD")
        # An empty credential matched an empty header ("Authorization: Bearer") while the
        # intake counted as protected: refuse it here rather than guess "off" or "on".
        for name, value in (
            ("USERNAME", self.intake_username),
            ("PASSWORD", self.intake_password),
            ("BEARER_TOKEN", self.intake_bearer_token),
        ):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if text is not None and not text.strip():
                raise ValueError(
                    f"ALERTQ_INTAKE_{name} is empty or blank: unset it to turn intake auth "
                    "off, or give it a value"
                )
        if self.intake_username is not None and ":" in self.intake_username:
            raise ValueError(
                "ALERTQ_INTAKE_USERNAME must not contain ':' (basic auth splits on it)"
            )
        # Tokens travel in a header: a client can send only visible ASCII there.
        for name, secret in (
            ("ALERTQ_API_TOKEN", self.api_token),
            ("ALERTQ_INTAKE_BEARER_TOKEN", self.intake_bearer_token),
        ):
            text = secret.get_secret_value().strip() if secret is not None else ""
            if text and not (text.isascii() and text.isprintable() and " " not in text):
                raise ValueError(
                    f"{name} must be visible ASCII without spaces: no client can send it"
                )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both ALERTQ_TLS_CERT_FILE and ALERTQ_TLS_KEY_FILE")
        # Loaded here, as the server and the client will, so a missing or unreadable file
        # stops the command at start with exit 2 (it was exit 1 and a stray traceback).
        cert, key = self.tls_cert_file, self.tls_key_file
        if cert is not None and key is not None:
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            _load_tls(
                "ALERTQ_TLS_CERT_FILE / ALERTQ_TLS_KEY_FILE",
                lambda: server.load_cert_chain(cert, key, password=lambda: ""),
            )
        if self.alertmanager_ca_file is not None:
            ca = self.alertmanager_ca_file
            _load_tls("ALERTQ_ALERTMANAGER_CA_FILE", lambda: ssl.create_default_context(cafile=ca))
        return self

    @property
    def mutation_token(self) -> str | None:
        """The API token when mutations are on, else None.

        The one place that decides: unset, empty and blank all mean off (an empty token
        once compared equal to an empty header and opened every mutation). The token
        check, the banner, the start-up log line and the status page all read this.
        """
        if self.api_token is None:
            return None
        token = self.api_token.get_secret_value().strip()
        return token or None

    @property
    def mutations_enabled(self) -> bool:
        """Whether the API's mutating endpoints are on (see :attr:`mutation_token`)."""
        return self.mutation_token is not None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def delivery_loops(self, *, dedicated: bool) -> int:
        """``concurrency`` if set; else 3 for a dedicated worker (``alertq worker``) on
        PostgreSQL, 2 otherwise. A third loop fills the round-trip waits of the other two
        (12% faster at the same CPU per row); in ``alertq run`` it would take CPU from the
        relay's intake, and SQLite has one writer (docs/benchmarks.md, section 8)."""
        if self.concurrency is not None:
            return self.concurrency
        return 3 if dedicated and not self.is_sqlite else 2

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path.is_file():
            _check_owner(path)
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
