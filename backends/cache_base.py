"""The contract of a cache tier: a versioned cache that only moves forward by revision.

The tiered store (:mod:`backends.tiered`) drives any :class:`VersionedCache`: the per-process
:class:`~backends.memory.MemoryCache` or Redis (:class:`~backends.redis.RedisBackend` in its
cache role). :func:`lands` is the one ordering rule every implementation keeps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from backends.base import Entry
    from kvstore.keys import Key


@dataclass(frozen=True, slots=True)
class Generation:
    """A cache generation: the cache's keys live under ``number``; ``floor`` is the newest
    revision committed when it began (writes of older revisions only invalidate in it)."""

    number: int
    floor: int


def lands(revision: int, tombstone: bool, held: int | None, held_tombstone: bool) -> bool:
    """The cache's one ordering rule (see :class:`VersionedCache`): whether a write of
    ``revision`` (an entry, or a ``tombstone``) replaces what a key holds (``held``: its
    revision, ``None`` if empty)."""
    if held is None:
        return True
    if tombstone or not held_tombstone:
        return revision > held
    return revision >= held


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """One key's answer from :meth:`VersionedCache.lookup`.

    ``entry`` is the cached entry on a hit. On a miss ``entry`` is ``None`` and ``lease``
    is a token if this caller won the right to fill the key (see :meth:`VersionedCache.fill`);
    ``None`` if another caller holds the lease, in which case the caller reads the system of
    record but does not fill.
    """

    entry: Entry | None
    lease: str | None = None


class VersionedCache(ABC):
    """Cache operations the tiered store needs: forward-only by :attr:`Entry.revision`, with
    leased fills (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013) and tombstones.

    The one ordering rule (:func:`lands`): an entry of revision ``r`` replaces nothing newer,
    i.e. it lands on an empty key, on a tombstone of revision ``<= r`` (a tombstone may mark
    "stale below ``r``" for the change ``r`` itself) or on an entry of revision ``< r``; a
    tombstone of revision ``r`` lands on an empty key or on anything of revision ``< r``.

    Every operation is atomic per key on the cache server. Tombstones and leases are never
    returned as hits. ``ttl`` is in seconds; ``None`` uses the cache's default.
    """

    system: str = "cache"
    """The cache's system as OpenTelemetry names it (``db.system.name``)."""
    lists_keys: bool = False
    """Implements :meth:`cached_keys` (lets ``verify`` find entries absent from SQL)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections this cache created; injected clients stay open. Idempotent."""

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        """Keys with a live entry in ``namespace`` (of ``owner`` if given). Only if
        :attr:`lists_keys`."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its keys")

    @abstractmethod
    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        """Read ``keys`` in one round trip. For each miss (absent, expired or a tombstone)
        take a lease (a fresh random token, expiring after ``lease_ttl``) unless one is held."""

    @abstractmethod
    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        """Fill after a miss, in one round trip: store each ``(key, entry, lease)`` only if
        ``lease`` is still the key's valid lease (then consume it) and the entry lands by the
        ordering rule. Return how many landed."""

    @abstractmethod
    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        """The writer's update after a committed save: revoke the key's lease and store
        ``entry`` if it lands by the ordering rule. Return whether it landed."""

    @abstractmethod
    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        """In one round trip, for each ``(key, revision)``: revoke the key's lease and put a
        tombstone of ``revision`` where it lands by the ordering rule. After a committed
        delete, and from the change feed ("every entry older than ``revision`` is stale")."""

    @abstractmethod
    async def invalidate(self, keys: Sequence[Key]) -> None:
        """Drop entries, tombstones and leases of ``keys`` (recovery after failed updates)."""

    @abstractmethod
    async def invalidate_owner(self, owner: str) -> None:
        """Drop every entry, tombstone and lease of ``owner``."""

    @abstractmethod
    async def ping(self) -> None:
        """Check the cache answers; raise :class:`BackendUnavailableError` if not."""

    # -- generations: a cache that rewinds is fenced off -------------------------------------
    #
    # Any operation above raises CacheLostError when the cache shows it lost what it held
    # (a new server incarnation, or the generation marker gone); the tiered store then
    # moves every process to a new generation, under which no older key is reachable.

    @abstractmethod
    async def incarnation(self) -> str:
        """An identity of the cache server's current life: new after a restart, a restore
        from a snapshot or a failover (Redis: ``run_id``)."""

    @abstractmethod
    def use_generation(self, incarnation: str, generation: int) -> None:
        """From now on keep keys under ``generation``, which belongs to ``incarnation``."""

    @property
    @abstractmethod
    def seen_incarnation(self) -> str | None:
        """The newest incarnation met (by a new connection), or ``None`` if not known."""

    @abstractmethod
    async def claim_generation(self) -> bool:
        """Put the current generation's marker; return whether it was there already."""
