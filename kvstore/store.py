"""``Store``: the one implementation of :class:`Database`, over any backend."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

from kvstore.collection import Collection, R
from kvstore.errors import ConfigurationError, DatabaseClosedError, InvalidKeyError
from kvstore.interface import Database
from kvstore.keys import check_component
from kvstore.locks import LockWakeups, SessionLock
from kvstore.models import ContextRecord, IdentityRecord, StateRecord, UserRecord
from kvstore.recent import RecentReads

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import timedelta

    from backends.base import Backend
    from backends.reports import Stats, VerifyReport, WarmReport
    from kvstore.keys import Fence
    from serializers import Serializer

STATE: Final = "state"
CONTEXT: Final = "context"
IDENTITY: Final = "identity"
USER: Final = "user"
RESERVED_NAMESPACES: Final = frozenset({STATE, CONTEXT, IDENTITY, USER})

DEFAULT_MAX_VALUE_BYTES: Final = 1024 * 1024


class Store(Database):
    """Typed records serialized into a :class:`~backends.base.Backend`.

    ``ttls`` gives default expiry in seconds per built-in namespace (``"state"``,
    ``"context"``, ``"identity"``, ``"user"``); ``max_value_bytes`` caps one serialized
    record (1 MiB by default); ``recent`` holds the records read lately (by default 1,024 of
    them, up to 4 MiB of stored values).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        serializer: Serializer | None = None,
        ttls: Mapping[str, float | timedelta] | None = None,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        description: str | None = None,
        recent: RecentReads | None = None,
    ) -> None:
        self.backend = backend
        if serializer is None:
            # imported here: serializers import kvstore.errors, which imports this package
            from serializers.json import JSONSerializer

            serializer = JSONSerializer()
        self.serializer: Serializer = serializer
        self.max_value_bytes = max_value_bytes
        self._description = description or type(backend).__name__
        self._initialized = False
        self._closed = False
        self._init_lock = asyncio.Lock()
        self._lock_wakeups = LockWakeups()
        self.recent = RecentReads() if recent is None else recent
        """The records read lately, kept validated (:mod:`kvstore.recent`)."""
        ttls = dict(ttls or {})
        self.states = Collection(self, StateRecord, STATE, ttl=ttls.pop(STATE, None))
        self.contexts = Collection(self, ContextRecord, CONTEXT, ttl=ttls.pop(CONTEXT, None))
        self.identities = Collection(self, IdentityRecord, IDENTITY, ttl=ttls.pop(IDENTITY, None))
        self.users = Collection(self, UserRecord, USER, ttl=ttls.pop(USER, None))
        if ttls:
            raise InvalidKeyError(f"ttls names unknown namespaces: {sorted(ttls)}")
        self.built_in: Mapping[str, Collection[Any]] = {
            STATE: self.states,
            CONTEXT: self.contexts,
            IDENTITY: self.identities,
            USER: self.users,
        }
        """The built-in collections by namespace."""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._initialized else "new"
        return f"<Database {self._description} {state}>"

    @property
    def description(self) -> str:
        """What the store is, for people: kind and URLs (passwords masked)."""
        return self._description

    async def initialize(self) -> None:
        if self._closed:
            raise DatabaseClosedError("the database is closed")
        if self._initialized:
            return
        async with self._init_lock:
            if not self._initialized:
                await self.backend.initialize()
                self._initialized = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.backend.close()

    async def backend_ready(self) -> Backend:
        """The backend, initialized; raises ``DatabaseClosedError`` once closed."""
        if not self._initialized or self._closed:
            await self.initialize()
        return self.backend

    def stats(self) -> Stats:
        return self.backend.stats()

    def lock(
        self, user_id: str, session_id: str, *, ttl: float = 30.0, timeout: float = 10.0
    ) -> SessionLock:
        return SessionLock(
            self.backend_ready,
            user_id,
            session_id,
            ttl=ttl,
            timeout=timeout,
            clock=self.backend.clock,
            wakeups=self._lock_wakeups,
        )

    async def warm_cache(
        self,
        namespace: str = "state",
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        backend = await self._cached_backend()
        return await backend.warm(namespace, owner=owner, limit=limit, progress=progress)

    async def verify_cache(
        self,
        namespace: str = "state",
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        backend = await self._cached_backend()
        return await backend.verify(
            namespace, owner=owner, repair=repair, limit=limit, progress=progress
        )

    async def _cached_backend(self) -> Backend:
        if not self.backend.capabilities.cache:
            raise ConfigurationError(f"{self._description} has no cache tier")
        return await self.backend_ready()

    def collection(
        self, model: type[R], namespace: str, *, ttl: float | timedelta | None = None
    ) -> Collection[R]:
        if namespace in RESERVED_NAMESPACES:
            raise InvalidKeyError(f"namespace {namespace!r} is reserved for built-in records")
        return Collection(self, model, namespace, ttl=ttl)

    async def get_state(self, user_id: str, session_id: str) -> StateRecord | None:
        return await self.states.get(user_id, session_id)

    async def save_state(
        self,
        record: StateRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> StateRecord:
        return await self.states.save(record, expected_version=expected_version, fence=fence)

    async def delete_state(
        self,
        user_id: str,
        session_id: str,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> bool:
        return await self.states.delete(
            user_id, session_id, expected_version=expected_version, fence=fence
        )

    async def list_sessions(self, user_id: str) -> list[StateRecord]:
        return await self.states.list(user_id)

    async def get_context(self, user_id: str, session_id: str) -> ContextRecord | None:
        return await self.contexts.get(user_id, session_id)

    async def save_context(
        self,
        record: ContextRecord,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> ContextRecord:
        return await self.contexts.save(record, expected_version=expected_version, fence=fence)

    async def delete_context(
        self,
        user_id: str,
        session_id: str,
        *,
        expected_version: int | None = None,
        fence: Fence | None = None,
    ) -> bool:
        return await self.contexts.delete(
            user_id, session_id, expected_version=expected_version, fence=fence
        )

    async def get_identity(self, user_id: str, identity_id: str) -> IdentityRecord | None:
        return await self.identities.get(user_id, identity_id)

    async def get_identities(self, user_id: str) -> list[IdentityRecord]:
        return await self.identities.list(user_id)

    async def save_identity(
        self, record: IdentityRecord, *, expected_version: int | None = None
    ) -> IdentityRecord:
        return await self.identities.save(record, expected_version=expected_version)

    async def delete_identity(
        self, user_id: str, identity_id: str, *, expected_version: int | None = None
    ) -> bool:
        return await self.identities.delete(user_id, identity_id, expected_version=expected_version)

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self.users.get(user_id)

    async def save_user(
        self, record: UserRecord, *, expected_version: int | None = None
    ) -> UserRecord:
        return await self.users.save(record, expected_version=expected_version)

    async def delete_user(self, user_id: str) -> int:
        check_component(user_id, "user_id")
        deleted = await (await self.backend_ready()).delete_owner(user_id)
        self.recent.forget_owner(user_id)
        return deleted
