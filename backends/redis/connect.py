"""Build a ``redis.asyncio`` client from a URL and :class:`~kvstore.options.RedisOptions`.

Schemes: ``redis://`` and ``rediss://`` (TLS) ``[user:password@]host:port/db``,
``unix:///path/to/socket?db=N``, ``redis+sentinel://[user:password@]host:port[,host:port]
/service/db`` and ``redis+cluster://[user:password@]host:port`` (``rediss+sentinel``,
``rediss+cluster`` for TLS). Standalone clients draw from a :class:`BlockingConnectionPool`
(callers wait for a free connection rather than failing).

The clients are built with ``socket_timeout=None`` and no retries of their own:
:mod:`.client` puts one deadline (``socket_timeout``) around each whole operation, which
costs far less per call than redis-py's per-read timeout, and retries only idempotent
operations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, unquote

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.observability import get_observability_instance

from kvstore.errors import ConfigurationError
from kvstore.urls import check_query_names, mask_url, split_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import AbstractConnection

    from kvstore.options import RedisOptions

SCHEMES: Final = frozenset(
    {
        "redis",
        "rediss",
        "unix",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
    }
)


@dataclass(frozen=True)
class ConnectionSettings:
    """The connection options with their defaults (see ``docs/redis.md``)."""

    max_connections: int = 64
    socket_timeout: float = 1.0
    socket_connect_timeout: float = 1.0
    health_check_interval: float = 30.0
    pool_wait_timeout: float = 1.0
    max_retries: int = 3

    @classmethod
    def from_options(cls, options: RedisOptions) -> ConnectionSettings:
        """Settings from the options given, defaults for the rest; checks ranges."""
        settings = cls(
            max_connections=options.get("max_connections", cls.max_connections),
            socket_timeout=options.get("socket_timeout", cls.socket_timeout),
            socket_connect_timeout=options.get(
                "socket_connect_timeout", cls.socket_connect_timeout
            ),
            health_check_interval=options.get("health_check_interval", cls.health_check_interval),
            pool_wait_timeout=options.get("pool_wait_timeout", cls.pool_wait_timeout),
            max_retries=options.get("max_retries", cls.max_retries),
        )
        for name in ("socket_timeout", "socket_connect_timeout", "pool_wait_timeout"):
            value = getattr(settings, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"{name} must be positive seconds")
        if settings.health_check_interval < 0:
            raise ConfigurationError("health_check_interval must be >= 0 seconds")
        if settings.max_connections < 1 or settings.max_retries < 0:
            raise ConfigurationError("max_connections must be >= 1 and max_retries >= 0")
        return settings


class WaitingPool(BlockingConnectionPool):
    """redis-py's :class:`BlockingConnectionPool` (callers wait for a free connection, up to
    ``pool_wait_timeout``) with a fast path: while a connection is idle and nobody waits,
    take and return it without the pool's condition variable, timeout and event dispatch,
    which cost about a fifth of a GET here. Everything else goes the regular way, and so
    does everything while redis-py's own metrics are on (its pool counts and wait times are
    recorded only on the regular way)."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if (
            self._available_connections
            and not self._in_maintenance
            and not get_observability_instance().is_enabled()
        ):
            connection = self._available_connections.pop()
            self._in_use_connections.add(connection)
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        return await super().get_connection()  # type: ignore[no-untyped-call]

    async def release(self, connection: Any) -> None:
        if (
            self._condition._waiters
            or self._in_maintenance
            or connection.should_reconnect()
            or self.connection_kwargs.get("credential_provider") is not None
            or get_observability_instance().is_enabled()
        ):
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


QUERY_PARAMETERS: Final = frozenset(URL_QUERY_ARGUMENT_PARSERS) | {
    "client_name",
    "username",
    "password",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
}
"""URL query parameters redis-py's connections take (its own parsed ones, and the
connection and TLS keywords it passes through); Sentinel URLs take ``sentinel_password``."""


def check_url(url: str) -> str:
    """Validate the scheme, host and query parameters of ``url``; return it unchanged."""
    scheme = url.partition("://")[0] if isinstance(url, str) else ""
    if scheme.endswith("+sentinel"):
        parse_sentinel_url(url)
        _check_query(url, frozenset({"sentinel_password"}))
        return url
    parts = split_url(url)
    if parts.scheme not in SCHEMES:
        choices = ", ".join(sorted(SCHEMES))
        raise ConfigurationError(f"unsupported Redis URL scheme in {mask_url(url)}; use {choices}")
    if not parts.scheme.startswith("unix") and not parts.hostname:
        raise ConfigurationError(f"Redis URL {mask_url(url)} names no host")
    _check_query(url, QUERY_PARAMETERS)
    return url


