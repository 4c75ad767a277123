"""Coalesced reads: the single-key reads that concurrent tasks make in one event-loop
iteration share one read of many keys.

Autopipelining (:mod:`backends.redis.pipe`) already sends concurrent commands in one
write, but each still costs its own packing, reply parsing, deadline and retry wrapper
(and, in the tiered store, its own breaker bookkeeping); at 32 tasks that client-side CPU
is what limits a cache hit. Merging the reads before that turns N reads of one key into
one read of N.

A read that finds nothing queued and no read in flight goes at once, alone: a lone caller
waits for nothing and pays one extra call. Otherwise it joins a queue that is sent as one
read at the next loop iteration (at most :data:`MAX_KEYS` keys; the rest form further
reads). Every caller gets its own value, or the shared read's error; a caller cancelled
while queued is left out of the read, and a caller cancelled while its read is in flight
does not cut the others off (the read runs in a task of its own).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

K = TypeVar("K")
V = TypeVar("V")

MAX_KEYS: Final = 256
"""Keys one coalesced read carries at most."""


class CoalescedReads(Generic[K, V]):
    """Single-key reads merged into reads of many keys by ``read``."""

    def __init__(self, read: Callable[[Sequence[K]], Awaitable[Sequence[V]]]) -> None:
        """``read(keys)`` returns one value per key, in order, or raises for all of them."""
        self._read = read
        self._queue: list[tuple[K, asyncio.Future[V]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads = 0
        """Reads sent (a lone read counts one)."""
        self.keys = 0
        """Keys those reads carried."""

    async def get(self, key: K) -> V:
        """The value ``read`` gives for ``key``, read alone or with others'."""
        if not self._queue and self._in_flight == 0:
            self._in_flight += 1
            self.reads += 1
            self.keys += 1
            try:
                return (await self._read((key,)))[0]
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((key, future))
        return await future

    def _flush(self) -> None:
        queued = [(key, future) for key, future in self._queue if not future.cancelled()]
        self._queue = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queued), MAX_KEYS):
            task = loop.create_task(self._send(queued[start : start + MAX_KEYS]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, queued: list[tuple[K, asyncio.Future[V]]]) -> None:
        self._in_flight += 1
        self.reads += 1
        self.keys += len(queued)
        try:
            values = await self._read([key for key, _ in queued])
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
        for (_, future), value in zip(queued, values, strict=True):
            if not future.done():
                future.set_result(value)

    async def aclose(self) -> None:
        """Wait for the reads already sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
