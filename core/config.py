"""Settings from the environment (and `st.secrets` when the UI passes them in), pydantic-settings.

No key set means everything runs offline on one machine: SQLite under DATA_DIR, local folder
storage, offline providers. Each capability switches to its real provider once its key is set,
unless forced with IMAGE_PROVIDER / VIDEO_PROVIDER / MODERATION_PROVIDER / STORAGE_BACKEND.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Literal

import limits
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderChoice = Literal["auto", "openai", "fal", "offline"]
StorageChoice = Literal["auto", "s3", "local"]

STEP_TIMEOUT_DEFAULTS_S: dict[str, float] = {
    "validate": 60,
    "generate_image": 300,
    "upload_image": 120,
    "generate_video": 900,
    "upload_video": 300,
    "finalize": 120,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # Where things live
    data_dir: Path = Path("data")
    database_url: str | None = None
    local_storage_dir: Path | None = None

    # Real providers (names as the original system used them)
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    fal_key: SecretStr | None = None
    fal_queue_run_host: str | None = None
    s3_bucket_name: str | None = None
    s3_region: str | None = None
    s3_endpoint_url: str | None = None
    redis_url: str | None = None

    image_provider: ProviderChoice = "auto"
    video_provider: ProviderChoice = "auto"
    moderation_provider: ProviderChoice = "auto"
    storage_backend: StorageChoice = "auto"
    image_model: str = "gpt-image-2"
    video_model: str = "fal-ai/veo3.1/image-to-video"
    moderation_model: str = "omni-moderation-latest"

    # Offline providers and fault injection
    offline_latency_s: float = Field(1.5, ge=0)
    offline_blocklist: str = "gore,beheading,massacre,child abuse,terrorist attack,nazi"
    fault_latency_s: float = Field(0.0, ge=0)
    fault_transient_rate: float = Field(0.0, ge=0, le=1)
    fault_permanent_rate: float = Field(0.0, ge=0, le=1)
    fault_seed: int | None = None

    # Engine. EXECUTOR=threads runs every run in this process's pool (one machine);
    # EXECUTOR=celery hands them to `python -m core worker` processes through the broker.
    executor: Literal["threads", "celery"] = "threads"
    celery_broker_url: str | None = None  # default: REDIS_URL
    # Fair sharing: a user's runs beyond this many wait `queued` until one of theirs ends.
    max_active_runs_per_user: int = Field(4, ge=1)
    worker_threads: int = Field(4, ge=1, le=256)
    starting_credits: int = Field(100, ge=0)
    retry_max_attempts: int = Field(4, ge=1)
    retry_initial_wait_s: float = Field(1.0, ge=0)
    retry_max_wait_s: float = Field(30.0, ge=0)
    poll_interval_s: float = Field(3.0, ge=0)
    progress_min_interval_s: float = Field(0.5, ge=0)
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_stale_s: float = Field(60.0, gt=0)
    # Short: on Postgres a pass takes over a dead runner's runs as soon as it runs (one
    # process at a time, a few small queries), so this is how long a takeover can wait.
    recovery_interval_s: float = Field(5.0, gt=0)
    max_recoveries: int = Field(3, ge=0)
    step_timeouts_s: dict[str, float] = Field(default_factory=dict)
    presign_expiry_s: int = Field(3600, gt=0)

    # Webhooks (core.webhooks): WEBHOOK_URL hears every event of every run, signed with
    # WEBHOOK_SECRET (whsec_...; generated once and kept in the database when not set).
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # A run's own webhookUrl must reach a public address; tests and closed networks allow more.
    allow_private_webhooks: bool = False
    webhook_max_age_s: float = Field(86400, gt=0)  # retried this long after the event, then failed
    webhook_retry_initial_wait_s: float = Field(5.0, ge=0)
    webhook_retry_max_wait_s: float = Field(7200.0, ge=0)
    webhook_poll_interval_s: float = Field(1.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)

    # Budget alerts by email too: smtp://[user:password@]host:port (smtps:// for TLS).
    smtp_url: SecretStr | None = None
    alert_email_from: str = "reelforge@localhost"
    alert_email_interval_s: float = Field(10.0, gt=0)

    # HTTP API (`python -m core api`)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    # Per token (per client address without one), in the `limits` notation ("120/minute",
    # "1000/hour"); a start counts against both.
    api_rate_limit: str = "120/minute"
    api_start_rate_limit: str = "20/minute"
    # The run stream: how often each API process reads new run events (one query for all its
    # streams), and how often an idle stream sends a ping comment to keep proxies from closing it.
    stream_poll_interval_s: float = Field(0.25, gt=0)
    stream_ping_s: float = Field(15.0, gt=0)

    # Operations. A worker serves /metrics, /livez and /readyz on METRICS_HOST:METRICS_PORT
    # (no port: none of them); the API serves them on its own port. LOG_FORMAT=json writes one
    # JSON object per line (core.logs).
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"

    # Accounts
    session_idle_timeout_s: float = Field(3600, gt=0)
    session_max_age_s: float = Field(12 * 3600, gt=0)
    # Signs the session cookie; generated once and kept in the database when not set.
    session_secret: SecretStr | None = None
    admin_email: str | None = None
    admin_password: SecretStr | None = None

    # `DEBUG=workflow:*` turns on debug logging for the engine, as in the original system.
    debug: str = ""

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _is_whsec(value.get_secret_value()):
            raise ValueError("must be whsec_ followed by base64 (24 to 64 random bytes)")
        return value

    @field_validator("step_timeouts_s")
    @classmethod
    def _known_steps_only(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(STEP_TIMEOUT_DEFAULTS_S)
        if unknown:
            raise ValueError(f"unknown step names {sorted(unknown)}")
        return value

    @field_validator("api_rate_limit", "api_start_rate_limit")
    @classmethod
    def _a_rate(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate such as 120/minute") from None
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'reelforge.db').resolve()}"

    @property
    def broker_url(self) -> str | None:
        return self.celery_broker_url or self.redis_url

    @property
    def resolved_storage_dir(self) -> Path:
        return (self.local_storage_dir or self.data_dir / "storage").resolve()

    @property
    def offline_provider_dir(self) -> Path:
        """Where the offline video 'service' keeps its jobs, so a restarted app can reattach."""
        return (self.data_dir / "offline-provider").resolve()

    def step_timeout_s(self, step: str) -> float:
        return self.step_timeouts_s.get(step, STEP_TIMEOUT_DEFAULTS_S[step])

    @property
    def blocklist(self) -> tuple[str, ...]:
        return tuple(w.strip().lower() for w in self.offline_blocklist.split(",") if w.strip())

    @property
    def debug_workflow(self) -> bool:
        return any(p.strip() in ("workflow:*", "*", "workflow") for p in self.debug.split(","))


def _is_whsec(secret: str) -> bool:
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError:
        return False
    return secret.startswith("whsec_") and 24 <= len(key) <= 64


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment; `overrides` (e.g. from st.secrets) win."""
    return Settings(**overrides)
