"""The tiered store: a versioned cache in write-through in front of a system of record.

:mod:`.store` is the store itself (reads, writes, repair, generations), :mod:`.feed` follows
the system of record's change feed, :mod:`.upkeep` warms and verifies the cache, and
:mod:`.build` makes one from ``create_database`` options.
"""

from backends.tiered.build import build_tiered_backend
from backends.tiered.store import REPAIR_BATCH, TieredBackend, TieredStats
from backends.tiered.upkeep import ScannableCache, VerifyReport, WarmReport

__all__ = [
    "REPAIR_BATCH",
    "ScannableCache",
    "TieredBackend",
    "TieredStats",
    "VerifyReport",
    "WarmReport",
    "build_tiered_backend",
]
