"""The service layer: configure the store from the environment, handle one message."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from examples.coach import context, metrics
from examples.coach.state_machine import State
from examples.coach.step import step
from kvstore import ContextRecord, DatabaseType, StateRecord, create_database

if TYPE_CHECKING:
    from types import TracebackType

    from kvstore import Database


@dataclass(frozen=True, slots=True)
class Reply:
    """The coach's answer and where the conversation now stands."""

    text: str
    state: State
    state_version: int
    context_version: int


LOCK_TTL = 10.0
"""Seconds a message's handler holds its session's lock at most (a lease): longer than a
turn takes under load, short enough that a worker that died holds its sessions up briefly."""
LOCK_TIMEOUT = 20.0
"""Seconds a message waits for its session's lock: more than :data:`LOCK_TTL`, so a message
queued behind a holder that died still gets its turn."""


class CoachService:
    """Handles user messages; one instance per process, sharing one store."""

    def __init__(
        self,
        db: Database,
        *,
        context_window: int = context.DEFAULT_WINDOW,
        lock_ttl: float = LOCK_TTL,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.db = db
        self.context_window = context_window
        self.lock_ttl = lock_ttl
        self.lock_timeout = lock_timeout

    @classmethod
    def from_environment(cls) -> Self:
        """``KVSTORE_URL`` (SQL) plus ``KVSTORE_CACHE_URL`` (Redis or memory://) make a tiered
        store; without a cache URL, the SQL store alone (default: the SQLite file).
        ``KVSTORE_COACH_LOCK_TTL`` and ``KVSTORE_COACH_LOCK_TIMEOUT`` (seconds) override
        :data:`LOCK_TTL` and :data:`LOCK_TIMEOUT`; ``KVSTORE_COACH_METRICS=1`` sends the
        store's metrics to Prometheus (:mod:`examples.coach.metrics`)."""
        cache_url = os.environ.get("KVSTORE_CACHE_URL")
        url = os.environ.get("KVSTORE_URL")
        lock_ttl = float(os.environ.get("KVSTORE_COACH_LOCK_TTL", LOCK_TTL))
        lock_timeout = float(os.environ.get("KVSTORE_COACH_LOCK_TIMEOUT", LOCK_TIMEOUT))
        provider = metrics.meter_provider() if metrics.enabled() else None
        if cache_url:
            db = create_database(
                DatabaseType.TIERED, url, cache_url=cache_url, meter_provider=provider
            )
        else:
            db = create_database(DatabaseType.SQL, url, meter_provider=provider)
        return cls(db, lock_ttl=lock_ttl, lock_timeout=lock_timeout)

    async def __aenter__(self) -> Self:
        await self.db.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.db.close()

    async def handle(self, user_id: str, session_id: str, message: str) -> Reply:
        """One turn: read the session's state and context, act, save both, reply."""
        stored = await self.db.get_state(user_id, session_id)
        state = State(stored.state) if stored else State.INTRODUCTION
        ctx = await self.db.get_context(user_id, session_id) or ContextRecord(
            user_id=user_id, session_id=session_id
        )
        done = await step(self.db, user_id, state, message)
        following, text = done.following, done.text
        saved = await self.db.save_state(
            StateRecord(
                user_id=user_id,
                session_id=session_id,
                state=following,
                data={"turns": (int(str(stored.data.get("turns", 0))) if stored else 0) + 1},
            ),
            expected_version=stored.version if stored else 0,
        )
        saved_context = await self.db.save_context(
            context.with_exchange(ctx, message, text, window=self.context_window)
        )
        return Reply(text, following, saved.version, saved_context.version)
