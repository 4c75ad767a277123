"""Session locks: one message of a conversation at a time, across processes, with fencing.

``async with db.lock(user_id, session_id, ttl=30) as fence:`` waits its turn in the lock's
queue, first come first served, and holds the lock for at most ``ttl`` seconds (a lease:
it is not renewed). The lock is only as safe as its fence: a holder that pauses past its
lease (a GC pause, a frozen container) may still believe it holds the lock after another
took it over, so writes pass ``fence=fence`` and the store refuses them with
:class:`~kvstore.errors.FencedError` once a newer lock was granted, checked in the same
statement as the write (Kleppmann, "How to do distributed locking", 2016).

The queue lives in the system of record (SQL for a tiered store, so it survives the cache
failing); each waiter keeps its ticket alive by asking for its turn, at most every
:data:`MAX_POLL` seconds, and is woken at once when a lock of the same process is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import TYPE_CHECKING, Final

from kvstore.errors import InvalidRecordError, KVStoreError, LockTimeoutError
from kvstore.keys import Fence, check_component

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from backends.base import Backend
    from kvstore.clock import Clock

HOLD: Final = 5.0
"""Seconds a waiting ticket stays in the queue without being renewed: a waiter that died
holds up the ones behind it this long at most."""
FIRST_POLL: Final = 0.002
MAX_POLL: Final = 0.02
"""Seconds between a waiter's turns: from :data:`FIRST_POLL`, doubling up to this."""


def _cancel_requests() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _still_wanted(requests: int) -> None:
    """Raise :class:`asyncio.CancelledError` if the waiting task was asked to cancel since
    it had ``requests`` pending (a task cleaning up after a cancel may still wait).

    A cancellation can be swallowed below us: Python 3.11's ``asyncio.wait_for`` (which
    fakeredis uses to read replies) returns its inner result when the cancellation arrives
    just as the result does. A waiter that kept waiting after its cancel would hold a
    ticket until its timeout; ``Task.cancelling()`` still counts the request."""
    if _cancel_requests() > requests:
        raise asyncio.CancelledError


class LockWakeups:
    """Wakes the waiters of this process when a lock of the same session is released."""

    def __init__(self) -> None:
        # weak: an event lives as long as a waiter holds it, so locks waited on once and
        # never released (a timed-out wait) leave nothing behind
        self._events: weakref.WeakValueDictionary[tuple[str, str], asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    def event(self, lock: tuple[str, str]) -> asyncio.Event:
        """The event set at the next release of ``lock``."""
        event = self._events.get(lock)
        if event is None:
            event = self._events[lock] = asyncio.Event()
        return event

    def released(self, lock: tuple[str, str]) -> None:
        event = self._events.pop(lock, None)
        if event is not None:
            event.set()


class SessionLock:
    """``async with`` it to hold the lock of one session; yields the :class:`Fence`."""

    def __init__(
        self,
        backend: Callable[[], Awaitable[Backend]],
        owner: str,
        name: str,
        *,
        ttl: float,
        timeout: float,
        clock: Clock,
        wakeups: LockWakeups,
    ) -> None:
        check_component(owner, "user_id")
        check_component(name, "session_id")
        for what, value in (("ttl", ttl), ("timeout", timeout)):
            if not isinstance(value, int | float) or not 0 < value < float("inf"):
                raise InvalidRecordError(f"{what} must be positive, finite seconds")
        self._backend = backend
        self._lock = (owner, name)
        self._ttl = float(ttl)
        self._timeout = float(timeout)
        self._clock = clock
        self._wakeups = wakeups
        self._held: tuple[Backend, int] | None = None

    async def __aenter__(self) -> Fence:
        if self._held is not None:
            raise InvalidRecordError("this lock is held already; make a new db.lock(...)")
        backend = await self._backend()
        owner, name = self._lock
        give_up = self._clock.monotonic() + self._timeout
        requests = _cancel_requests()
        ticket = await backend.lock_ticket(owner, name, hold=HOLD)
        try:
            delay = FIRST_POLL
            while True:
                wakeup = self._wakeups.event(self._lock)
                turn = await backend.lock_turn(owner, name, ticket, hold=HOLD, lease=self._ttl)
                _still_wanted(requests)
                if turn:
                    self._held = (backend, ticket)
                    return Fence(owner, name, ticket)
                if turn is None:  # our ticket expired (a stall longer than HOLD): join again
                    ticket = await backend.lock_ticket(owner, name, hold=HOLD)
                    continue
                left = give_up - self._clock.monotonic()
                if left <= 0:
                    raise LockTimeoutError(
                        f"the lock of session {name!r} was not granted within {self._timeout:g} s"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, left)):
                        await wakeup.wait()
                _still_wanted(requests)
                delay = min(delay * 2, MAX_POLL)
        except BaseException:
            with contextlib.suppress(KVStoreError):  # unreleased, it expires after HOLD
                await self._leave(backend, ticket)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._leave(*held)

    async def _leave(self, backend: Backend, ticket: int) -> None:
        """Give the ticket up, even if the caller is being cancelled (the release runs to
        its end in its own task)."""
        owner, name = self._lock
        release = asyncio.ensure_future(backend.lock_release(owner, name, ticket))
        try:
            await asyncio.shield(release)
        finally:
            if release.done() and not release.cancelled() and release.exception() is None:
                self._wakeups.released(self._lock)
