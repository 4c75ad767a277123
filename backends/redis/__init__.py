"""The Redis backend (``redis.asyncio``): a store of its own, and the tiered store's cache."""

from backends.redis.backend import MAX_LEASE_TTL, RedisBackend, build_redis_backend
from backends.redis.connect import SCHEMES

__all__ = ["MAX_LEASE_TTL", "SCHEMES", "RedisBackend", "build_redis_backend"]
