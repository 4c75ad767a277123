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
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

STALL = 0.02
"""Seconds a timer may fire late before the loop counts as stalled."""


class deadline:  # noqa: N801 - used like asyncio.timeout: ``async with deadline(0.1):``
    """Raise :class:`TimeoutError` if the block takes longer than ``seconds`` of time the
    event loop was able to run (see the module docstring); ``max_extra`` (default ten times
    ``seconds``) bounds the time granted back for stalls. A class rather than a generator:
    it sits on every cache call."""

    __slots__ = ("_budget", "_due", "_handle", "_loop", "_seconds", "_stall", "_timeout")

    def __init__(
        self, seconds: float, *, stall: float = STALL, max_extra: float | None = None
    ) -> None:
        self._seconds = seconds
        self._stall = stall
        self._budget = 10 * seconds if max_extra is None else max_extra

    async def __aenter__(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._timeout = asyncio.timeout(None)
        await self._timeout.__aenter__()
        self._due = loop.time() + self._seconds
        self._handle = loop.call_at(self._due, self._check)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        await self._timeout.__aexit__(exc_type, exc, traceback)

    def _check(self) -> None:
        now = self._loop.time()
        late = now - self._due
        if late > self._stall and self._budget > 0:
            granted = min(late, self._budget)
            self._budget -= granted
            self._due = now + granted
            self._handle = self._loop.call_at(self._due, self._check)
        else:
            self._timeout.reschedule(now)
