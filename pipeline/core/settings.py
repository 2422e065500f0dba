"""The one settings object, loaded once at the entrypoint.

Sources, lowest to highest precedence: defaults, ``SHARDHOUSE_*`` environment variables (plus
boto3's own ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_REGION``), CLI flags
(applied with :func:`dataclasses.replace` by the CLI). Everything below the CLI receives a
``Settings`` (or one of its sections); nothing reads the environment on its own.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pipeline.core.errors import ConfigError

T = TypeVar("T")

AWS_SERVICES = ("kinesis", "dynamodb", "s3", "sqs", "cloudformation")


def redact_url(url: str) -> str:
    """Hide a password embedded in a URL so settings can be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class AwsSettings:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    # Per-service overrides, as boto3's AWS_ENDPOINT_URL_<SERVICE> (e.g. Kinesis on kinesis-mock).
    service_endpoints: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5

    def endpoint_for(self, service: str) -> str | None:
        return self.service_endpoints.get(service) or self.endpoint_url


@dataclass(frozen=True)
class ResourceSettings:
    """Names of the AWS resources the pipeline uses (env: SHARDHOUSE_STREAM, SHARDHOUSE_BUCKET…)."""

    stream: str = "shardhouse-events"
    shard_count: int = 4
    bucket: str = "shardhouse-events"
    queue: str = "shardhouse-batches"
    dead_letter_queue: str = "shardhouse-batches-dlq"
    max_receive_count: int = 5


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    socket_timeout: float = 5.0
    dedupe_window_seconds: int = 24 * 3600

    def __repr__(self) -> str:
        return (
            f"RedisSettings(url={redact_url(self.url)!r}, dedupe_window_seconds={self.dedupe_window_seconds})"
        )


class WarehouseDialect(StrEnum):
    POSTGRES = "postgres"
    REDSHIFT = "redshift"


@dataclass(frozen=True)
class WarehouseSettings:
    url: str = "postgresql://shardhouse@127.0.0.1:5432/shardhouse"
    dialect: WarehouseDialect = WarehouseDialect.POSTGRES
    redshift_iam_role: str | None = None
    connect_timeout: float = 10.0
    dedupe_window_days: int = 7
    #: Every warehouse statement and lock wait is bounded (docs/inserter.md, "Timeouts").
    statement_timeout_seconds: int = 600
    lock_timeout_seconds: int = 60

    def __repr__(self) -> str:
        return (
            f"WarehouseSettings(url={redact_url(self.url)!r}, dialect={self.dialect.value!r}, "
            f"dedupe_window_days={self.dedupe_window_days})"
        )


@dataclass(frozen=True)
class WorkerSettings:
    batcher_app: str = "shardhouse-batcher"
    projector_app: str = "shardhouse-projector"
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    failover_ms: int = 10_000
    max_leases_for_worker: int = 0  # 0 = unlimited
    max_records: int = 10_000
    # New customers (workers.tenancy, docs/batcher.md "New customers"): "" = all; "a,b" or "@file"
    allowed_customers: str = ""
    new_customers_per_hour: int = 0  # 0 = no limit
    tenant_decision_ttl_seconds: int = 8 * 24 * 3600
    #: Bounded input (docs/consumer-runtime.md, "Bounded input"): a KPL aggregate over either
    #: limit is dead-lettered whole; a page is handed to the processor in pieces of this many.
    max_aggregate_records: int = 50_000
    max_aggregate_bytes: int = 1024 * 1024
    max_delivery_records: int = 10_000
    idle_between_reads_ms: int = 1_500
    initial_position: str = "TRIM_HORIZON"
    parent_poll_ms: int = 10_000
    spot_action_url: str = "http://169.254.169.254/latest/meta-data/spot/instance-action"
    spot_poll_seconds: float = 5.0
    flush_records: int = 50_000
    flush_bytes: int = 32 * 1024 * 1024
    flush_age_seconds: float = 30.0
    max_buffer_bytes: int = 256 * 1024 * 1024
    # sys.setswitchinterval for batcher processes (0 = leave Python's 5 ms): see workers.batcher.context
    gil_switch_interval_ms: float = 1.0
    metrics_port: int = 0  # 0 = no metrics endpoint


@dataclass(frozen=True)
class ReadApiSettings:
    """The read API's access control and connection limits (docs/projector.md, "Threat model").
    ``auth``: ``none`` (loopback only), ``tokens`` (bearer tokens from ``tokens_file``, each
    scoped to customers) or ``proxy`` (a reverse proxy authenticates and names the customer in
    ``proxy_header``)."""

    auth: str = "none"
    tokens_file: str | None = None
    proxy_header: str = "X-Shardhouse-Customer"
    idle_timeout_seconds: float = 30.0
    max_connections: int = 256


