"""Whether to use the cache now: the circuit breaker's probe, and the move to a new cache
generation when the cache was lost.

Reads skip a cache whose breaker is open; writes still try it (a write that skipped a cache
other processes read would leave them the old version). When the breaker is due for a
probe, the caller that asks runs it: ping the cache, apply the change feed's backlog (what
other processes wrote while the cache was out of use), and close the breaker if both
succeed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from backends.tiered.guard import FAILED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from backends.cache_base import VersionedCache
    from backends.tiered.guard import CacheGuard

RENEW_PATIENCE: Final = 10.0
"""Seconds upkeep (warm) waits for the move to a new generation; requests wait
``cache_timeout`` and then bypass the cache."""


class CacheGate:
    """Says whether a caller uses the cache now, running the probe when one is due."""

    def __init__(
        self,
        guard: CacheGuard,
        cache: VersionedCache,
        *,
        cache_timeout: float,
        apply_feed: Callable[[], Awaitable[bool]],
        healed: Callable[[], None],
    ) -> None:
        """``apply_feed`` applies the change feed's backlog (whether it did); ``healed`` is
        called after a probe that closed the breaker (to repair dirty keys)."""
        self._guard = guard
        self._cache = cache
        self._cache_timeout = cache_timeout
        self._apply_feed = apply_feed
        self._healed = healed

    async def usable(self, *, writing: bool = False, patient: bool = False) -> bool:
        """Whether to use the cache now; runs the probe when the breaker is due for one, and
        the move to a new generation when the cache was lost. A ``writing`` caller uses the
        cache even while the breaker is open; reads skip it. A ``patient`` caller (upkeep,
        not a request) waits up to :data:`RENEW_PATIENCE` for a new generation, not
        ``cache_timeout``."""
        guard = self._guard
        breaker = guard.breaker
        if not breaker.closed:
            if breaker.probe_due():
                return await self._probe()
            if not writing:
                return False
        if guard.lost:
            return await guard.renewed(RENEW_PATIENCE if patient else self._cache_timeout)
        return True

    async def _probe(self) -> bool:
        """Ping the cache (moving to a new generation first if it was lost) and apply the
        change feed's backlog; the breaker closes if both succeed."""
        guard = self._guard
        guard.breaker.start_probe()
        healthy = False
        try:
            if guard.generation is None or guard.lost:
                await guard.renewed(self._cache_timeout)
            healthy = (
                guard.generation is not None
                and not guard.lost
                and await guard.call(self._cache.ping(), count=False) is not FAILED
                and not guard.lost
                and await self._apply_feed()
            )
            if not healthy and guard.lost:
                # the ping met a new incarnation: move now, then the probe holds
                healthy = await guard.renewed(self._cache_timeout) and await self._apply_feed()
        finally:
            guard.breaker.finish_probe(healthy)
        if healthy:
            self._healed()
        return healthy
