"""Vigil's one settings object, built once at an entry point and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def redact(url: str) -> str:
    """`url` with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable URL>"


PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Configuration from the environment (and an optional `.env` file).

    Tests build it with explicit values instead of patching the environment.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "redis_url"))
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri")
    )
    mlflow_artifacts_dir: Path | None = Field(
        None, validation_alias=AliasChoices("VIGIL_MLFLOW_ARTIFACTS", "mlflow_artifacts_dir")
    )
    api_keys: str = Field("", validation_alias=AliasChoices("VIGIL_API_KEYS", "api_keys"))
    device: Literal["cpu", "cuda", "auto"] = Field("auto", validation_alias=AliasChoices("VIGIL_DEVICE", "device"))
    data_dir: Path = Field(PROJECT_ROOT / "data", validation_alias=AliasChoices("VIGIL_DATA_DIR", "data_dir"))
    feature_repo: Path = Field(
        PROJECT_ROOT / "feature_repo", validation_alias=AliasChoices("VIGIL_FEATURE_REPO", "feature_repo")
    )
    reports_dir: Path = Field(
        PROJECT_ROOT / "reports", validation_alias=AliasChoices("VIGIL_REPORTS_DIR", "reports_dir")
    )
    # Where the offline event log lives when not under VIGIL_DATA_DIR: any URL pyarrow writes
    # (s3://bucket/prefix; an S3-compatible endpoint from AWS_ENDPOINT_URL).
    offline_url: str | None = Field(None, validation_alias=AliasChoices("VIGIL_OFFLINE_URL", "offline_url"))
    # Prefix of Vigil's own Redis keys (streams, dead letters), so tests and tenants can share a server.
    key_prefix: str = Field("vigil", validation_alias=AliasChoices("VIGIL_KEY_PREFIX", "key_prefix"))
    # Feast project name: the online store's keys end with it.
    feast_project: str = Field("vigil", validation_alias=AliasChoices("VIGIL_FEAST_PROJECT", "feast_project"))
    # Scoring service.
    score_budget_ms: float = Field(
        25.0, gt=0, validation_alias=AliasChoices("VIGIL_SCORE_BUDGET_MS", "score_budget_ms")
    )
    # A batch's deadline follows the time a row takes on this machine, measured on recent
    # batches (scoring/deadlines.py); this is the first estimate, and the least it may be.
    score_row_budget_ms: float = Field(
        0.25, ge=0, validation_alias=AliasChoices("VIGIL_SCORE_ROW_BUDGET_MS", "score_row_budget_ms")
    )
    max_batch: int = Field(10_000, gt=0, validation_alias=AliasChoices("VIGIL_MAX_BATCH", "max_batch"))
    # The HTTP server's own limits (scoring/http_limits.py): request line and headers, their
    # count, and the time a client may take to send them.
    max_header_bytes: int = Field(
        64 * 1024, gt=0, validation_alias=AliasChoices("VIGIL_MAX_HEADER_BYTES", "max_header_bytes")
    )
    max_headers: int = Field(100, gt=0, validation_alias=AliasChoices("VIGIL_MAX_HEADERS", "max_headers"))
    header_timeout_seconds: float = Field(
        10.0, gt=0, validation_alias=AliasChoices("VIGIL_HEADER_TIMEOUT_SECONDS", "header_timeout_seconds")
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, gt=0, validation_alias=AliasChoices("VIGIL_MAX_BODY_BYTES", "max_body_bytes")
    )
    # The feature flow's cache of entity histories, per partition (64 per kind): past it, the
    # least recently updated are dropped and reloaded from the online store when they return.
    flow_cache_entities: int = Field(
        100_000, gt=0, validation_alias=AliasChoices("VIGIL_FLOW_CACHE_ENTITIES", "flow_cache_entities")
    )
    batch_max_rows: int = Field(64, gt=0, validation_alias=AliasChoices("VIGIL_BATCH_MAX_ROWS", "batch_max_rows"))
    # How long a request may wait for others to share its model call (0 turns micro-batching off).
    batch_max_wait_ms: float = Field(
        0.5, ge=0, validation_alias=AliasChoices("VIGIL_BATCH_MAX_WAIT_MS", "batch_max_wait_ms")
    )
    # Decisions: a YAML file of rules (re-read on change) and one overriding the version's thresholds.
    rules_file: Path | None = Field(None, validation_alias=AliasChoices("VIGIL_RULES_FILE", "rules_file"))
    policy_file: str | None = Field(None, validation_alias=AliasChoices("VIGIL_POLICY_FILE", "policy_file"))
    # Interactive API documentation (/docs, /redoc, /openapi.json); with API keys set it needs a key.
    docs: bool = Field(True, validation_alias=AliasChoices("VIGIL_DOCS", "docs"))
    # Answers kept in memory while Redis is away, before the oldest are dropped (counted).
    prediction_buffer_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        validation_alias=AliasChoices("VIGIL_PREDICTION_BUFFER_BYTES", "prediction_buffer_bytes"),
    )
    # Review-queue entries are kept this long, then trimmed once their answers are persisted.
    review_retention_days: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("VIGIL_REVIEW_RETENTION_DAYS", "review_retention_days")
    )
    alias_poll_seconds: float = Field(
        5.0, gt=0, validation_alias=AliasChoices("VIGIL_ALIAS_POLL_SECONDS", "alias_poll_seconds")
    )
    # A live source (Redis stream, Kafka topic) stops once it has read everything there is:
    # a backfill from a stream, or a test. Off: it waits for more until stopped.
    # A stream consumer not seen for this long is gone: its pending entries are taken over.
    stream_claim_idle_seconds: float = Field(
        30.0, gt=0, validation_alias=AliasChoices("VIGIL_STREAM_CLAIM_IDLE_SECONDS", "stream_claim_idle_seconds")
    )
    # An event more than this far ahead of the stream's event-time progress is a dead letter
    # (at most the 7 days of slack the features' horizons leave: vigil.event_clock).
    event_time_tolerance_seconds: int = Field(
        86_400,
        gt=0,
        le=7 * 86_400,
        validation_alias=AliasChoices("VIGIL_EVENT_TIME_TOLERANCE_SECONDS", "event_time_tolerance_seconds"),
    )
    # A label whose payment the flow has not seen is held this long (a payment in flight on
    # another partition), then it is a dead letter.
    label_hold_seconds: float = Field(
        600.0, ge=0, validation_alias=AliasChoices("VIGIL_LABEL_HOLD_SECONDS", "label_hold_seconds")
    )
    stop_at_end: bool = Field(False, validation_alias=AliasChoices("VIGIL_STOP_AT_END", "stop_at_end"))
    start_local_redis: bool = Field(True, validation_alias=AliasChoices("VIGIL_START_LOCAL_REDIS", "start_local_redis"))

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
            raise ValueError(f"REDIS_URL must look like redis://HOST:PORT/DB, got {redact(value)!r}")
        return value

    @model_validator(mode="after")
    def _own_folders(self) -> Settings:
        # Another repo's data and reports are its own unless set: its version 1 is not the
        # handbook's, nor are its predictions or monitoring windows.
        scope = self.repo_scope
        if scope is not None:
            if "data_dir" not in self.model_fields_set:
                self.data_dir = PROJECT_ROOT / "data" / "repos" / scope
            if "reports_dir" not in self.model_fields_set:
                self.reports_dir = PROJECT_ROOT / "reports" / "repos" / scope
        return self

    @property
    def repo_scope(self) -> str | None:
        """None for the checkout's feature_repo/; for any other repo, its folder's name, which
        scopes its default registry, data and reports folders and its streams."""
        if self.feature_repo.resolve() == (PROJECT_ROOT / "feature_repo").resolve():
            return None
        return self.feature_repo.resolve().name

    @property
    def registry_dir(self) -> Path:
        """Where the default registry lives: mlflow/ for the checkout's feature_repo/, and
        mlflow/repos/<name>/ for any other repo (its models are not the handbook's)."""
        scope = self.repo_scope
        return PROJECT_ROOT / "mlflow" if scope is None else PROJECT_ROOT / "mlflow" / "repos" / scope

    def stream(self, name: str) -> str:
        """The key of Vigil's stream `name`: `<prefix>:<name>`, or `<prefix>:<repo>:<name>` for
        a repo other than the checkout's feature_repo/ (its events are not the handbook's)."""
        scope = self.repo_scope
        return f"{self.key_prefix}:{name}" if scope is None else f"{self.key_prefix}:{scope}:{name}"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.registry_dir / 'mlflow.db'}"

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    def __repr_args__(self) -> Any:
        # Settings are logged and printed: never with a secret in them.
        for name, value in super().__repr_args__():
            if name == "api_keys" and value:
                yield name, "***"
            elif name in ("redis_url", "mlflow_tracking_uri") and isinstance(value, str):
                yield name, redact(value)
            else:
                yield name, value

    @property
    def prediction_stream(self) -> str:
        return self.stream("predictions")

    @property
    def shadow_stream(self) -> str:
        return self.stream("shadow")

    @property
    def review_stream(self) -> str:
        return self.stream("review")

    @property
    def events_stream(self) -> str:
        return self.stream("events")

    @property
    def event_time_key(self) -> str:
        """Where the feature flow keeps its event-time watermark (vigil.event_clock)."""
        return f"{self.key_prefix}:event-time"

    @property
    def deadletter_stream(self) -> str:
        return self.stream("deadletter")

    @property
    def offline_dir(self) -> Path:
        """Local offline data: the backfilled feature table (and the event log by default)."""
        return self.data_dir / "offline"

    @property
    def event_log(self) -> str | Path:
        """The event log's root: VIGIL_OFFLINE_URL, or offline_dir."""
        return self.offline_url or self.offline_dir
