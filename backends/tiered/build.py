"""Building the tiered store from ``create_database`` options: the system of record, the
cache, and the store around them."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from backends.redis.connect import SCHEMES as REDIS_SCHEMES
from backends.tiered.changes import DEFAULT_FEED_INTERVAL
from backends.tiered.near import DEFAULT_MAX_LAG
from backends.tiered.store import (
    DEFAULT_BREAKER_RESET_AFTER,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_CACHE_TIMEOUT,
    DEFAULT_CACHE_TTL,
    DEFAULT_LEASE_TTL,
    TieredBackend,
)
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import ConfigurationError
from kvstore.urls import mask_url

if TYPE_CHECKING:
    from collections.abc import Mapping

    from backends.base import Backend
    from backends.cache_base import VersionedCache
    from backends.telemetry import Instruments
    from kvstore.clock import Clock
    from kvstore.options import DatabaseOptions, RedisOptions, SQLOptions


def build_tiered_backend(
    record_url: str | None, options: DatabaseOptions, *, instruments: Instruments | None = None
) -> tuple[TieredBackend, str]:
    """The tiered backend ``create_database`` builds, and its description (no secrets).

    ``record_url`` is the system of record: a SQL URL, or ``"memory://"`` (a
    :class:`~backends.memory.MemoryBackend`, for tests). The cache is ``redis_client`` if
    given, else ``cache_url``: ``"redis://..."`` (also ``rediss://``, ``unix://``) or
    ``"memory://"`` (a per-process :class:`~backends.memory.MemoryCache`). With
    ``instruments``, the calls to each tier are traced (:mod:`backends.telemetry`).
    """
    from kvstore.options import COMMON_OPTIONS, REDIS_OPTIONS, SQL_OPTIONS, TIERED_OPTIONS

    if record_url is None:
        raise ConfigurationError("the tiered database needs connection_string (a SQL URL)")
    given: Mapping[str, object] = options
    sql_options = {name: given[name] for name in SQL_OPTIONS if name in given}
    redis_options = {name: given[name] for name in REDIS_OPTIONS if name in given}
    unknown = set(options) - COMMON_OPTIONS - SQL_OPTIONS - REDIS_OPTIONS - TIERED_OPTIONS
    if unknown:
        raise ConfigurationError(f"tiered database does not take: {', '.join(sorted(unknown))}")
    clock = options.get("clock", SYSTEM_CLOCK)
    record, record_description = _build_record(record_url, sql_options, clock)
    cache, cache_description = _build_cache(options, redis_options, clock)
    if instruments is not None:
        from backends.telemetry import TracedBackend, TracedCache

        cache = TracedCache(cache, instruments)
        record = TracedBackend(record, instruments, tier="record")
    backend = TieredBackend(
        record,
        cache,
        cache_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
        cache_timeout=options.get("cache_timeout", DEFAULT_CACHE_TIMEOUT),
        lease_ttl=options.get("lease_ttl", DEFAULT_LEASE_TTL),
        breaker_threshold=options.get("breaker_threshold", DEFAULT_BREAKER_THRESHOLD),
        breaker_reset_after=options.get("breaker_reset_after", DEFAULT_BREAKER_RESET_AFTER),
        invalidate_before_write=options.get("invalidate_before_write", False),
        follow=options.get("follow_changes", True),
        feed_interval=options.get("feed_interval", DEFAULT_FEED_INTERVAL),
        cache_name=options.get("key_prefix", "kv:"),
        near_entries=options.get("near_cache_entries", 0),
        near_max_lag=options.get("near_cache_max_lag", DEFAULT_MAX_LAG),
        # a read whose span is recorded does its own lookup, to show its own lookup span
        coalesce_reads=True if instruments is None else instruments.not_recording,
        clock=clock,
    )
    return backend, f"tiered({record_description} + {cache_description})"


def _build_record(url: str, sql_options: dict[str, object], clock: Clock) -> tuple[Backend, str]:
    if url == "memory://":
        if sql_options:
            raise ConfigurationError("a memory:// system of record takes no SQL options")
        from backends.memory import MemoryBackend

        return MemoryBackend(clock=clock), "memory://"
    from backends.sql import build_sql_backend

    backend = build_sql_backend(url, cast("SQLOptions", sql_options), clock=clock)
    return backend, backend.config.masked_url


def _build_cache(
    options: DatabaseOptions, redis_options: dict[str, object], clock: Clock
) -> tuple[VersionedCache, str]:
    url = options.get("cache_url")
    if url == "memory://" and "redis_client" not in options:
        if redis_options:
            raise ConfigurationError(
                f"a memory:// cache does not take: {', '.join(sorted(redis_options))}"
            )
        from backends.memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryCache

        memory = MemoryCache(
            max_entries=options.get("cache_max_entries", DEFAULT_MAX_ENTRIES),
            max_bytes=options.get("cache_max_bytes", DEFAULT_MAX_BYTES),
            default_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
            clock=clock,
        )
        return memory, "memory://"
    if url is None and "redis_client" not in options:
        raise ConfigurationError(
            'the tiered database needs cache_url ("redis://..." or "memory://") or redis_client'
        )
    if url is not None and url.partition("://")[0] not in REDIS_SCHEMES:
        schemes = ", ".join(f"{scheme}://" for scheme in sorted(REDIS_SCHEMES))
        raise ConfigurationError(
            f"cache_url must be memory:// or a Redis URL ({schemes}), got {mask_url(url)}"
        )
    for name in ("cache_max_entries", "cache_max_bytes"):
        if name in options:
            raise ConfigurationError(f"{name} bounds the memory:// cache; Redis has maxmemory")
    from backends.redis import build_redis_backend

    cache = build_redis_backend(
        url,
        cast("RedisOptions", redis_options),
        cache_ttl=options.get("cache_ttl", DEFAULT_CACHE_TTL),
        clock=clock,
    )
    return cache, cache.description
