"""The tiered store's parts, built and wired together once, and the counters they keep.

:class:`~backends.tiered.store.TieredBackend` is the facade; the parts are the guard
(deadlines, breaker, generations), the gate (whether to use the cache now), the change-feed
applier, the dirty keys and their repairer, the writes in flight, the read path, the cache
updater of committed writes, and the optional near cache. :func:`assemble` checks the
settings and wires them; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.reports import TieredStats
from backends.tiered.changes import FeedApplier
from backends.tiered.feed import FeedFollower
from backends.tiered.gate import CacheGate
from backends.tiered.guard import CacheGuard
from backends.tiered.near import NearCache
from backends.tiered.reads import ReadThrough
from backends.tiered.repair import DirtyKeys, Repairer
from backends.tiered.update import CacheUpdater
from backends.tiered.writes import WritesInFlight
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Backend, Entry
    from backends.cache_base import VersionedCache
    from kvstore.clock import Clock


@dataclass(frozen=True, slots=True)
class TierSettings:
    """The tier's knobs (see :class:`~backends.tiered.store.TieredBackend`)."""

    cache_ttl: float
    cache_timeout: float
    lease_ttl: float
    breaker_threshold: int
    breaker_reset_after: float
    follow: bool
    feed_interval: float
    cache_name: str
    near_entries: int
    near_max_lag: float
    coalesce_reads: bool | Callable[[], bool]

    def __post_init__(self) -> None:
        if (
            self.cache_ttl <= 0
            or self.cache_timeout <= 0
            or self.lease_ttl <= 0
            or self.feed_interval <= 0
        ):
            raise ConfigurationError(
                "cache_ttl, cache_timeout, lease_ttl and feed_interval must be > 0"
            )
        if self.near_entries < 0 or self.near_max_lag <= 0:
            raise ConfigurationError("near_cache_entries must be >= 0 and near_cache_max_lag > 0")


@dataclass(frozen=True, slots=True)
class TierParts:
    """The wired parts of one tiered store."""

    guard: CacheGuard
    gate: CacheGate
    feed: FeedApplier
    dirty: DirtyKeys
    writes: WritesInFlight
    repairer: Repairer
    read: ReadThrough
    update: CacheUpdater
    near: NearCache | None

    def stats(self) -> TieredStats:
        """The tier's counters now."""
        guard, feed, read, near = self.guard, self.feed, self.read, self.near
        return TieredStats(
            reads=read.reads,
            hits=read.hits,
            misses=read.misses,
            bypassed=read.bypassed,
            fills=read.fills,
            fill_dropped=read.fill_dropped,
            cache_errors=guard.cache_errors,
            busy_timeouts=guard.busy_timeouts,
            breaker=guard.breaker.state,
            breaker_open_seconds=guard.breaker.open_seconds(),
            dirty=len(self.dirty),
            generation=guard.generation.number if guard.generation else 0,
            generation_changes=guard.generation_changes,
            feed_changes=feed.applied,
            feed_own=feed.own,
            feed_backlog=len(feed.backlog) + len(feed.held),
            feed_errors=feed.errors,
            following=feed.follower is not None,
            near_hits=read.near_hits,
            near_entries=len(near) if near is not None else 0,
            near_serving=near is not None and near.serving,
        )


def assemble(
    record: Backend, cache: VersionedCache, settings: TierSettings, clock: Clock
) -> TierParts:
    """Wire the parts of a tier over ``record`` and ``cache``."""
    follower = FeedFollower(record, clock) if settings.follow and record.capabilities.feed else None
    if settings.near_entries and follower is None:
        raise ConfigurationError(
            "the near cache is kept coherent by the change feed: it needs a SQL system "
            "of record and follow_changes=True"
        )
    near = (
        NearCache(settings.near_entries, clock, max_lag=settings.near_max_lag)
        if settings.near_entries
        else None
    )

    def ttl_for(entry: Entry) -> float:
        """Seconds the cache keeps ``entry``: ``cache_ttl``, or less if it expires sooner."""
        if entry.expires_at is None:
            return settings.cache_ttl
        remaining = (entry.expires_at - clock.now()).total_seconds()
        return max(0.001, min(settings.cache_ttl, remaining))

    guard = CacheGuard(
        cache,
        record,
        cache_timeout=settings.cache_timeout,
        breaker_threshold=settings.breaker_threshold,
        breaker_reset_after=settings.breaker_reset_after,
        cache_name=settings.cache_name,
        clock=clock,
    )
    dirty = DirtyKeys()
    # the gate and the feed call each other, and the gate calls the repairer: late-bound
    gate = CacheGate(
        guard,
        cache,
        cache_timeout=settings.cache_timeout,
        apply_feed=lambda: feed.apply(),
        healed=lambda: repairer.soon() if dirty else None,
    )
    writes = WritesInFlight(dirty)
    feed = FeedApplier(
        follower,
        cache,
        guard,
        usable=lambda: gate.usable(writing=True),
        writing=writes.__contains__,
        clock=clock,
        cache_ttl=settings.cache_ttl,
        interval=settings.feed_interval,
        near=near,
    )
    repairer = Repairer(
        dirty,
        writes,
        record,
        cache,
        guard,
        head=lambda: follower.cursor if follower is not None else 0,
        ttl_for=ttl_for,
        cache_ttl=settings.cache_ttl,
    )
    read = ReadThrough(
        record,
        cache,
        guard,
        gate,
        dirty,
        lease_ttl=settings.lease_ttl,
        ttl_for=ttl_for,
        repair_soon=repairer.soon,
        clock=clock,
        near=near,
        coalesce=settings.coalesce_reads,
    )
    update = CacheUpdater(
        cache,
        guard,
        gate,
        dirty,
        cache_ttl=settings.cache_ttl,
        ttl_for=ttl_for,
        landed=feed.landed,
    )
    return TierParts(guard, gate, feed, dirty, writes, repairer, read, update, near)
