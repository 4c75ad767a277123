"""The tier's and the SQL store's counters as observable instruments, read from
``stats()`` when a reader collects (never on the request path)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable

    from opentelemetry.metrics import Meter

    from backends.reports import Stats
    from backends.telemetry.instruments import Instruments


class _Observed:
    """The databases one meter observes: observable instruments are made once per meter
    (OpenTelemetry keeps the first of a name), and their callbacks add up every live
    database of the process (a database that is dropped stops counting)."""

    def __init__(self, meter: Meter) -> None:
        self.sources: list[weakref.WeakMethod[Callable[[], Stats]]] = []

        def observe(
            read: Callable[[Stats], float | None], combine: Callable[[list[float]], float]
        ) -> Callable[[Any], builtins.list[metrics.Observation]]:
            def callback(_options: Any) -> builtins.list[metrics.Observation]:
                values = [value for value in map(read, self.live()) if value is not None]
                return [metrics.Observation(combine(values))] if values else []

            return callback

        parts = (
            ("cache", "tier", TIER_COUNTERS, TIER_GAUGES),
            ("sql", "sql", SQL_COUNTERS, SQL_GAUGES),
        )
        for prefix, part, counters, gauges in parts:
            for field, description in counters.items():
                meter.create_observable_counter(
                    f"kvstore.{prefix}.{field}",
                    callbacks=[observe(_field(part, field), sum)],
                    description=description,
                )
            for field, description in gauges.items():
                combine = max if field == "generation" else sum  # one generation, not a sum
                meter.create_observable_gauge(
                    f"kvstore.{prefix}.{field}",
                    callbacks=[observe(_field(part, field), combine)],
                    description=description,
                )
        meter.create_observable_gauge(
            "kvstore.cache.breaker.open",
            callbacks=[observe(_breaker_open, max)],
            description="1 while a circuit breaker keeps reads off the cache, else 0.",
        )

    def live(self) -> builtins.list[Stats]:
        alive = [(source, source()) for source in self.sources]
        self.sources = [source for source, stats in alive if stats is not None]
        return [stats() for _, stats in alive if stats is not None]


_OBSERVED: weakref.WeakKeyDictionary[Meter, _Observed] = weakref.WeakKeyDictionary()


def observe_stats(instruments: Instruments, stats: Callable[[], Stats]) -> None:
    """Observe ``stats`` (a bound method) through the meter's observable instruments, read
    when a reader collects, never on the request path: the tier's counters under
    ``kvstore.cache.*``, the SQL store's under ``kvstore.sql.*``."""
    meter = instruments.meter
    observed = _OBSERVED.get(meter)
    if observed is None:
        observed = _OBSERVED[meter] = _Observed(meter)
    observed.sources.append(weakref.WeakMethod(stats))


def _field(part: str, field: str) -> Callable[[Stats], float | None]:
    """Read ``stats.<part>.<field>`` (``None`` where the store has no such part)."""

    def read(stats: Stats) -> float | None:
        counters = getattr(stats, part)
        return None if counters is None else float(getattr(counters, field))

    return read


def _breaker_open(stats: Stats) -> float | None:
    return None if stats.tier is None else float(stats.tier.breaker.value != "closed")


TIER_COUNTERS: Final = {
    "reads": "Keys asked for by reads, however they were answered.",
    "hits": "Keys answered by the cache (near cache included).",
    "misses": "Keys the cache did not hold (read from the system of record).",
    "bypassed": "Keys read without the cache (breaker open, cache lost, key dirty).",
    "fills": "Entries put into the cache after a miss.",
    "fill_dropped": "Fills the cache refused (lease lost, or older than what it held).",
    "cache_errors": "Cache calls that failed or timed out.",
    "busy_timeouts": "Cache calls that timed out while the cache answered others.",
    "generation_changes": "New cache generations begun by this process.",
    "feed_changes": "Changes read from the change feed and applied to the cache.",
    "feed_errors": "Reads of the change feed that failed (retried).",
    "near_hits": "Hits answered by the near cache in the process.",
}
TIER_GAUGES: Final = {
    "dirty": "Keys and owners waiting for their cache entries to be repaired.",
    "feed_backlog": "Changes read from the feed and not yet applied to the cache.",
    "breaker_open_seconds": "Seconds the breaker has been open in all.",
    "near_entries": "Entries the near cache holds.",
    "generation": "The cache generation in use.",
}
SQL_COUNTERS: Final = {
    "saves": "Saves sent to the database.",
    "save_statements": "Statements that carried them (fewer with group commit).",
    "connection_waits": "Statements that found every pooled connection taken and waited.",
    "connection_wait_seconds": "Time those waits took in all.",
    "replica_reads": "Listings, exports and counts the replica answered.",
    "replica_fallbacks": "Replica reads sent to the primary: the replica lagged.",
    "replica_errors": "Replica reads sent to the primary: the replica failed.",
}
SQL_GAUGES: Final = {
    "connections_in_use": "Statements running on pooled connections now.",
}
