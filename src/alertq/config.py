"""Settings, read from ``ALERTQ_*`` environment variables and optionally a TOML file.

The TOML file is named by ``ALERTQ_CONFIG_FILE`` (default ``alertq.toml`` when it exists);
environment variables win over the file.
"""

from __future__ import annotations

import os
from datetime import timedelta
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


class DeliveryQuorum(StrEnum):
    """When a row counts as ``sent``: once any Alertmanager accepted it, or once all did."""

    ANY = "any"
    ALL = "all"


def _without_userinfo(url: str) -> str:
    """``url`` for an error message, with anything that may be ``user:password@`` hidden."""
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    host = (rest if sep else url).rpartition("@")[2]
    return f"{scheme}{sep}***@{host}" if sep else f"***@{host}"


def _config_file() -> Path:
    return Path(os.environ.get("ALERTQ_CONFIG_FILE", "alertq.toml"))


class Settings(BaseSettings):
    """Every knob of alertq. Field ``x`` is set by ``ALERTQ_X``."""

    model_config = SettingsConfigDict(env_prefix="ALERTQ_", extra="ignore")

    # Storage
    database_url: str = "sqlite+aiosqlite:///./alertq.db"
    db_pool_size: int = Field(default=10, ge=1)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)

    # Alertmanager targets and HTTP options (the delivery adapter reads these)
    alertmanager_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:9093"]
    )
    alertmanager_timeout: float = Field(default=10.0, gt=0)
    alertmanager_username: str | None = None
    alertmanager_password: SecretStr | None = None
    alertmanager_bearer_token: SecretStr | None = None
    alertmanager_ca_file: Path | None = None
    alertmanager_tls_verify: bool = True

    # Engine
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=10, ge=1)
    batch_size: int = Field(default=256, ge=1, le=256)
    concurrency: int = Field(default=2, ge=1, le=64)
    delivery_quorum: DeliveryQuorum = DeliveryQuorum.ANY
    poll_interval: float = Field(default=1.0, gt=0)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_cap: float = Field(default=300.0, gt=0)
    notify_throttle: float = Field(default=0.01, ge=0)

    # Wake-up on SQLite (issue 10): how often an idle worker reads PRAGMA data_version to
    # notice another process's commit. 25 ms keeps enqueue→delivered p99 under 100 ms at
    # 200 alerts/s for about 0.3 % of a core while idle (docs/benchmarks.md).
    sqlite_wake_interval: float = Field(default=0.025, gt=0, le=60)

    # Keep-alive (Prometheus semantics: resend firing alerts, resend resolved ones for a while)
    resend_interval: float = Field(default=60.0, gt=0)
    resolved_retention: float = Field(default=900.0, ge=0)

    # Circuit breaker
    drift_threshold: float = 0.2
    failure_threshold: int = Field(default=3, ge=1)
    schema_error_threshold: int = Field(default=5, ge=1)
    default_disable_ttl: float | None = Field(default=None, gt=0)
    severity_p1_drift: float = 0.5
    severity_p2_drift: float = 0.3
    instance: str = "alertq"
    runbook_url: str = "https://runbooks.example.com/alertq/circuit-breaker"
    generator_url: str | None = None

    # Operations
    http_addr: str = "127.0.0.1:8787"
    api_token: SecretStr | None = None
    log_format: str = Field(default="text", pattern="^(text|json)$")
    log_level: str = "INFO"
    stats_cache_seconds: float = Field(default=5.0, ge=0)

    @field_validator("alertmanager_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [u.strip() for u in value.split(",") if u.strip()]
        return value

    @field_validator("alertmanager_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(
                    "Alertmanager URL must start with http:// or https://: "
                    f"{_without_userinfo(url)!r}"
                )
        return [u.rstrip("/") for u in value]

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
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

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
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"2h"``, ``"30d"``, ``"1w"`` or plain seconds → timedelta."""
    value = text.strip().lower()
    try:
        if value and value[-1] in _UNITS:
            amount = float(value[:-1])
            seconds = amount * _UNITS[value[-1]]
        else:
            seconds = float(value)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 2h, 30d") from None
    if seconds <= 0 or seconds != seconds:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return timedelta(seconds=seconds)
