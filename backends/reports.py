"""What backends report about themselves: counters (:class:`Stats`, what
``Database.stats()`` returns) and the outcome of cache upkeep (:class:`WarmReport`,
:class:`VerifyReport`).

Plain frozen dataclasses at the contract level, so the ``Database`` API can return them
without knowing any backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.breaker import BreakerState
    from kvstore.keys import Key


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of a database since it was built, one part per tier it has.

    Counters belong to one process: a service's ``db.stats()`` counts what that process
    did (the ``kvstore`` command, a new process, would only see zeros).
    """

    backend: str
    """The kind of store: ``"memory"``, ``"sql"``, ``"redis"`` or ``"tiered"``."""
    tier: TieredStats | None = None
    """The tiered store's cache counters (hits, misses, breaker, feed); ``None`` without a
    cache tier."""
    sql: SQLStats | None = None
    """The SQL system of record's counters; ``None`` without one."""


@dataclass(frozen=True, slots=True)
class TieredStats:
    """Counters since the store was built (``Database.stats().tier``)."""

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
    following: bool = False
    """Whether this store follows the system of record's change feed (``follow_changes``
    and a system of record that has one)."""
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


@dataclass(frozen=True, slots=True)
class SQLStats:
    """Counters of one SQL backend since it was built."""

    saves: int
    """Saves sent to the database (group commit: each row of a round counts)."""
    save_statements: int
    """Statements that carried them: fewer than ``saves`` when rounds grouped saves."""
    connections_in_use: int = 0
    """Hot statements running on pooled connections now (PostgreSQL)."""
    connection_waits: int = 0
    """Hot statements that found every connection taken and waited their turn."""
    connection_wait_seconds: float = 0.0
    """Time those waits took in all."""
    replica_reads: int = 0
    """Listings, exports and counts the replica answered."""
    replica_fallbacks: int = 0
    """Of those meant for the replica, read on the primary: the replica had not replayed
    this process's own writes within ``replica_wait``."""
    replica_errors: int = 0
    """Of those meant for the replica, read on the primary: the replica failed."""


@dataclass(frozen=True, slots=True)
class WarmReport:
    """What :func:`warm` did."""

    read: int
    """Records read from the system of record (the newest ``limit``)."""
    landed: int
    """Of those, put into the cache (the others were cached already, or a write, another
    fill or a delete came first)."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` found."""

    checked: int
    """Keys of the system of record that were compared."""
    stale: list[Key] = field(default_factory=list)
    """Cached with another revision than the system of record holds (a revision names one
    write: the same revision is the same value, whatever JSON normalization SQL applied)."""
    extra: list[Key] = field(default_factory=list)
    """Cached, but absent from the system of record (only found if the cache can scan)."""
    missing: int = 0
    """In the system of record but not cached: normal for a cache."""
    repaired: bool = False
    """Whether stale and extra keys were invalidated."""
