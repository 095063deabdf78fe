"""One settings object: defaults, then a config file, then LOYALTY_* variables, then flags.

``loyalty config show`` prints the effective settings with secrets redacted. Every
limit the server enforces is a field here, named with its unit last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from processor.limits import (
    CACHE_KEY_PREFIX_CHARS_MAX,
    EVENTS_KEPT_DAYS_DEFAULT,
    JOB_CHUNK_ACCOUNTS_MAX,
    PIN_ATTEMPTS_MAX,
    TOKEN_LEEWAY_SECONDS_MAX,
)


class Settings(BaseSettings):
    """The server's settings; environment variables are LOYALTY_<FIELD> (upper case)."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="forbid")

    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:8000"
    # TLS on both ports (processor.service.tls): PEM files, read again when they change.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # clients must present a certificate it signed
    # Plaintext on an address other than loopback (a TLS-terminating proxy on this host).
    plaintext_allowed: bool = False
    # Who may call (processor.service.auth, processor.service.roles): API keys always; bearer
    # tokens when an issuer, audience and JWKS (a file or an https URL) are given.
    auth_token_issuer: str | None = None
    auth_token_audience: str | None = None
    auth_token_jwks: str | None = None
    auth_token_leeway_seconds: float = Field(default=30.0, ge=0, le=TOKEN_LEEWAY_SECONDS_MAX)
    auth_token_roles_claim: str = "roles"
    auth_token_cards_claim: str = "cards"
    # How often each process reads the API keys again: a revocation takes at most this long.
    auth_keys_refresh_seconds: float = Field(default=2.0, gt=0, le=600)
    # Reflection without credentials (tools such as grpcurl list the services); false: any
    # authenticated caller. Health is always open.
    auth_reflection_open: bool = True
    workers: int = Field(default=1, ge=1, le=64)
    database_url: SecretStr | None = None
    # The secret PIN hashes are keyed with (processor.store.cards); required but in the demo.
    pin_key: SecretStr | None = None
    # Wrong PINs in a row that lock a card's PIN until `loyalty cards unlock-pin`.
    pin_attempts_max: int = Field(default=PIN_ATTEMPTS_MAX, ge=1, le=100)
    redis_url: SecretStr | None = None
    cache_key_prefix: str = Field(default="loyalty:", max_length=CACHE_KEY_PREFIX_CHARS_MAX)
    cache_compression: bool = True
    # Hold the cards and customers batches read in memory, told of changes by PostgreSQL
    # (processor.store.card_cache): a batch of held cards reads nothing before evaluation.
    card_cache: bool = True
    # One connection per process LISTENs for changes (processor.store.notifications), so
    # background loops sleep until a change rather than poll. False behind a pooler in
    # transaction mode, where LISTEN hears nothing: every loop polls, no card is held.
    notifications: bool = True
    # gRPC's HTTP/2 bandwidth-delay probe: a PING beside a connection's data, to size its
    # flow-control window for large transfers over slow links. Off, it saves a transaction's
    # requests about an eighth of the transport's CPU with many connections (BENCHMARKS.md);
    # on, large PostTransactions calls over a long-haul link may send faster.
    http2_bdp_probe: bool = False
    data_dir: Path = Path(".data")
    engine: str | None = None
    batch_requests_max: int = Field(default=1_000, ge=1, le=10_000)
    flush_interval_ms: float = Field(default=2.0, ge=0, le=1_000)
    batches_in_flight_max: int = Field(default=1, ge=1, le=16)
    queue_depth_max: int = Field(default=20_000, ge=1, le=1_000_000)
    grace_seconds: float = Field(default=10.0, ge=0, le=600)
    registry_refresh_seconds: float = Field(default=1.0, gt=0, le=600)
    # How long one attempt to reconnect to PostgreSQL backs off before a new one starts.
    database_reconnect_seconds: float = Field(default=5.0, gt=0, le=600)
    # Freeze start-up's objects and collect garbage less often while serving (serve.py).
    gc_tuning: bool = True
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # The scheduled jobs (processor.jobs): run in every `loyalty serve` process, each tick
    # of jobs_cron (UTC) running each job once across all of them; accounts per commit.
    jobs_schedule: bool = True
    jobs_cron: str = "15 2 * * *"
    jobs_chunk_accounts: int = Field(default=1_000, ge=1, le=JOB_CHUNK_ACCOUNTS_MAX)
    # Where events (level moves, awards issued) are delivered besides WatchEvents
    # (processor.outbox): a webhook POSTed JSON pages, and/or the log, each at least once.
    # The URL is a secret (shown redacted): webhooks often carry their token in it.
    events_webhook_url: SecretStr | None = None
    events_log: bool = False
    # Each transaction's earned points as an event too (points_issued): a row per earning
    # transaction in its commit, for points alerts; off, only moves and awards are events.
    events_points_issued: bool = False
    # Senders installed packages add (processor.outbox.plugins), by name, comma-separated.
    events_senders: str = ""
    # Days an event is kept once every sender has had it (the schedule removes older ones
    # hourly); the health report counts moves from events, so keep a year or more.
    events_kept_days: int = Field(default=EVENTS_KEPT_DAYS_DEFAULT, ge=1, le=36_500)
    demo: bool = False
    demo_cards: int = Field(default=2_000, ge=0, le=100_000)

    @field_validator("jobs_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from processor.jobs.schedule import check_cron

        return check_cron(value)

    @field_validator("events_webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        url = secret(value)
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value if url else None

    @field_validator("events_senders")
    @classmethod
    def _plugins(cls, value: str) -> str:
        from processor.outbox.plugins import names_of

        names_of(value)
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    def redacted(self) -> dict[str, Any]:
        """The settings as printable values, secrets replaced by a marker."""
        shown: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                shown[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                shown[name] = str(value)
            else:
                shown[name] = value
        return shown


def secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
