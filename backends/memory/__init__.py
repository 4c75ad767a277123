"""The memory backend, in this process only: :mod:`.store` a dict store (a
:class:`~backends.base.Backend`, for tests and development) and :mod:`.cache` a bounded LRU
(a :class:`~backends.cache_base.VersionedCache`, the tiered store's ``memory://`` cache). The two
share nothing: each is a role of its own."""

from backends.memory.cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryCache
from backends.memory.store import MemoryBackend

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "MemoryBackend", "MemoryCache"]
