"""Settings, read once from DRIFTLINE_* environment variables.

Nothing connects at import time: stores are built from a Settings object by the
factories that need them, so tests build their own Settings against temp dirs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTLINE_", extra="ignore")

    home: Path = Field(default=Path("~/.driftline"), description="Data dir: embedded stores, spool, secrets.")
    clickhouse_url: str | None = Field(
        default=None,
        description="clickhouse://user:pass@host:9000/db; unset means the embedded chDB store under home.",
    )
    events_dir: Path | None = Field(default=None, description="chDB data dir; defaults to <home>/events.")
    events_database: str = Field(
        default="driftline",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Database of the embedded store.",
    )
    clickhouse_cluster: str | None = Field(default=None, description="Cluster name for sharded tables.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means SQLite under home."
    )
    bootstrap_key: SecretStr | None = Field(default=None, description="Created as an admin key of 'default'.")
    secret_key: SecretStr | None = Field(
        default=None, description="Keys PII hashing and secret encryption; generated under home when unset."
    )
    secret_key_previous: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Earlier secret keys, comma-separated: channel URLs and secrets stored under them "
        "still open; `driftline secrets rotate` seals them again under the current key.",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL of the dashboard, for links in alerts."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, description="JSON bodies over this: 413.")
    max_bulk_bytes: int = Field(
        default=1024 * 1024 * 1024, ge=1024, description="Bulk bodies over this: 413."
    )
    max_batch_rows: int = Field(default=100_000, ge=1, description="JSON records per request over this: 413.")
    body_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A request body must arrive within this (stretched for large ones): 408.",
    )
    max_future_seconds: int = Field(default=86_400, ge=0, description="Event times further ahead: 422.")

    spool_dir: Path | None = Field(default=None, description="Defaults to <home>/spool.")
    spool_max_bytes: int = Field(default=8 * 1024**3, ge=1024 * 1024, description="Full spool: 503.")
    spool_min_free_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="Less free disk: 503.")
    flush_interval_seconds: float = Field(default=0.5, gt=0)
    flush_max_rows: int = Field(default=100_000, ge=1)
    direct_insert_min_rows: int = Field(
        default=20_000, ge=1, description="Bulk bodies this large are inserted at once, not via the spool."
    )

    scheduler_enabled: bool = True
    scheduler_in_api: bool = Field(
        default=False,
        description="Run the scheduler in API processes even with a ClickHouse server "
        "(by default `driftline worker` runs it there; on the embedded store the API always does).",
    )
    scheduler_tick_seconds: float = Field(
        default=60.0, ge=0.1, le=3600, description="How often the scheduler looks for models that are due."
    )
    scheduler_lease_seconds: float = Field(
        default=600.0,
        ge=1,
        description="How long a worker holds a model without renewing; a crashed worker's models wait this long.",
    )
    retention_days: int = Field(default=400, ge=1)
    detect_max_windows: int = Field(
        default=10_000, ge=1, description="Windows one detect request may span; more: 422."
    )
    detect_spool_timeout_seconds: float = Field(
        default=60.0, ge=0, description="How long detection waits for the spool to drain into the store."
    )

    alerts_delivery_enabled: bool = Field(
        default=True, description="Run the outbox sender (alerts, retraining dispatch) in API processes."
    )
    alerts_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often an idle sender looks for notifications that fell due.",
    )
    alerts_concurrency: int = Field(
        default=4, ge=1, le=64, description="Notifications sent at once per process."
    )
    alerts_max_attempts: int = Field(
        default=8, ge=1, le=100, description="Attempts before a notification is dead-lettered."
    )
    alerts_retry_base_seconds: float = Field(
        default=5.0, gt=0, description="First retry delay; doubles per attempt (with jitter)."
    )
    alerts_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="Longest delay between attempts."
    )
    alerts_retry_after_max_seconds: float = Field(
        default=6 * 3600.0, gt=0, description="Longest Retry-After a receiver may ask for."
    )
    alerts_timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="One HTTP attempt.")
    alerts_lease_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a sender holds a notification it is sending; a crashed sender's wait this long.",
    )

    @field_validator("secret_key_previous", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("home", "spool_dir", "events_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.bootstrap_key is not None and len(self.bootstrap_key.get_secret_value()) < 16:
            raise ValueError("DRIFTLINE_BOOTSTRAP_KEY must be at least 16 characters")
        if self.clickhouse_cluster and not self.clickhouse_url:
            raise ValueError("DRIFTLINE_CLICKHOUSE_CLUSTER needs DRIFTLINE_CLICKHOUSE_URL")
        if self.alerts_lease_seconds < 4 * self.alerts_timeout_seconds:
            # an attempt may take connect + write + read timeouts; a shorter lease would let a second
            # sender resend while the first still waits
            raise ValueError(
                "DRIFTLINE_ALERTS_LEASE_SECONDS must be at least 4 x DRIFTLINE_ALERTS_TIMEOUT_SECONDS"
            )
        if self.alerts_retry_max_seconds < self.alerts_retry_base_seconds:
            raise ValueError(
                "DRIFTLINE_ALERTS_RETRY_MAX_SECONDS must not be below DRIFTLINE_ALERTS_RETRY_BASE_SECONDS"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'meta.db'}"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.home / "spool"

    @property
    def chdb_path(self) -> Path:
        return self.events_dir or self.home / "events"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests pass their own Settings instead."""
    return Settings()


def secret_key(settings: Settings) -> bytes:
    """The deployment's secret (PII hashing, secret encryption): set, or made once under home.

    Every replica must share it, so a cluster sets DRIFTLINE_SECRET_KEY; a single
    machine gets one generated into <home>/secret.key (mode 0600) at first start.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    import os
    import secrets

    path = settings.home / "secret.key"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def previous_secret_keys(settings: Settings) -> list[bytes]:
    """Secrets that were current before a rotation: they still open what they sealed."""
    return [key.get_secret_value().encode() for key in settings.secret_key_previous]
