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
cost (a tiered store's cache deadline around the Redis backend's own): it sets no timer, and
the enclosing one bounds the block.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

STALL = 0.02
"""Seconds a timer may fire late before the loop counts as stalled."""

_ENCLOSING: ContextVar[deadline | None] = ContextVar("kvstore_deadline", default=None)
"""The innermost deadline with a timer that the running code is inside of."""


class deadline:  # noqa: N801 - used like asyncio.timeout: ``async with deadline(0.1):``
    """Raise :class:`TimeoutError` if the block takes longer than ``seconds`` of time the
    event loop was able to run, or than ``seconds`` without ``progress()`` moving (see the
    module docstring); ``max_extra`` (default ten times ``seconds``) bounds the time granted
    back for stalls, ``busy_extra`` (default ``max_extra``) for the dependency's progress.
    A class rather than a generator: it sits on every cache call."""

    __slots__ = (
        "_budget",
        "_busy_budget",
        "_due",
        "_handle",
        "_loop",
        "_progress",
        "_seconds",
        "_seen",
        "_stall",
        "_task",
        "_timeout",
        "_token",
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
        self._loop = loop = asyncio.get_running_loop()
        self._task = task = asyncio.current_task()
        due = loop.time() + self._seconds
        outer = _ENCLOSING.get()
        if outer is not None and outer._task is task and outer._due <= due:
            self._token = None  # covered: the enclosing deadline fires first
            return
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._due = due
        self._handle = loop.call_at(due, self._check)
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
        self._handle.cancel()
        await self._timeout.__aexit__(exc_type, exc, traceback)

    def _check(self) -> None:
        now = self._loop.time()
        late = now - self._due
        granted = 0.0
        if self._progress is not None and self._progress() != self._seen and self._busy_budget:
            # others were answered meanwhile: the caller is behind (in a saturated loop the
            # timer is late too, so this comes first: a stall's budget would run out)
            self._seen = self._progress()
            granted = min(self._seconds, self._busy_budget)
            self._busy_budget -= granted
        elif late > self._stall:
            granted = min(late, self._budget)  # the loop was stalled
            self._budget -= granted
        if granted > 0:
            self._due = now + granted
            self._handle = self._loop.call_at(self._due, self._check)
        else:
            self._timeout.reschedule(now)
