"""The Redis backend on ``redis.asyncio``: a store of its own, and the tiered store's cache.

Split by role: :mod:`.store` the :class:`~backends.base.Backend` (get, put, delete, list,
scan, restore, erase), :mod:`.cache` the :class:`~backends.cache_base.VersionedCache` (leased
lookups, fills, writes, tombstones, generations), both over one :mod:`.client` (the
redis-py client, one deadline per call, retries, driver errors, the incarnation check).
:mod:`.build` puts them together as :class:`RedisBackend`. Beneath them: :mod:`.connect`
(clients from URLs), :mod:`.format` (key names, packed values), :mod:`.lua` (the scripts),
:mod:`.pipe` (autopipelining).
"""

from backends.redis.build import RedisBackend, build_redis_backend
from backends.redis.cache import RedisCache
from backends.redis.client import MAX_LEASE_TTL, RedisClient
from backends.redis.connect import SCHEMES
from backends.redis.store import RedisStore

__all__ = [
    "MAX_LEASE_TTL",
    "SCHEMES",
    "RedisBackend",
    "RedisCache",
    "RedisClient",
    "RedisStore",
    "build_redis_backend",
]