@dataclass(frozen=True)
class Settings:
    aws: AwsSettings = field(default_factory=AwsSettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    readapi: ReadApiSettings = field(default_factory=ReadApiSettings)
    state_dir: Path = Path(".shardhouse")
    log_level: str = "INFO"
    #: A deployed CloudFormation stack whose outputs name the resources (pipeline.core.deployed).
    stack: str | None = None

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env: dict[str, str] = {"AWS_REGION": self.aws.region, "AWS_DEFAULT_REGION": self.aws.region}
        if self.aws.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.aws.endpoint_url
        for svc, url in self.aws.service_endpoints.items():
            env[f"AWS_ENDPOINT_URL_{svc.upper()}"] = url
        for section, prefix in _SECTIONS.items():
            obj = getattr(self, section)
            for f in fields(obj):
                if f.name in _ENV_SKIP.get(section, ()):
                    continue
                value = getattr(obj, f.name)
                if value is not None:
                    env[f"SHARDHOUSE_{prefix}{f.name.upper()}"] = str(value)
        env["SHARDHOUSE_STATE_DIR"] = str(self.state_dir)
        env["SHARDHOUSE_LOG_LEVEL"] = self.log_level
        if self.stack:
            env["SHARDHOUSE_STACK"] = self.stack
        return env


_SECTIONS = {
    "resources": "",
    "redis": "REDIS_",
    "warehouse": "WAREHOUSE_",
    "worker": "",
    "readapi": "READAPI_",
}
_ENV_SKIP = {"worker": ("worker_id",), "redis": (), "warehouse": (), "resources": (), "readapi": ()}
# Friendlier names for the most used settings.
_ALIASES = {
    "SHARDHOUSE_DATABASE_URL": "SHARDHOUSE_WAREHOUSE_URL",
}


def _convert(name: str, raw: str, kind: Callable[[str], T]) -> T:
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


E = TypeVar("E", bound=Enum)


def _choice(name: str, raw: str, kind: type[E]) -> E:
    try:
        return kind(raw.strip().lower())
    except ValueError as exc:
        choices = " or ".join(str(m.value) for m in kind)
        raise ConfigError(f"{name}={raw!r}: expected {choices}") from exc


def _load_section(cls: type[T], prefix: str, env: Mapping[str, str]) -> T:
    default = cls()
    changes: dict[str, Any] = {}
    for f in fields(default):  # type: ignore[arg-type]
        key = f"SHARDHOUSE_{prefix}{f.name.upper()}"
        if key not in env:
            continue
        current = getattr(default, f.name)
        raw = env[key]
        if isinstance(current, Enum):
            changes[f.name] = _choice(key, raw, type(current))
        elif isinstance(current, bool):
            changes[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
        elif isinstance(current, int):
            changes[f.name] = _convert(key, raw, int)
        elif isinstance(current, float):
            changes[f.name] = _convert(key, raw, float)
        else:
            changes[f.name] = raw or None if current is None else raw
    return replace(default, **changes)  # type: ignore[type-var]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from an environment mapping (``os.environ`` by default)."""
    source = dict(os.environ if env is None else env)
    for alias, key in _ALIASES.items():
        if alias in source and key not in source:
            source[key] = source[alias]
    region = source.get("AWS_REGION") or source.get("AWS_DEFAULT_REGION") or "us-east-1"
    service_endpoints = {
        svc: source[f"AWS_ENDPOINT_URL_{svc.upper()}"]
        for svc in AWS_SERVICES
        if source.get(f"AWS_ENDPOINT_URL_{svc.upper()}")
    }
    aws = AwsSettings(
        region=region,
        endpoint_url=source.get("AWS_ENDPOINT_URL") or None,
        service_endpoints=service_endpoints,
    )
    settings = Settings(
        aws=aws,
        resources=_load_section(ResourceSettings, "", source),
        redis=_load_section(RedisSettings, "REDIS_", source),
        warehouse=_load_section(WarehouseSettings, "WAREHOUSE_", source),
        worker=_load_section(WorkerSettings, "", source),
        readapi=_load_section(ReadApiSettings, "READAPI_", source),
        state_dir=Path(source.get("SHARDHOUSE_STATE_DIR", ".shardhouse")),
        log_level=source.get("SHARDHOUSE_LOG_LEVEL", "INFO"),
        stack=source.get("SHARDHOUSE_STACK") or None,
    )
    validate_settings(settings)
    return settings


def validate_settings(settings: Settings) -> None:
    if settings.resources.shard_count < 1:
        raise ConfigError("SHARDHOUSE_SHARD_COUNT must be at least 1")
    for name in ("statement_timeout_seconds", "lock_timeout_seconds"):
        if getattr(settings.warehouse, name) < 1:
            raise ConfigError(f"SHARDHOUSE_WAREHOUSE_{name.upper()} must be at least 1")
    for name in ("max_aggregate_records", "max_aggregate_bytes", "max_delivery_records"):
        if getattr(settings.worker, name) < 1:
            raise ConfigError(f"SHARDHOUSE_{name.upper()} must be at least 1")
    if settings.redis.dedupe_window_seconds < 60:
        # the projector files applied ids by window number (workers/projector/plan.GateConfig)
        raise ConfigError("SHARDHOUSE_REDIS_DEDUPE_WINDOW_SECONDS must be at least 60")
    if settings.worker.initial_position not in {"TRIM_HORIZON", "LATEST"}:
        raise ConfigError("SHARDHOUSE_INITIAL_POSITION must be TRIM_HORIZON or LATEST")
    api = settings.readapi
    if api.auth not in {"none", "tokens", "proxy"}:
        raise ConfigError(f"SHARDHOUSE_READAPI_AUTH={api.auth!r}: expected none, tokens or proxy")
    if api.auth == "tokens" and not api.tokens_file:
        raise ConfigError("SHARDHOUSE_READAPI_TOKENS_FILE is required when SHARDHOUSE_READAPI_AUTH=tokens")
    if api.idle_timeout_seconds <= 0 or api.max_connections < 1:
        raise ConfigError("SHARDHOUSE_READAPI_IDLE_TIMEOUT_SECONDS and _MAX_CONNECTIONS must be positive")