def _check_query(url: str, accepted: frozenset[str]) -> None:
    names = (name for name, _ in parse_qsl(url.partition("?")[2], keep_blank_values=True))
    check_query_names(url, names, accepted)


Closer = Callable[[], Awaitable[None]]


def connect(
    url: str,
    settings: ConnectionSettings,
    *,
    on_connect: Callable[[AbstractConnection], Awaitable[None]] | None = None,
) -> tuple[Redis | RedisCluster, list[Closer]]:
    """A client for ``url`` and what else to close with it (Sentinel clients); no I/O
    happens until its first command. ``on_connect`` replaces redis-py's handshake of every
    new connection (redis-py's public ``redis_connect_func``; it must call
    ``connection.on_connect()``), on every node of a Cluster too."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    scheme = check_url(url).partition("://")[0]
    common: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": settings.health_check_interval,
        "retry": Retry(NoBackoff(), 0),
    }
    if scheme.endswith("+cluster"):
        cluster = _cluster(url, settings, common)
        if on_connect is not None:
            install_cluster_connect_hook(cluster, on_connect)
        return cluster, []
    if on_connect is not None:
        common["redis_connect_func"] = on_connect
    if scheme.endswith("+sentinel"):
        return _sentinel(url, settings, common)
    try:
        pool = WaitingPool.from_url(
            url,
            max_connections=settings.max_connections,
            timeout=settings.pool_wait_timeout,
            **common,
        )
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis URL {mask_url(url)}: {exc}") from None
    return Redis(connection_pool=pool), []


def _cluster(url: str, settings: ConnectionSettings, common: dict[str, Any]) -> RedisCluster:
    from redis.asyncio.cluster import RedisCluster

    plain = url.replace("+cluster", "", 1)
    try:
        return RedisCluster.from_url(plain, max_connections=settings.max_connections, **common)
    except ValueError as exc:
        raise ConfigurationError(f"bad Redis Cluster URL {mask_url(url)}: {exc}") from None


def install_cluster_connect_hook(
    client: RedisCluster, on_connect: Callable[[AbstractConnection], Awaitable[None]]
) -> None:
    """Make ``on_connect`` the handshake of every new connection to every node of
    ``client``. redis-py's asyncio Cluster client takes no ``redis_connect_func``; the
    keywords of new node connections live in ``nodes_manager.connection_kwargs`` (and each
    known node's copy), where redis-py itself adds per-connection settings. Not a documented
    API: ``tests/test_driver_internals.py`` fails loudly if it changes, and redis-py's upper
    bound is pinned."""
    manager = client.nodes_manager
    manager.connection_kwargs["redis_connect_func"] = on_connect
    for node in [*manager.startup_nodes.values(), *manager.nodes_cache.values()]:
        node.connection_kwargs["redis_connect_func"] = on_connect


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    ssl: bool


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[user:password@]host:port[,host:port]/service[/db]
    [?sentinel_password=...]``; raises :class:`ConfigurationError` (password masked)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    userinfo, _, hostlist = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    service, _, db = path.partition("/")
    if not service or not hostlist or (db and not db.isdigit()):
        raise ConfigurationError(
            f"Sentinel URL {mask_url(url)} must look like "
            "redis+sentinel://host:26379[,host:port]/service[/db]"
        )
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        if not host or not port.isdigit():
            raise ConfigurationError(f"bad Sentinel address in {mask_url(url)}")
        hosts.append((host.strip("[]"), int(port)))
    return SentinelTarget(
        hosts=hosts,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=dict(parse_qsl(query)).get("sentinel_password"),
        ssl=scheme.startswith("rediss"),
    )


def _sentinel(
    url: str, settings: ConnectionSettings, common: dict[str, Any]
) -> tuple[Redis, list[Closer]]:
    from redis.asyncio.sentinel import Sentinel

    target = parse_sentinel_url(url)
    sentinel = Sentinel(
        target.hosts,
        sentinel_kwargs={
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            "password": target.sentinel_password,
        },
        ssl=target.ssl,
        **common,
    )
    client: Redis = sentinel.master_for(
        target.service,
        db=target.db,
        max_connections=settings.max_connections,
        username=target.username,
        password=target.password,
    )
    return client, [server.aclose for server in sentinel.sentinels]
