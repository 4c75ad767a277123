"""The ``Database`` interface: typed records over any backend, one async API."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Self, TypeVar

from kvstore.models import ContextRecord, IdentityRecord, Record, StateRecord, UserRecord

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import timedelta
    from types import TracebackType

    from backends.reports import Stats, VerifyReport, WarmReport
    from kvstore.collection import Collection
    from kvstore.keys import Fence
    from kvstore.locks import SessionLock

R = TypeVar("R", bound=Record)


class Database(ABC):
    """What the coach service (or any caller) talks to.

    Every ``save_*`` returns the record as stored (``version`` 1 on first save, +1 on each
    save; ``created_at``/``updated_at`` aware UTC, set by the store). ``expected_version=N``
    makes a save or delete conditional (0: must not exist) and raises ``ConflictError``
    otherwise. ``async with db:`` initializes on enter and closes on exit; the first
    operation initializes lazily, and both ``initialize()`` and ``close()`` are idempotent.
    """

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def initialize(self) -> None:
        """Connect and create what is missing (tables, scripts). Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; later operations raise ``DatabaseClosedError``. Idempotent."""

    @abstractmethod
    def collection(
        self, model: type[R], namespace: str, *, ttl: float | timedelta | None = None
    ) -> Collection[R]:
        """Typed operations for ``model`` records in ``namespace`` (a ``Record`` subclass
        whose ``KEY_FIELDS`` name its key, owner first). ``ttl``: default expiry, seconds
        or a ``timedelta``."""

    # -- operations ----------------------------------------------------------------------
    @abstractmethod
    def stats(self) -> Stats:
        """Counters of this process since the database was built, one part per tier:
        ``.tier`` the cache tier's hits, misses, bypasses, breaker and change feed (``None``
        without a cache), ``.sql`` the SQL store's saves and statements (``None`` without
        SQL). Synchronous; no I/O."""

    @abstractmethod
    async def warm_cache(
        self,
        namespace: str = "state",
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner``
        if given) into the cache tier, 500 keys per cache call, never over a newer entry
        (fills take leases, as misses do); ``progress`` is called with each chunk's size.
        Raises ``ConfigurationError`` without a cache tier, ``BackendUnavailableError`` if
        the cache does not answer."""

    @abstractmethod
    async def verify_cache(
        self,
        namespace: str = "state",
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Compare the cache tier with the system of record for the ``limit`` most recently
        updated records of ``namespace`` (of ``owner`` if given), 500 keys per cache call;
        with ``repair``, invalidate stale and extra entries. Raises ``ConfigurationError``
        without a cache tier, ``BackendUnavailableError`` if the cache does not answer a
        call (a report never covers part of the keys)."""

    @abstractmethod
    def lock(
        self, user_id: str, session_id: str, *, ttl: float = 30.0, timeout: float = 10.0
    ) -> SessionLock:
        """The lock of one session, for ``async with``: waits its turn (first come, first
        served, across processes) for at most ``timeout`` seconds (then
        ``LockTimeoutError``), holds it at most ``ttl`` seconds (a lease, not renewed) and
        yields a ``Fence`` to pass to the session's saves and deletes: once the lease ran
        out and another holder was granted the lock, they raise ``FencedError``. Released
        on exit, also when the body raises or is cancelled."""

    # -- state -------------------------------------------------------------------------
    @abstractmethod
    async def get_state(self, user_id: str, session_id: str) -> StateRecord | None:
        """The session's state machine record, or ``None``."""

    @abstractmethod
    async def save_state(
        self,
        record: StateRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> StateRecord:
        """Store the session's state; returns it as stored. ``fence`` (from :meth:`lock`):
        refused with ``FencedError`` once a newer lock of the session was granted."""

    @abstractmethod
    async def delete_state(
        self,
        user_id: str,
        session_id: str,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> bool:
        """Delete the session's state; ``True`` if there was one."""

    @abstractmethod
    async def list_sessions(self, user_id: str) -> list[StateRecord]:
        """The state records of every session of ``user_id``, ordered by session id."""

    # -- context -----------------------------------------------------------------------
    @abstractmethod
    async def get_context(self, user_id: str, session_id: str) -> ContextRecord | None:
        """The session's conversation context, or ``None``."""

    @abstractmethod
    async def save_context(
        self,
        record: ContextRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> ContextRecord:
        """Store the session's context; returns it as stored."""

    @abstractmethod
    async def delete_context(
        self,
        user_id: str,
        session_id: str,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> bool:
        """Delete the session's context; ``True`` if there was one."""

    # -- identities --------------------------------------------------------------------
    @abstractmethod
    async def get_identity(self, user_id: str, identity_id: str) -> IdentityRecord | None:
        """One identity of the user, or ``None``."""

    @abstractmethod
    async def get_identities(self, user_id: str) -> list[IdentityRecord]:
        """Every identity of ``user_id``, ordered by identity id."""

    @abstractmethod
    async def save_identity(
        self, record: IdentityRecord, *, expected_version: int | None = None
    ) -> IdentityRecord:
        """Store an identity; returns it as stored."""

    @abstractmethod
    async def delete_identity(
        self, user_id: str, identity_id: str, *, expected_version: int | None = None
    ) -> bool:
        """Delete one identity; ``True`` if there was one."""

    # -- users -------------------------------------------------------------------------
    @abstractmethod
    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user's own record, or ``None``."""

    @abstractmethod
    async def save_user(
        self, record: UserRecord, *, expected_version: int | None = None
    ) -> UserRecord:
        """Store the user's record; returns it as stored."""

    @abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Erase every record of ``user_id`` in every namespace and tier (the user record,
        states, contexts, identities and the user's records in custom collections).
        Returns how many records were erased."""
