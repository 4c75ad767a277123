"""Deadlines that a stalled event loop does not use up.

A cache call's deadline is there to catch a cache that does not answer. When the caller's
own event loop stalls (a long garbage collection, CPU-heavy work in a request), every
timer fires late and every call in flight would miss its deadline at once, even though the
replies are waiting in the socket: the circuit breaker would then take a busy caller for a
failing cache and move the load to the more expensive tier (a metastable failure, Bronson
et al., HotOS 2021).

:func:`deadline` works like :func:`asyncio.timeout`, except that when its timer fires late
by more than ``stall`` seconds, the loop was stalled for that long: the time is granted
again (up to ``max_extra`` seconds in all) and the replies that arrived meanwhile get their
turn. A timer that fires on time means the loop ran and the answer did not come: the
deadline expires, as :func:`asyncio.timeout` would.

A saturated loop (a thousand tasks, each with a little CPU work) never stalls long in one
callback, yet a call waits behind all of them. Given ``progress`` (a counter of answers the
dependency gave any caller), a deadline whose time is up while that counter moved grants
another ``seconds``: the dependency answers, the caller is what is slow. Stall grants come
out of ``max_extra``; progress grants out of ``busy_extra`` (by default as much again): a
caller that must wait behind a thousand others for as long as that takes needs a larger
budget than a stall, and a dependency that answers nobody never gets any of it.

A deadline inside another one in the same task that is due no later adds nothing but its
cost (a tiered store's cache deadline around the Redis backend's own): it is not watched,
and the enclosing one bounds the block.

Deadlines sit on every cache call, so they are cheap: instead of a timer each (an
:func:`asyncio.timeout` costs ~4 µs to set and cancel), the deadlines in flight on a loop
are checked by one timer every :data:`TICK` seconds while there are any, and one that
expires cancels its task the way :func:`asyncio.timeout` does (its block raises
:class:`TimeoutError`; a cancellation from elsewhere stays a cancellation). A deadline
therefore ends up to :data:`TICK` late, or at its own time if that comes sooner than the
next check.
"""

from __future__ import annotations

import asyncio
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

STALL = 0.02
"""Seconds a timer may fire late before the loop counts as stalled."""
TICK: Final = 0.01
"""Seconds between checks of the deadlines in flight on a loop."""

_ENCLOSING: ContextVar[deadline | None] = ContextVar("kvstore_deadline", default=None)
"""The innermost watched deadline that the running code is inside of."""


class _Watch:
    """The deadlines in flight on one event loop, checked by one timer."""

    __slots__ = ("__weakref__", "_active", "_handle", "_loop", "_next")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._active: dict[deadline, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._next = 0.0

    def add(self, item: deadline, due: float) -> None:
        self._active[item] = None
        if self._handle is None:
            self._schedule(min(due, self._loop.time() + TICK))
        elif due < self._next:
            self._handle.cancel()
            self._schedule(due)

    def discard(self, item: deadline) -> None:
        self._active.pop(item, None)

    def _schedule(self, when: float) -> None:
        self._next = when
        self._handle = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        late = now - self._next
        for item in list(self._active):
            item._check(now, late)
        if self._active:
            self._schedule(now + TICK)


_WATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watch] = weakref.WeakKeyDictionary()


def _watch(loop: asyncio.AbstractEventLoop) -> _Watch:
    watch = _WATCHES.get(loop)
    if watch is None:
        watch = _WATCHES[loop] = _Watch(loop)
    return watch


class deadline:  # noqa: N801 - used like asyncio.timeout: ``async with deadline(0.1):``
    """Raise :class:`TimeoutError` if the block takes longer than ``seconds`` of time the
    event loop was able to run, or than ``seconds`` without ``progress()`` moving (see the
    module docstring); ``max_extra`` (default ten times ``seconds``) bounds the time granted
    back for stalls, ``busy_extra`` (default ``max_extra``) for the dependency's progress.
    A class rather than a generator: it sits on every cache call."""

    __slots__ = (
        "_budget",
        "_busy_budget",
        "_cancelling",
        "_due",
        "_expired",
        "_progress",
        "_seconds",
        "_seen",
        "_stall",
        "_task",
        "_token",
        "_watch",
    )
    _due: float
    _task: asyncio.Task[Any] | None

    def __init__(
        self,
        seconds: float,
        *,
        stall: float = STALL,
        max_extra: float | None = None,
        progress: Callable[[], int] | None = None,
        busy_extra: float | None = None,
    ) -> None:
        self._seconds = seconds
        self._stall = stall
        self._budget = 10 * seconds if max_extra is None else max_extra
        self._busy_budget = self._budget if busy_extra is None else busy_extra
        self._progress = progress
        self._seen = progress() if progress is not None else 0

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = task = asyncio.current_task()
        if task is None:
            raise RuntimeError("deadline() must be used inside a task")
        due = loop.time() + self._seconds
        outer = _ENCLOSING.get()
        if outer is not None and outer._task is task and outer._due <= due:
            self._token = None  # covered: the enclosing deadline ends the block first
            return
        self._due = due
        self._expired = False
        self._cancelling = task.cancelling()
        self._watch = watch = _watch(loop)
        watch.add(self, due)
        self._token = _ENCLOSING.set(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is None:
            return
        _ENCLOSING.reset(self._token)
        if not self._expired:
            self._watch.discard(self)
            return
        assert self._task is not None
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _check(self, now: float, late: float) -> None:
        """The watch's timer fired ``late`` seconds after it was due."""
        if late > self._stall and self._budget > 0:
            granted = min(late, self._budget)  # the loop was stalled: time given back
            self._budget -= granted
            self._due += granted
        if self._due > now:
            return
        if self._progress is not None and self._busy_budget > 0 and self._progress() != self._seen:
            # others were answered meanwhile: the caller is behind (in a saturated loop the
            # timer is late too: a stall's budget alone would run out)
            self._seen = self._progress()
            granted = min(self._seconds, self._busy_budget)
            self._busy_budget -= granted
            self._due = now + granted
            return
        self._expired = True
        self._watch.discard(self)
        assert self._task is not None
        self._task.cancel()
