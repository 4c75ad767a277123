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

Revisions: every ``put`` and every ``delete`` that removes a live entry gets a revision, a
positive integer drawn from one counter that only grows: a later change (of any key on SQL
and memory; of the same owner on Redis) has a larger revision. The SQL database assigns it
itself, in the statement that writes, so plain-SQL writes by batch jobs get one too. No
wall clock orders anything.

Optional abilities are :class:`Capabilities` flags, never ``isinstance`` checks. A backend
that can be the cache tier of the tiered store also implements
:class:`~backends.cache_base.VersionedCache`.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Sequence

    from backends.reports import VerifyReport, WarmReport
    from kvstore.clock import Clock

from backends.reports import Stats
from kvstore.errors import ConflictError, FencedError, InvalidKeyError, InvalidRecordError
from kvstore.keys import DEFAULT_PAGE_SIZE, Fence, Key, check_component, check_namespace


def utcnow() -> datetime:
    """The store's clock: an aware UTC datetime."""
    return datetime.now(UTC)


def version_conflict(expected: int, actual: int) -> ConflictError:
    """The error of a conditional write or delete that found version ``actual``."""
    return ConflictError(
        f"expected version {expected}, found {actual}", expected=expected, actual=actual
    )


def fenced(fence: Fence, newest: int) -> FencedError:
    """The error of a write under ``fence`` after a lock with token ``newest`` was granted."""
    return FencedError(
        f"the session lock was taken over (fence {fence.token}, newest {newest})",
        expected=fence.token,
        actual=newest,
    )


def check_fence(key: Key, fence: Fence | None) -> None:
    """Refuse a fence of another user than ``key``'s owner, before any I/O."""
    if fence is not None and fence.owner != key.owner:
        raise InvalidRecordError("the fence belongs to another user's session")


def check_lock(owner: str, name: str, *seconds: float) -> None:
    """Validate a session lock's address and its durations, the same way in every backend."""
    check_component(owner, "owner")
    check_component(name, "lock name")
    for value in seconds:
        if not value > 0 or value == float("inf"):
            raise InvalidRecordError("lock durations must be positive, finite seconds")


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
    revision: int = 0
    """Where this change stands in the store's one order of changes (see :class:`Backend`);
    the tiered cache orders entries, fills and tombstones by it alone."""
    memo: dict[type, object] | None = field(default=None, init=False, compare=False, repr=False)
    """Where the record layer keeps what it derived from ``value`` once, for every later
    reader of this same object; ``None`` until :func:`with_memo` or :func:`give_memo` gave
    it one (to be read again and again). ``dataclasses.replace`` never carries it to
    another value."""


def with_memo(entry: Entry) -> Entry:
    """A copy of ``entry`` for a holder that serves it to many reads (the near cache): it
    carries an empty :attr:`Entry.memo`."""
    return give_memo(replace(entry))


def give_memo(entry: Entry) -> Entry:
    """``entry`` itself, with an empty :attr:`Entry.memo` if it had none (an entry read
    again: every later reader of this object shares what is derived from it)."""
    if entry.memo is None:
        object.__setattr__(entry, "memo", {})  # the frozen dataclass's own way to set a field
    return entry


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change, from the change feed: ``key`` was saved (or ``deleted``) with
    ``revision``."""

    key: Key
    revision: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a read of the change feed could see (PostgreSQL: ``pg_current_snapshot()``).

    Every transaction with an id below ``xmin`` had ended; ``xmax`` is the first id not yet
    assigned. A revision is drawn only by a transaction that already has an id, so once a
    later read has ``xmin >= xmax`` of this one, every revision drawn before this read is
    either visible or never will be."""

    xmin: int
    xmax: int


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
    cache: bool = False
    """Has a cache tier in front of its system of record: implements :meth:`Backend.warm`
    and :meth:`Backend.verify`."""
    feed: bool = False
    """Implements the change feed and cache generations (:meth:`Backend.read_changes`,
    :meth:`Backend.head`, :meth:`Backend.read_generation`): the tiered store follows it to
    repair its cache, across processes."""


