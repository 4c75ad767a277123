"""The tiered store: a versioned cache in write-through in front of a system of record.

By role: :mod:`.store` the store itself (lifecycle, writes, the counters), :mod:`.reads`
reads through the caches, :mod:`.update` a committed write's cache update, :mod:`.gate`
whether to use the cache now (the breaker's probe), :mod:`.guard` the cache's deadlines,
breaker and generations, :mod:`.repair` dirty keys and their repair, :mod:`.writes` writes
in flight, :mod:`.feed` follows the system of record's change feed and :mod:`.changes`
applies it to the cache, :mod:`.near` the near cache, :mod:`.upkeep` warms and verifies
the cache, and :mod:`.build` makes one from ``create_database`` options.
"""

from backends.reports import TieredStats, VerifyReport, WarmReport
from backends.tiered.build import build_tiered_backend
from backends.tiered.repair import REPAIR_BATCH
from backends.tiered.store import TieredBackend

__all__ = [
    "REPAIR_BATCH",
    "TieredBackend",
    "TieredStats",
    "VerifyReport",
    "WarmReport",
    "build_tiered_backend",
]
