"""Whether and how the tiered store uses its cache: a deadline per call that a busy caller
does not use up, a circuit breaker that only a failing cache trips, and the cache
generation in use.

* Every cache call has a deadline (``cache_timeout``) that a stalled event loop, or a
  saturated one while the cache answers other calls, does not use up
  (:mod:`backends.deadline`): a busy caller is not a failing cache. ``breaker_threshold``
  consecutive failures open the breaker (:mod:`backends.breaker`).
* **A cache that rewinds is fenced off.** Cache keys live under a generation kept in the
  system of record per cache incarnation. A cache that shows it lost data (a new server
  ``run_id`` on a new connection, or the generation marker gone) raises
  :class:`~kvstore.errors.CacheLostError`; the guard then moves to a new generation
  (compare-and-set in the system of record, so processes noticing at once agree), under
  which nothing older is reachable. Write-throughs of revisions committed before the
  generation began (``floor``) only put tombstones in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from typing import TYPE_CHECKING, Final, TypeVar

from backends.breaker import CircuitBreaker
from backends.cache_base import Generation
from backends.deadline import deadline
from kvstore.errors import BackendUnavailableError, CacheLostError, KVStoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from backends.base import Backend
    from backends.cache_base import VersionedCache
    from kvstore.clock import Clock

T = TypeVar("T")

logger = logging.getLogger("kvstore.tiered")

BUSY_PATIENCE: Final = 10.0
"""Seconds a cache call may go on waiting past ``cache_timeout`` while the cache answers
other calls (a saturated caller: the cache is healthy, the caller is behind). Reading from
the system of record instead would only add load where there is too much already."""


class _Failed(Enum):
    FAILED = "failed"


FAILED: Final = _Failed.FAILED
"""What a cache call that failed or timed out returns."""


class CacheGuard:
    """The cache's deadline, breaker and generation for one tiered store."""

    def __init__(
        self,
        cache: VersionedCache,
        record: Backend,
        *,
        cache_timeout: float,
        breaker_threshold: int,
        breaker_reset_after: float,
        cache_name: str,
        clock: Clock,
    ) -> None:
        self.cache = cache
        self.record = record
        self.cache_timeout = cache_timeout
        self.cache_name = cache_name
        self.clock = clock
        self.breaker = CircuitBreaker(
            breaker_threshold, breaker_reset_after, logger=logger, clock=clock
        )
        self.generation: Generation | None = None
        """The generation in use (``None`` before the first)."""
        self._local_generation: tuple[int, str] | None = None
        self._renewing: asyncio.Task[bool] | None = None
        self._lost_at = -1.0
        self._lost_count = 0
        self.answered = 0
        """Cache calls answered so far (the progress a cache deadline watches)."""
        self.cache_errors = 0
        self.busy_timeouts = 0
        self.generation_changes = 0

    @property
    def lost(self) -> bool:
        """Whether the cache showed it lost what it held and no new generation began yet."""
        return self._lost_at >= 0

    async def close(self) -> None:
        """Stop a move to a new generation under way."""
        task, self._renewing = self._renewing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, operation: Awaitable[T], *, count: bool = True) -> T | _Failed:
        """``operation`` under the cache deadline; ``FAILED`` if it failed or timed out (the
        failure is counted toward the breaker unless ``count`` is false; a lost cache
        starts a new generation instead). Cancellation propagates."""
        generation = self.generation
        answered = self.answered
        try:
            async with self.deadline():
                result = await operation
        except CacheLostError:
            self.cache_errors += 1
            self.mark_lost(generation)
            return FAILED
        except Exception as exc:  # noqa: BLE001 - a failing cache never fails the store
            if count:
                self.failure(exc, generation, answered)
            else:
                self.cache_errors += 1
            return FAILED
        self.succeeded()
        return result

    def deadline(self) -> deadline:
        """The deadline of one cache call: ``cache_timeout`` of loop time, extended by stalls
        (up to ten times) and while the cache answers others (up to :data:`BUSY_PATIENCE`)."""
        return deadline(self.cache_timeout, progress=self._answers, busy_extra=BUSY_PATIENCE)

    def succeeded(self) -> None:
        """Count a cache call that was answered."""
        self.answered += 1
        self.breaker.succeeded()

    def failure(self, exc: Exception, generation: Generation | None, answered: int) -> None:
        """Count a failed cache call made in ``generation``. A call that timed out while
        the cache answered other calls (``answered`` is the count of answers when it began)
        met a saturated caller, not a failing cache: it does not count toward the breaker."""
        if isinstance(exc, CacheLostError):
            self.mark_lost(generation)
            return
        self.cache_errors += 1
        if isinstance(exc, TimeoutError) and self.answered > answered:
            self.busy_timeouts += 1
            return
        self.breaker.failed(exc)

    def _answers(self) -> int:
        return self.answered

    # -- generations ---------------------------------------------------------------------------

    def mark_lost(self, generation: Generation | None) -> None:
        """The cache showed it lost what it held during a call made in ``generation``: stop
        using it until a new generation (unless one began since that call started)."""
        if generation is not self.generation:
            return
        if self._lost_at < 0:
            self._lost_at = self.clock.monotonic()
            self._lost_count += 1

    async def renewed(self, wait: float) -> bool:
        """Move to a new generation (the first caller to find the cache lost starts it; the
        others wait for it, up to ``wait`` seconds, then bypass the cache). Whether the
        cache is usable again."""
        losses = self._lost_count
        task = self._renewing
        if task is None:
            replacing = self.generation.number if self.lost and self.generation else None
            task = self._renewing = asyncio.get_running_loop().create_task(
                self.renew(replacing=replacing)
            )
        try:
            async with deadline(wait):
                renewed = await asyncio.shield(task)
        except TimeoutError:
            return False
        if self._renewing is task:
            self._renewing = None
        if renewed and self._lost_count == losses:
            self._lost_at = -1.0
        return not self.lost and self.generation is not None

    async def renew(self, *, replacing: int | None) -> bool:
        """Move to the generation of the cache's current incarnation: the one on record if
        it belongs to that incarnation, is not ``replacing`` and its marker is in the cache;
        otherwise a new one. Returns whether the cache and the system of record answered.

        A new generation's marker is put in the cache *before* the generation is recorded
        (compare-and-set), so a generation on record without its marker means the cache
        lost keys (flushed) and is replaced too; processes that notice a loss at once agree
        on one new generation."""
        incarnation = self.cache.seen_incarnation if replacing is not None else None
        if incarnation is None:
            asked = await self.call(self.cache.incarnation(), count=False)
            if asked is FAILED:
                return False
            incarnation = asked
        try:
            for _ in range(8):
                number = await self._settle(incarnation, replacing)
                if number is not None:
                    head = await self._head()
                    break
            else:
                return False
        except KVStoreError:
            return False
        if self.generation is not None and number != self.generation.number:
            self.generation_changes += 1
            logger.warning(
                "cache lost what it held (restart, restore, failover or flush); now using "
                "cache generation %d",
                number,
            )
        self.generation = Generation(number=number, floor=head)
        return True

    async def _settle(self, incarnation: str, replacing: int | None) -> int | None:
        """One attempt of :meth:`renew`: the generation to use, or ``None`` to try again
        (another process moved first). Raises :class:`KVStoreError` if a tier fails."""
        on_record = await self._read_generation()
        if on_record is not None:
            number, owner = on_record
            if owner == incarnation and number != replacing:
                self.cache.use_generation(incarnation, number)
                if await self._step(self.cache.claim_generation()):
                    return number  # the marker was there: the generation is intact
                replacing = number  # on record, marker gone: the cache lost keys
        current = on_record[0] if on_record is not None else None
        target = (current or 0) + 1
        self.cache.use_generation(incarnation, target)
        await self._step(self.cache.claim_generation())
        if await self._advance_generation(incarnation, current, target):
            return target
        return None

    async def _step(self, operation: Awaitable[T]) -> T:
        result = await self.call(operation, count=False)
        if result is FAILED:
            raise BackendUnavailableError("the cache did not answer")
        return result

    async def _read_generation(self) -> tuple[int, str] | None:
        if self.record.capabilities.feed:
            return await self.record.read_generation(self.cache_name)
        return self._local_generation

    async def _advance_generation(self, incarnation: str, current: int | None, to: int) -> bool:
        if self.record.capabilities.feed:
            return await self.record.advance_generation(
                self.cache_name, incarnation, current=current, to=to
            )
        self._local_generation = (to, incarnation)  # one process: no one to agree with
        return True

    async def _head(self) -> int:
        if self.record.capabilities.feed:
            head, _ = await self.record.head()
            return head
        return 0
