"""The primitive contract every backend implements: bytes, keys, versions and expiry.

Backends never see record types; the record layer (:mod:`kvstore.store`) serializes above
them. Every method below is a coroutine and documents its edge cases; a backend that cannot
reach its server raises :class:`~kvstore.errors.BackendUnavailableError` (driver exception
chained), never a raw driver exception.

Versions: the first ``put`` of a key stores version 1; every further ``put`` adds one. An
expired entry counts as absent everywhere: it is never returned, and a ``put`` over it
starts again at version 1. ``expected_version=N`` makes a ``put`` or ``delete`` conditional
on the stored version being ``N`` (0: "must not exist") and raises
:class:`~kvstore.errors.ConflictError` otherwise, changing nothing.

Optional abilities are :class:`Capabilities` flags, never ``isinstance`` checks. A backend
that can be the cache tier of the tiered store also implements :class:`VersionedCache`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

from kvstore.errors import ConflictError, InvalidKeyError, InvalidRecordError
from kvstore.keys import DEFAULT_PAGE_SIZE, Key, check_component, check_namespace


def utcnow() -> datetime:
    """The store's clock: an aware UTC datetime."""
    return datetime.now(UTC)


def version_conflict(expected: int, actual: int) -> ConflictError:
    """The error of a conditional write or delete that found version ``actual``."""
    return ConflictError(
        f"expected version {expected}, found {actual}", expected=expected, actual=actual
    )


def check_listing(
    namespace: str, prefix: tuple[str, ...], after: tuple[str, ...] | None, limit: int
) -> None:
    """Validate :meth:`Backend.list` arguments, the same way in every backend."""
    if limit <= 0:
        raise InvalidRecordError("limit must be positive")
    check_namespace(namespace)
    if not prefix:
        raise InvalidKeyError("a listing needs at least the owner")
    for component in (*prefix, *(after or ())):
        check_component(component)


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored value and the metadata the backend keeps beside it."""

    value: bytes
    version: int
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None

    @property
    def stamp(self) -> tuple[datetime, int]:
        """Total order of a key's entries over time, across deletes and re-creations:
        a re-created record restarts at version 1 but has a later ``created_at``."""
        return (self.created_at, self.version)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do beyond the required contract."""

    persistent: bool
    """Data survives a restart of the process (and of the server)."""
    shared: bool
    """Other processes see the same data."""
    versioned_cache: bool = False
    """Implements :class:`VersionedCache`, so it can be the tiered store's cache tier."""
    bulk: bool = False
    """Implements :meth:`Backend.scan` and :meth:`Backend.restore` (export, import, migrate)."""


class Backend(ABC):
    """Primitive async key-value operations over bytes with versions and expiry."""

    capabilities: ClassVar[Capabilities]

    async def initialize(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Connect and prepare (create tables, load scripts). Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections this backend created; injected clients stay open.
        Idempotent."""

    @abstractmethod
    async def get(self, key: Key) -> Entry | None:
        """The live entry of ``key``, or ``None`` if absent or expired."""

    @abstractmethod
    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        """Entries for ``keys`` in the same order, ``None`` where absent or expired.
        Duplicates are allowed; an empty sequence returns ``[]`` without I/O."""

    @abstractmethod
    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        """Store ``value`` under ``key`` and return the stored entry.

        The version becomes the previous live version plus one (1 for a new or expired key);
        ``created_at`` is kept from the live entry, ``updated_at`` is now. ``ttl`` (seconds,
        > 0) sets ``expires_at``; ``None`` means the entry never expires (a put without ttl
        clears an earlier expiry). With ``expected_version`` the write happens only if the
        live version equals it, atomically, else :class:`ConflictError`.
        """

    @abstractmethod
    async def delete(self, key: Key, *, expected_version: int | None = None) -> bool:
        """Remove ``key``; return whether a live entry was removed (absent: a no-op, False).

        With ``expected_version`` the delete happens only if the live version equals it
        (0: succeeds only when absent, removing nothing), else :class:`ConflictError`.
        """

    @abstractmethod
    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        """Live entries of ``namespace`` whose components start with ``prefix`` (at least
        the owner), in ascending component order, at most ``limit`` (> 0) of them.

        ``after`` is the components of the last key of the previous page (keyset
        pagination); only keys ordered after it are returned. A prefix matches whole
        components only: ``("u1",)`` never lists ``("u10", ...)``.
        """

    @abstractmethod
    async def delete_owner(self, owner: str) -> int:
        """Remove every entry of ``owner`` in every namespace; return how many were live."""

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """Every live entry, optionally of one namespace and/or owner, in key order, fetched
        ``batch_size`` at a time so memory stays flat. Only if ``capabilities.bulk``."""
        raise NotImplementedError(f"{type(self).__name__} cannot scan")

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """Write entries exactly as given (version, timestamps, expiry) where the key is
        absent or holds an older version; return how many were written. Idempotent: restoring
        the same entries again writes nothing. Only if ``capabilities.bulk``."""
        raise NotImplementedError(f"{type(self).__name__} cannot restore")


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
    """Cache operations the tiered store needs: forward-only by :attr:`Entry.stamp`, with
    leased fills (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013) and tombstones.

    Every operation is atomic per key on the cache server. Tombstones and leases are never
    returned as hits. ``ttl`` is in seconds; ``None`` uses the cache's default.
    """

    @abstractmethod
    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        """Read ``keys`` in one round trip. For each miss (absent, expired or a tombstone)
        take a lease (a fresh random token, expiring after ``lease_ttl``) unless one is held."""

    @abstractmethod
    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        """Fill after a miss, in one round trip: store each ``(key, entry, lease)`` only if
        ``lease`` is still the key's valid lease (then consume it) and ``entry`` is newer by
        stamp than whatever the key holds (entry or tombstone). Return how many landed."""

    @abstractmethod
    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        """The writer's update after a committed save: revoke the key's lease and store
        ``entry`` if newer by stamp than what the key holds. Return whether it landed."""

    @abstractmethod
    async def tombstone(
        self, key: Key, stamp: tuple[datetime, int], *, ttl: float | None = None
    ) -> None:
        """The writer's update after a committed delete: revoke the lease and replace what
        the key holds with a tombstone carrying ``stamp``, unless it holds something newer."""

    @abstractmethod
    async def invalidate(self, keys: Sequence[Key]) -> None:
        """Drop entries, tombstones and leases of ``keys`` (recovery after failed updates)."""

    @abstractmethod
    async def invalidate_owner(self, owner: str) -> None:
        """Drop every entry, tombstone and lease of ``owner``."""

    @abstractmethod
    async def ping(self) -> None:
        """Check the cache answers; raise :class:`BackendUnavailableError` if not."""
