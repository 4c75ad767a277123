"""Coalesced calls: the single-item calls that concurrent tasks make in one event-loop
iteration share one call for many items (reads of many keys, a pipeline of many writes).

Autopipelining (:mod:`backends.redis.pipe`) already sends concurrent commands in one
write, but each still costs its own packing, reply parsing, deadline and retry wrapper
(and, in the tiered store, its own breaker bookkeeping); at 32 tasks that client-side CPU
is what limits a cache hit, or a save's cache write. Merging the calls before that turns N
calls of one item into one call of N.

A call that finds nothing queued and none in flight goes at once, alone: a lone caller
waits for nothing and pays one extra call. Otherwise it joins a queue that is sent as one
call at the next loop iteration (at most :data:`MAX_ITEMS` items; the rest form further
calls). Every caller gets its own result, or the shared call's error; a caller cancelled
while queued is left out of the call, and a caller cancelled while its call is in flight
does not cut the others off (the call runs in a task of its own).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

K = TypeVar("K")
V = TypeVar("V")

MAX_ITEMS: Final = 256
"""Items one coalesced call carries at most."""


class Coalesced(Generic[K, V]):
    """Single-item calls merged into calls of many items by ``send``."""

    def __init__(self, send: Callable[[Sequence[K]], Awaitable[Sequence[V]]]) -> None:
        """``send(items)`` returns one result per item, in order, or raises for all."""
        self._send_many = send
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        """Calls sent (a lone call counts one)."""
        self.items = 0
        """Items those calls carried."""

    async def call(self, item: K) -> V:
        """The result ``send`` gives for ``item``, sent alone or with others'."""
        if not self._queue and self._in_flight == 0:
            self._in_flight += 1
            self.sent += 1
            self.items += 1
            try:
                return (await self._send_many((item,)))[0]
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((item, future))
        return await future

    def _flush(self) -> None:
        queued = [(item, future) for item, future in self._queue if not future.cancelled()]
        self._queue = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queued), MAX_ITEMS):
            task = loop.create_task(self._send_queued(queued[start : start + MAX_ITEMS]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_queued(self, queued: list[tuple[K, asyncio.Future[V]]]) -> None:
        self._in_flight += 1
        self.sent += 1
        self.items += len(queued)
        try:
            results = await self._send_many([item for item, _ in queued])
        except BaseException as exc:
            for _, future in queued:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):  # the store is closing
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._in_flight -= 1
        for (_, future), result in zip(queued, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Send what is queued, and wait for every call sent (a lone call runs in its
        caller's task: the caller waits for it)."""
        if self._queue:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
