"""The tiered store's counters, as :meth:`TieredBackend.stats` returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.breaker import BreakerState


@dataclass(frozen=True, slots=True)
class TieredStats:
    """Counters since the store was built (see :meth:`TieredBackend.stats`)."""

    reads: int
    """Keys asked for by reads, however they were answered."""
    hits: int
    """Keys answered by the cache."""
    misses: int
    """Keys the cache did not hold (read from the system of record)."""
    bypassed: int
    """Keys read without the cache (breaker open, cache lost, or the key dirty)."""
    fills: int
    """Entries put into the cache after a miss."""
    fill_dropped: int
    """Fills the cache refused: lease lost (a write, eviction or flush came first) or older."""
    cache_errors: int
    """Cache calls that failed or timed out."""
    busy_timeouts: int
    """Of those, calls that timed out while the cache answered others meanwhile (a
    saturated caller, not a failing cache: not counted toward the breaker)."""
    breaker: BreakerState
    """The circuit breaker's state now."""
    breaker_open_seconds: float
    """Seconds the breaker has been open (or probing) in all, the current stretch included."""
    dirty: int
    """Keys and owners waiting for their cache entries to be repaired."""
    generation: int
    """The cache generation in use (0 before the first)."""
    generation_changes: int
    """New generations begun by this process (cache restarted, restored, flushed)."""
    feed_changes: int
    """Changes read from the change feed and applied to the cache."""
    feed_own: int
    """Changes the feed brought back that this process had already written to the cache in
    the same generation (not applied again)."""
    feed_backlog: int
    """Changes read from the feed and not yet applied (the cache did not answer)."""
    feed_errors: int
    """Reads of the change feed that failed (retried)."""
    near_hits: int = 0
    """Of the hits, keys answered by the near cache in the process (also counted in
    ``hits``)."""
    near_entries: int = 0
    """Entries the near cache holds now (0 without one)."""
    near_serving: bool = False
    """Whether the near cache serves now: its change feed has been current within
    ``near_cache_max_lag`` (``False`` without one)."""

    @property
    def hit_ratio(self) -> float:
        """Hits (the near cache's and the shared cache's) over every key read: bypassed
        reads count as not answered by the cache."""
        return self.hits / self.reads if self.reads else 0.0
