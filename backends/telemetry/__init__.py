"""OpenTelemetry spans and metrics around any backend and cache, without a word of user data.

Imported only when a database is made with ``telemetry=True`` (or a tracer or meter
provider): without it nothing of OpenTelemetry is imported and nothing costs. It needs the
``opentelemetry-api`` package (the ``otel`` extra); an SDK, if the application configured
one, records what the API is given.

:class:`TracedBackend` wraps a backend, :class:`TracedCache` a cache tier: every operation
becomes a ``CLIENT`` span named ``"{operation} {namespace}"`` and one measurement of the
``db.client.operation.duration`` histogram (seconds), following OpenTelemetry's semantic
conventions for databases: ``db.system.name`` (``postgresql``, ``sqlite``, ``redis``,
``memory``, ``tiered``), ``db.operation.name``, ``db.collection.name`` (the kvstore
namespace), ``error.type`` (the exception's class name) on failure, and kvstore's own
``kvstore.tier`` (``store``: the call the application made; ``record`` and ``cache``: the
tiered store's calls to its tiers, as child spans). Attributes never carry ids, values,
URLs or exception messages.
"""

from backends.telemetry.counters import (
    SQL_COUNTERS,
    SQL_GAUGES,
    TIER_COUNTERS,
    TIER_GAUGES,
    observe_stats,
)
from backends.telemetry.instruments import DURATION, Instruments
from backends.telemetry.wrappers import TracedBackend, TracedCache

__all__ = [
    "DURATION",
    "SQL_COUNTERS",
    "SQL_GAUGES",
    "TIER_COUNTERS",
    "TIER_GAUGES",
    "Instruments",
    "TracedBackend",
    "TracedCache",
    "observe_stats",
]
