"""``create_database``: pick a backend by type and URL; synchronous, no I/O."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Unpack, cast

from kvstore.clock import SYSTEM_CLOCK, Clock
from kvstore.errors import ConfigurationError
from kvstore.options import COMMON_OPTIONS, REDIS_OPTIONS, SQL_OPTIONS
from kvstore.recent import DEFAULT_BYTES, DEFAULT_ENTRIES, RecentReads
from kvstore.store import DEFAULT_MAX_VALUE_BYTES, Store

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import timedelta

    from backends.base import Backend
    from backends.telemetry import Instruments
    from kvstore.interface import Database
    from kvstore.options import DatabaseOptions, RedisOptions, SQLOptions
    from serializers import Serializer

    Builder = Callable[
        [str | None, DatabaseOptions, Clock, Instruments | None], tuple[Backend, str]
    ]

DEFAULT_SQL_URL: Final = "sqlite:///kvstore.db"
"""The embedded default: a SQLite file in the working directory."""


class DatabaseType(StrEnum):
    """The kinds of store ``create_database`` builds."""

    MEMORY = "memory"
    SQL = "sql"
    REDIS = "redis"
    TIERED = "tiered"


def create_database(
    db_type: DatabaseType | str,
    connection_string: str | None = None,
    *,
    serializer: Serializer | None = None,
    ttls: Mapping[str, float | timedelta] | None = None,
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    **options: Unpack[DatabaseOptions],
) -> Database:
    """Build a :class:`Database`. Does no I/O: the first operation connects.

    ``connection_string`` for SQL defaults to ``$KVSTORE_URL``, then a SQLite file
    ``./kvstore.db``. ``ttls`` gives default expiry (seconds) per built-in namespace.
    ``options`` are the backend's own settings (:mod:`kvstore.options`).
    """
    try:
        kind = DatabaseType(db_type)
    except ValueError:
        choices = ", ".join(t.value for t in DatabaseType)
        raise ConfigurationError(
            f"unknown database type {db_type!r}; use one of {choices}"
        ) from None

    clock = options.get("clock", SYSTEM_CLOCK)
    if not isinstance(clock, Clock):
        raise ConfigurationError("clock must have now() and monotonic() (see kvstore.clock)")
    recent = RecentReads(
        options.get("recent_reads", DEFAULT_ENTRIES),
        options.get("recent_reads_bytes", DEFAULT_BYTES),
    )
    instruments = _instruments(options)
    backend, description = BUILDERS[kind](connection_string, options, clock, instruments)
    if instruments is not None:
        from backends.telemetry import TracedBackend, observe_stats

        backend = TracedBackend(backend, instruments)
        observe_stats(instruments, backend.stats)
    return Store(
        backend,
        serializer=serializer,
        ttls=ttls,
        max_value_bytes=max_value_bytes,
        description=description,
        recent=recent,
    )


# -- one builder per DatabaseType; each imports its backend only when called -------------

Built = tuple["Backend", str]
"""A backend and its description (its URL without secrets)."""


def _instruments(options: DatabaseOptions) -> Instruments | None:
    """OpenTelemetry instruments if the options ask for telemetry (imported only then)."""
    tracer_provider = options.get("tracer_provider")
    meter_provider = options.get("meter_provider")
    if not options.get("telemetry") and tracer_provider is None and meter_provider is None:
        return None
    try:
        from backends.telemetry import Instruments
    except ImportError as exc:
        raise ConfigurationError(
            "telemetry needs the opentelemetry-api package: pip install 'kvstore-tiered[otel]'"
        ) from exc
    return Instruments(tracer_provider, meter_provider)


def _memory(
    url: str | None, options: DatabaseOptions, clock: Clock, instruments: Instruments | None
) -> Built:
    from backends.memory import MemoryBackend

    if url not in (None, "memory://"):
        raise ConfigurationError("the memory database takes no connection string")
    _refuse_options(DatabaseType.MEMORY, _own(options), allowed=frozenset())
    return MemoryBackend(clock=clock), "memory://"


def _sql(
    url: str | None, options: DatabaseOptions, clock: Clock, instruments: Instruments | None
) -> Built:
    from backends.sql import build_sql_backend

    own = _own(options)
    _refuse_options(DatabaseType.SQL, own, allowed=SQL_OPTIONS)
    url = url or os.environ.get("KVSTORE_URL") or DEFAULT_SQL_URL
    backend = build_sql_backend(url, cast("SQLOptions", own), clock=clock)
    return backend, backend.config.masked_url


def _redis(
    url: str | None, options: DatabaseOptions, clock: Clock, instruments: Instruments | None
) -> Built:
    from backends.redis import build_redis_backend

    own = _own(options)
    _refuse_options(DatabaseType.REDIS, own, allowed=REDIS_OPTIONS)
    backend = build_redis_backend(url, cast("RedisOptions", own), clock=clock)
    return backend, backend.description


def _tiered(
    url: str | None, options: DatabaseOptions, clock: Clock, instruments: Instruments | None
) -> Built:
    from backends.tiered import build_tiered_backend

    return build_tiered_backend(url, options, instruments=instruments)


BUILDERS: Final[Mapping[DatabaseType, Builder]] = {
    DatabaseType.MEMORY: _memory,
    DatabaseType.SQL: _sql,
    DatabaseType.REDIS: _redis,
    DatabaseType.TIERED: _tiered,
}
"""How each kind of database is built (the drivers are imported by the builder alone, so
``import kvstore`` loads none of them)."""


def _own(options: DatabaseOptions) -> dict[str, object]:
    """The backend's own options (those every kind takes left out)."""
    return {name: value for name, value in options.items() if name not in COMMON_OPTIONS}


def _refuse_options(
    kind: DatabaseType, options: Mapping[str, object], allowed: frozenset[str]
) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(f"{kind.value} database does not take: {', '.join(unknown)}")
