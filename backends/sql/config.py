"""SQL backend settings: URL normalization, options, and the engine built from them.

``postgresql://`` / ``postgres://`` mean asyncpg, ``sqlite:///path`` means aiosqlite.
Options come from :class:`kvstore.options.SQLOptions` keywords or URL query parameters of
the same name (keywords win). The driver's own parameters that a URL can carry pass through
(PostgreSQL: asyncpg's ``password`` and ``ssl``, with libpq's ``sslmode`` as its alias,
``target_session_attrs``, ``passfile``, ``krbsrvname``, ``gsslib``, and SQLAlchemy's
``prepared_statement_cache_size``); any other is a :class:`ConfigurationError`, not a
``TypeError`` at the first connection.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import asyncpg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kvstore.errors import ConfigurationError
from kvstore.options import SQL_OPTIONS
from kvstore.urls import check_query_names, mask_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Generator

    from sqlalchemy.engine import URL

    from kvstore.options import SQLOptions

Dialect = Literal["postgresql", "sqlite"]

_DRIVERS: Final[dict[str, Dialect]] = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "sqlite": "sqlite",
    "sqlite+aiosqlite": "sqlite",
}
_DRIVER_NAMES: Final[dict[Dialect, str]] = {
    "postgresql": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
DRIVER_PARAMETERS: Final[dict[Dialect, frozenset[str]]] = {
    "postgresql": frozenset(
        {
            "password",
            "ssl",
            "target_session_attrs",
            "passfile",
            "krbsrvname",
            "gsslib",
            "prepared_statement_cache_size",
        }
    ),
    "sqlite": frozenset(),
}
"""URL query parameters that go to the driver, per dialect."""
_ALIASES: Final[dict[str, str]] = {"sslmode": "ssl"}
"""libpq's spelling -> asyncpg's (which takes the same mode names)."""
MAX_PARTITIONS: Final = 1024
"""The most hash partitions of ``kv_records`` (plans slow down with thousands; a deployment
that needs more needs more servers: docs/scale.md)."""
READ_ONLY: Final = "kvstore_read_only"
"""Execution option: on SQLite, open the transaction with a plain ``BEGIN`` (no write lock)."""


@dataclass(frozen=True, slots=True)
class SQLConfig:
    """Everything needed to build the engine. Defaults are the documented ones."""

    url: URL
    dialect: Dialect
    pool_size: int = 10
    max_overflow: int = 0
    """Burst connections beyond ``pool_size``. 0 by default: SQLAlchemy closes an overflow
    connection when it is returned to a full pool, so sustained load above ``pool_size``
    opens and closes a connection per statement (measured: half the throughput)."""
    pool_pre_ping: bool = False
    pool_recycle: float = 3600.0
    connect_timeout: float = 10.0
    statement_timeout: float = 30.0
    echo: bool = False
    group_commit: bool = True
    """PostgreSQL: saves that queue for a connection go as one statement per round
    (:mod:`backends.sql.batch`)."""
    partitions: int | None = None
    """PostgreSQL: the hash partitions by owner a new ``kv_records`` is created with
    (:mod:`backends.sql.partition`); ``None`` takes the table as it is."""
    replica_url: str | None = None
    """PostgreSQL: a streaming replica for listings, exports and counts
    (:mod:`backends.sql.replica`)."""
    replica_wait: float = 1.0
    """Seconds a replica read waits for the replica to replay this process's own writes
    before it goes to the primary instead."""

    @property
    def masked_url(self) -> str:
        """The URL without its password, for messages and reprs."""
        return mask_url(self.url.render_as_string(hide_password=False))


_DEFAULTS: Final = {field.name: field.default for field in fields(SQLConfig)}


def parse_sql_url(url: str, options: SQLOptions | None = None) -> SQLConfig:
    """Normalize ``url`` and merge URL query options with keyword ``options``."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(f"malformed SQL connection URL {mask_url(url)}") from None
    dialect = _DRIVERS.get(parsed.drivername)
    if dialect is None:
        schemes = ", ".join(f"{s}://" for s in _DRIVERS)
        raise ConfigurationError(
            f"unsupported SQL URL scheme {parsed.drivername!r} in {mask_url(url)}; use {schemes}"
        )
    if dialect == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "SQLite needs a file (sqlite:///path/to/file.db); for an in-memory store use "
            "DatabaseType.MEMORY"
        )
    if dialect == "sqlite" and (parsed.username or parsed.password or parsed.host):
        raise ConfigurationError(
            f"a SQLite URL names a file, with no user, password or host: {mask_url(url)}; "
            "use sqlite:///path/to/file.db"
        )
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        raise ConfigurationError(f"the port in {mask_url(url)} must be 1-65535")
    query = {_ALIASES.get(name, name): value for name, value in parsed.query.items()}
    check_query_names(url, query, SQL_OPTIONS | DRIVER_PARAMETERS[dialect])
    from_query = {name: query.pop(name) for name in list(query) if name in SQL_OPTIONS}
    parsed = parsed.set(drivername=_DRIVER_NAMES[dialect], query=query)
    config = SQLConfig(url=parsed, dialect=dialect)
    values: dict[str, Any] = {}
    for name, raw in from_query.items():
        values[name] = _coerce(name, raw if isinstance(raw, str) else raw[-1])
    values.update(options or {})
    unknown = sorted(set(values) - SQL_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown SQL options: {', '.join(unknown)}")
    config = replace(config, **values)
    _validate(config)
    return config


def _coerce(name: str, raw: str) -> object:
    default = _DEFAULTS[name]
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if name == "replica_url":
            return raw
        if isinstance(default, int) or name == "partitions":
            return int(raw)
        return float(raw)
    except ValueError:
        raise ConfigurationError(f"SQL option {name}={raw!r} is not a valid value") from None


def _validate(config: SQLConfig) -> None:
    checks = {
        "pool_size": isinstance(config.pool_size, int) and config.pool_size >= 1,
        "max_overflow": isinstance(config.max_overflow, int) and config.max_overflow >= 0,
        "connect_timeout": _positive(config.connect_timeout),
        "statement_timeout": _positive(config.statement_timeout),
        "pool_recycle": isinstance(config.pool_recycle, int | float),
        "pool_pre_ping": isinstance(config.pool_pre_ping, bool),
        "echo": isinstance(config.echo, bool),
        "group_commit": isinstance(config.group_commit, bool),
        "replica_url": config.replica_url is None or isinstance(config.replica_url, str),
        "replica_wait": _positive(config.replica_wait),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise ConfigurationError(f"invalid SQL option value for: {', '.join(bad)}")
    if config.partitions is not None:
        if config.dialect != "postgresql":
            raise ConfigurationError("partitions is a PostgreSQL option")
        check_partitions(config.partitions)
    if config.replica_url is not None and config.dialect != "postgresql":
        raise ConfigurationError("replica_url is a PostgreSQL option")


def check_partitions(partitions: object) -> int:
    """``partitions`` if it is a valid partition count, else :class:`ConfigurationError`."""
    if (
        not isinstance(partitions, int)
        or isinstance(partitions, bool)
        or not 2 <= partitions <= MAX_PARTITIONS
    ):
        raise ConfigurationError(
            f"partitions must be a whole number from 2 to {MAX_PARTITIONS}, got {partitions!r}"
        )
    return partitions


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _identity(value: str) -> str:
    return value


class _DeferredConnect:
    """``asyncpg.connect(...)``, started only when awaited."""

    __slots__ = ("_args", "_kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._args, self._kwargs = args, kwargs

    def __await__(self) -> Generator[Any, None, Any]:
        connecting: Awaitable[Any] = asyncpg.connect(*self._args, **self._kwargs)
        return connecting.__await__()


def _deferred_connect(*args: Any, **kwargs: Any) -> _DeferredConnect:
    """SQLAlchemy's asyncpg dialect builds the connect coroutine before it knows whether
    it may await it. The backend's greenlet-free checkout (``HotPath._checkout_now``)
    backs off when a pooled connection needs reconnecting, and an unstarted
    ``asyncpg.connect`` coroutine would then warn "never awaited"; this one never starts."""
    return _DeferredConnect(args, kwargs)


def create_engine(config: SQLConfig) -> AsyncEngine:
    """The async engine for ``config``. Does no I/O.

    Pool connections are returned without a reset round trip: every hot statement runs in
    autocommit, and SQLAlchemy connections roll back their own transactions on close.
    PostgreSQL ``jsonb`` values travel as JSON text (no parse on the way out).

    PostgreSQL sessions run with ``plan_cache_mode = force_generic_plan``: kvstore's
    statements are prepared once per connection and keep one plan. Left to choose,
    PostgreSQL plans every execution of the feed's poll anew, and of every statement on a
    partitioned table (to prune partitions at plan time), where a generic plan prunes at
    run time; every plan checked stays an index scan (measured in docs/scale.md). And
    with ``jit = off``: a generic plan does not know a ``LIMIT``, so at ten million rows
    on a partitioned table an export page's estimate passed PostgreSQL's JIT thresholds
    and every page of 1,000 was compiled with LLVM (707 ms against 1.06 ms without;
    docs/scale.md). kvstore's statements are short; none gains from JIT.
    """
    common: dict[str, Any] = {
        "pool_size": config.pool_size,
        "max_overflow": config.max_overflow,
        "pool_pre_ping": config.pool_pre_ping,
        "pool_recycle": config.pool_recycle,
        "pool_timeout": config.connect_timeout + config.statement_timeout,
        "pool_reset_on_return": None,
        "echo": config.echo,
    }
    if config.dialect == "postgresql":
        millis = str(round(config.statement_timeout * 1000))
        return create_async_engine(
            config.url,
            json_deserializer=_identity,
            connect_args={
                "async_creator_fn": _deferred_connect,
                "timeout": config.connect_timeout,
                "command_timeout": config.statement_timeout,
                "server_settings": {
                    "statement_timeout": millis,
                    "plan_cache_mode": "force_generic_plan",
                    "jit": "off",
                },
            },
            **common,
        )
    engine = create_async_engine(
        config.url,
        connect_args={"timeout": config.statement_timeout, "isolation_level": None},
        **common,
    )
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    """synchronous=NORMAL: in WAL mode (set once per file by initialization) a commit does
    not wait for fsync; a power loss can lose the last commits, never corrupt the file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    """Open SQLAlchemy transactions ourselves (the driver is in autocommit): writers take
    the write lock up front, so the busy timeout applies instead of a failed lock upgrade."""
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
