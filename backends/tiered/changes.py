"""Applying the change feed to the cache: how any process repairs any cache.

Every committed change the :class:`~backends.tiered.feed.FeedFollower` delivers becomes a
tombstone of its revision in the cache ("anything older is stale"; a no-op where the cache
holds that revision or newer): a process that died between commit and cache update, a
writer cut off from the cache, or a batch job's plain SQL leaves nothing stale for longer
than the feed's lag. Changes this process already wrote to the cache in the same generation
are skipped. A change of a key this process is writing meanwhile is held back (at most
:data:`HOLD_MAX` seconds) until that write has told whether it put the revision in the cache
itself: between its commit and its cache update the feed may read it first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from backends.tiered.guard import FAILED
from backends.tiered.repair import REPAIR_CHUNK
from kvstore.errors import KVStoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from backends.base import Change
    from backends.cache_base import Generation, VersionedCache
    from backends.tiered.feed import FeedFollower
    from backends.tiered.guard import CacheGuard
    from backends.tiered.near import NearCache
    from kvstore.clock import Clock
    from kvstore.keys import Key

logger = logging.getLogger("kvstore.tiered")

DEFAULT_FEED_INTERVAL = 0.05
"""Seconds between change-feed reads when the last one found nothing new."""
LANDED_MAX: Final = 100_000
"""Revisions this process wrote to the cache that it remembers, so the change feed does not
write them again (past that the memory is dropped: the feed then writes them, a no-op)."""
HOLD_MAX: Final = 1.0
"""Seconds a change of a key with a write of this process in flight is held back, at most
(the write's cache update normally follows its commit within the cache's deadline)."""
FEED_BACKLOG_MAX = 100_000
"""Changes held for a cache that does not answer; past that the cache is presumed to have
missed them and a new generation begins when it answers again."""


class FeedApplier:
    """Puts the change feed's changes in one tiered store's cache."""

    def __init__(
        self,
        follower: FeedFollower | None,
        cache: VersionedCache,
        guard: CacheGuard,
        *,
        usable: Callable[[], Awaitable[bool]],
        writing: Callable[[Key], bool],
        clock: Clock,
        cache_ttl: float,
        interval: float = DEFAULT_FEED_INTERVAL,
        near: NearCache | None = None,
    ) -> None:
        """``usable`` says whether a writer may use the cache now (it may run the breaker's
        probe, which calls :meth:`apply`); ``writing`` whether a write of a key is in flight
        in this process. ``near``, if given, learns of every change first, whether the
        shared cache answers or not."""
        self.follower = follower
        self._near = near
        self._cache = cache
        self._guard = guard
        self._usable = usable
        self._writing = writing
        self._clock = clock
        self._cache_ttl = cache_ttl
        self._interval = interval
        self.backlog: list[Change] = []
        """Changes read and not yet in the cache (it did not answer)."""
        self._lock = asyncio.Lock()
        self._landed: dict[int, Generation] = {}
        """Revisions whose cache update this process made, and in which generation."""
        self.held: list[tuple[float, Change]] = []
        """Changes of keys being written by this process, and since when they wait."""
        self.applied = 0
        self.own = 0
        self.errors = 0
        self._stopped = False

    async def run(self) -> None:
        """Read the change feed and apply it, until :meth:`stop` (or cancelled)."""
        follower = self.follower
        assert follower is not None
        failing = False
        while not self._stopped:
            try:
                changes = await follower.poll()
                failing = False
            except Exception as exc:
                if not failing:  # logged once per outage, counted always
                    logger.warning(
                        "change feed read failed (%s); retrying",
                        type(exc).__name__,
                        exc_info=not isinstance(exc, KVStoreError),
                    )
                failing = True
                self.errors += 1
                await asyncio.sleep(min(1.0, self._interval * 10))
                continue
            near = self._near
            if near is not None:
                near.changed(changes)
                if follower.caught_up:
                    near.feed_current()
            self.backlog.extend(self._news(changes, follower.watermark))
            if len(self.backlog) > FEED_BACKLOG_MAX:
                # the cache has been out of use too long to catch up: begin anew instead
                self.backlog = []
                self._guard.mark_lost(self._guard.generation)
            if self.backlog and await self._usable():
                await self.apply()
            if len(changes) < follower.batch:
                await asyncio.sleep(self._interval)

    def stop(self) -> None:
        """End :meth:`run` at its next turn. Cancelling its task alone is not enough: a
        library that swallows one cancellation (seen under load: the loop went on after
        its task was cancelled, and ``close`` waited for it forever) would keep it going."""
        self._stopped = True

    def landed(self, revision: int, generation: Generation) -> None:
        """This process put ``revision`` in the cache in ``generation``."""
        if self.follower is None:
            return
        if len(self._landed) >= LANDED_MAX:
            self._landed.clear()  # only costs writes the feed then repeats
        self._landed[revision] = generation

    async def apply(self) -> bool:
        """Put the backlog's tombstones in the cache; whether all of it landed. Changes stay
        in the backlog until they do (at most :data:`FEED_BACKLOG_MAX`: past that the cache
        is presumed to have missed them and a new generation begins)."""
        async with self._lock:
            backlog = self.backlog
            while backlog:
                chunk = backlog[:REPAIR_CHUNK]
                items = [(change.key, change.revision) for change in chunk]
                tombstones = self._cache.tombstones(items, ttl=self._cache_ttl)
                if await self._guard.call(tombstones) is FAILED:
                    return False
                del backlog[: len(chunk)]
                self.applied += len(chunk)
            return True

    def _news(self, changes: Sequence[Change], watermark: int) -> Sequence[Change]:
        """The changes the cache may not hold yet: not those this process wrote to the
        cache itself in the current generation (the cache holds that revision or a newer
        one). A change of a key this process is writing is held back until that write
        ends (or :data:`HOLD_MAX` passes). Forgets what the feed will not deliver again (at
        or below ``watermark``)."""
        landed = self._landed
        if not landed and not self.held and not changes:
            return changes
        generation = self._guard.generation
        writing = self._writing
        now = self._clock.monotonic()
        waiting = [*self.held, *((now, change) for change in changes)]
        self.held = []
        news: list[Change] = []
        for since, change in waiting:
            if landed and landed.pop(change.revision, None) is generation:
                self.own += 1
            elif writing(change.key) and now - since < HOLD_MAX:
                self.held.append((since, change))
            else:
                news.append(change)
        if landed and min(landed) <= watermark:
            for revision in [r for r in landed if r <= watermark]:
                del landed[revision]
        return news