class Backend(ABC):
    """Primitive async key-value operations over bytes with versions and expiry."""

    kind: ClassVar[str]
    """What it is, for people and counters: ``"memory"``, ``"sql"``, ``"redis"``, ..."""
    capabilities: Capabilities
    """What it can do beyond the contract: a class attribute, or set per instance by a
    backend built on others (the tiered store takes its system of record's)."""
    system: str
    """The database system as OpenTelemetry names it (``db.system.name``): ``postgresql``,
    ``sqlite``, ``redis``, ``memory``, ``tiered``."""
    clock: Clock
    """The clock the backend reads (wall time for versions' timestamps and expiry,
    monotonic time for deadlines); tests inject a manual or skewed one."""

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
        fence: Fence | None = None,
    ) -> Entry:
        """Store ``value`` under ``key`` and return the stored entry.

        The version becomes the previous live version plus one (1 for a new or expired key);
        ``created_at`` is kept from the live entry, ``updated_at`` is now. ``ttl`` (seconds,
        > 0) sets ``expires_at``; ``None`` means the entry never expires (a put without ttl
        clears an earlier expiry). With ``expected_version`` the write happens only if the
        live version equals it, atomically, else :class:`ConflictError`. With ``fence`` (of
        ``key.owner``), only if no lock of the fence's session with a larger token has been
        granted, checked atomically with the write, else :class:`FencedError`.
        """

    @abstractmethod
    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        """Remove ``key``; return the revision of the deletion if a live entry was removed,
        else 0 (absent: a no-op).

        With ``expected_version`` the delete happens only if the live version equals it
        (0: succeeds only when absent, removing nothing), else :class:`ConflictError`;
        ``fence`` as for :meth:`put`.
        """

    # -- session locks: a queue of tickets per lock, fencing tokens checked by writes ------

    @abstractmethod
    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        """Join the queue of lock ``name`` of ``owner``: a new ticket, larger than every
        ticket taken before, that stays queued ``hold`` seconds unless renewed by
        :meth:`lock_turn`. Expiry is measured on the store's clock (the server's, where
        there is one), never on the callers'."""

    @abstractmethod
    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        """Renew ``ticket``; if it is the oldest live ticket of the lock, grant it: the
        lock's fencing token becomes ``ticket`` (it only grows) and the ticket lives
        ``lease`` seconds more. ``True`` if granted, ``False`` if still waiting (renewed for
        ``hold`` seconds), ``None`` if the ticket has expired or was passed over by a larger
        one (it never comes back: the caller joins again)."""

    @abstractmethod
    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        """Leave the queue or give the lock up; a no-op for a ticket already gone."""

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

    def stats(self) -> Stats:
        """Counters since the backend was built, one part per tier (none by default)."""
        return Stats(backend=self.kind)

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> builtins.list[tuple[Key, Entry]]:
        """Live entries of ``namespace`` (of ``owner`` if given), newest ``updated_at``
        first, at most ``limit`` (> 0). By default one :meth:`scan` keeping the newest; a
        backend with an index by recency answers it with one query. Only if
        ``capabilities.bulk``."""
        if limit <= 0:
            raise InvalidRecordError("limit must be positive")
        newest: builtins.list[tuple[datetime, int, Key, Entry]] = []
        tiebreak = itertools.count()
        async for key, entry in self.scan(namespace=namespace, owner=owner):
            item = (entry.updated_at, next(tiebreak), key, entry)
            if len(newest) < limit:
                heapq.heappush(newest, item)
            elif item[0] > newest[0][0]:
                heapq.heapreplace(newest, item)
        return [(key, entry) for _, _, key, entry in sorted(newest, reverse=True)]

    async def warm(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner``
        if given) from the system of record into the cache, never over a newer entry;
        ``progress`` is called with each chunk's size. Only if ``capabilities.cache``."""
        raise NotImplementedError(f"{type(self).__name__} has no cache tier")

    async def verify(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Compare the cache with the system of record for at most ``limit`` records of
        ``namespace`` (of ``owner`` if given); with ``repair``, invalidate what differs.
        Only if ``capabilities.cache``."""
        raise NotImplementedError(f"{type(self).__name__} has no cache tier")

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

    async def read_changes(
        self, after: int, limit: int
    ) -> tuple[builtins.list[Change], Snapshot | None]:
        """Committed changes with a revision above ``after``, in revision order, at most
        ``limit``; and the snapshot they were read in (``None`` where changes commit in
        revision order, as on SQLite). Only if ``capabilities.feed``."""
        raise NotImplementedError(f"{type(self).__name__} has no change feed")

    async def head(self) -> tuple[int, Snapshot | None]:
        """The newest committed revision and the snapshot it was read in. Only if
        ``capabilities.feed``."""
        raise NotImplementedError(f"{type(self).__name__} has no change feed")

    async def read_generation(self, cache: str) -> tuple[int, str] | None:
        """The generation on record for cache ``cache`` and the cache incarnation it
        belongs to, or ``None``. Only if ``capabilities.feed``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no cache generations")

    async def advance_generation(
        self, cache: str, incarnation: str, *, current: int | None, to: int
    ) -> bool:
        """Compare-and-set: record generation ``to`` of ``incarnation`` for cache ``cache``
        if the one on record is still ``current`` (``None``: none on record); return
        whether it was set. Only if ``capabilities.feed``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no cache generations")
