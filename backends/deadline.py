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
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

STALL = 0.02
"""Seconds a timer may fire late before the loop counts as stalled."""


@asynccontextmanager
async def deadline(
    seconds: float, *, stall: float = STALL, max_extra: float | None = None
) -> AsyncIterator[None]:
    """Raise :class:`TimeoutError` if the block takes longer than ``seconds`` of time the
    event loop was able to run (see the module docstring); ``max_extra`` (default ten times
    ``seconds``) bounds the time granted back for stalls."""
    loop = asyncio.get_running_loop()
    budget = 10 * seconds if max_extra is None else max_extra
    async with asyncio.timeout(None) as timeout:
        due = loop.time() + seconds
        handle: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal due, budget, handle
            late = loop.time() - due
            if late > stall and budget > 0:
                granted = min(late, budget)
                budget -= granted
                due = loop.time() + granted
                handle = loop.call_at(due, check)
            else:
                timeout.reschedule(loop.time())

        handle = loop.call_at(due, check)
        try:
            yield
        finally:
            handle.cancel()
