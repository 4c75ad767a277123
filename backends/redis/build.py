"""The Redis backend put together: :class:`RedisBackend` is both roles over one client, and
:func:`build_redis_backend` makes one from ``create_database`` options (no I/O).

``DatabaseType.REDIS`` uses it as a store; the tiered store uses it as its cache. Either
way, the store (:mod:`.store`) and the cache (:mod:`.cache`) share one
:class:`~backends.redis.client.RedisClient`: one pool, one deadline per call, one key layout
and one incarnation check.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from backends.base import Capabilities
from backends.redis.cache import RedisCache
from backends.redis.client import RedisClient
from backends.redis.connect import ConnectionSettings, check_url
from backends.redis.format import DEFAULT_KEY_PREFIX
from backends.redis.store import RedisStore
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from kvstore.clock import Clock
    from kvstore.options import RedisOptions

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
"""Where ``DatabaseType.REDIS`` connects without a URL or ``$KVSTORE_REDIS_URL``."""

_CONNECTION_OPTIONS: Final = frozenset(
    {"max_connections", "socket_connect_timeout", "health_check_interval", "pool_wait_timeout"}
)
"""Options that shape connections the backend makes itself."""


class RedisBackend(RedisStore, RedisCache):
    """A Redis store that can also be the tiered store's cache: both roles, one client."""

    capabilities = Capabilities(persistent=True, shared=True, versioned_cache=True, bulk=True)

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        settings: ConnectionSettings | None = None,
        autopipeline: bool = True,
        cache_ttl: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        redis = RedisClient(
            url,
            client=client,
            key_prefix=key_prefix,
            settings=settings,
            autopipeline=autopipeline,
            clock=clock,
        )
        RedisStore.__init__(self, redis)
        RedisCache.__init__(self, redis, cache_ttl=cache_ttl)

    def __repr__(self) -> str:
        return f"RedisBackend({self.description})"


def build_redis_backend(
    url: str | None,
    options: RedisOptions,
    *,
    cache_ttl: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RedisBackend:
    """A Redis backend for ``url`` (default ``$KVSTORE_REDIS_URL``, then
    ``redis://localhost:6379/0``) or for the injected ``redis_client`` option, which is used
    as is and never closed. ``cache_ttl`` is its default TTL as a cache tier. No I/O."""
    client = options.get("redis_client")
    prefix = options.get("key_prefix", DEFAULT_KEY_PREFIX)
    autopipeline = options.get("autopipeline", True)
    settings = ConnectionSettings.from_options(options)
    if client is None:
        url = check_url(url or os.environ.get("KVSTORE_REDIS_URL") or DEFAULT_REDIS_URL)
    elif url is not None:
        raise ConfigurationError("give either a connection string or redis_client, not both")
    elif unused := sorted(set(options) & _CONNECTION_OPTIONS):
        raise ConfigurationError(f"an injected redis_client does not take: {', '.join(unused)}")
    return RedisBackend(
        url,
        client=client,
        key_prefix=prefix,
        settings=settings,
        autopipeline=autopipeline,
        cache_ttl=cache_ttl,
        clock=clock,
    )
