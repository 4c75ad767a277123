"""Keyword options of :func:`kvstore.create_database`, typed (PEP 692 ``Unpack``).

Each backend reads the options of its own section; passing an option that the chosen
database type does not use raises :class:`~kvstore.errors.ConfigurationError`. Defaults are
documented in the README ("Configuration"). SQL options can also come from URL query
parameters of the same name (keywords win).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypedDict

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from kvstore.clock import Clock


class CommonOptions(TypedDict, total=False):
    """Options every database type takes."""

    clock: Clock
    telemetry: bool
    """Spans and metrics through OpenTelemetry's global providers (needs the ``otel``
    extra; see docs/observability.md)."""
    tracer_provider: TracerProvider | None
    """Telemetry to this tracer provider instead of the global one (implies telemetry;
    ``None`` is as if not given)."""
    meter_provider: MeterProvider | None
    """Telemetry to this meter provider instead of the global one (implies telemetry;
    ``None`` is as if not given)."""
    recent_reads: int
    """Records read lately that are kept validated, so that one read again unchanged is
    copied rather than validated again (:mod:`kvstore.recent`; 0 keeps none)."""
    recent_reads_bytes: int
    """The most bytes of stored values those records may hold."""


class SQLOptions(TypedDict, total=False):
    """Options of the SQL backend (and of the tiered store's system of record)."""

    pool_size: int
    max_overflow: int
    pool_pre_ping: bool
    pool_recycle: float
    connect_timeout: float
    statement_timeout: float
    echo: bool
    group_commit: bool
    partitions: int
    """PostgreSQL: hash-partition a new ``kv_records`` by owner into this many parts
    (``kvstore db partition`` converts an existing one)."""
    replica_url: str
    """PostgreSQL: a streaming replica for listings, exports and counts; this process's
    own writes are waited for there (``replica_wait``), else the primary answers."""
    replica_wait: float


class RedisOptions(TypedDict, total=False):
    """Options of the Redis backend (and of a Redis cache tier)."""

    redis_client: Redis | RedisCluster
    key_prefix: str
    max_connections: int
    socket_timeout: float
    socket_connect_timeout: float
    health_check_interval: float
    pool_wait_timeout: float
    max_retries: int
    autopipeline: bool


class TieredOptions(TypedDict, total=False):
    """Options of the tiered store's cache and circuit breaker."""

    cache_url: str
    cache_ttl: float
    cache_timeout: float
    cache_max_entries: int
    cache_max_bytes: int
    lease_ttl: float
    breaker_threshold: int
    breaker_reset_after: float
    invalidate_before_write: bool
    follow_changes: bool
    feed_interval: float
    near_cache_entries: int
    near_cache_max_lag: float


class DatabaseOptions(CommonOptions, SQLOptions, RedisOptions, TieredOptions, total=False):
    """Every option ``create_database`` accepts."""


COMMON_OPTIONS: Final = frozenset(CommonOptions.__annotations__)
SQL_OPTIONS: Final = frozenset(SQLOptions.__annotations__)
REDIS_OPTIONS: Final = frozenset(RedisOptions.__annotations__)
TIERED_OPTIONS: Final = frozenset(TieredOptions.__annotations__)
