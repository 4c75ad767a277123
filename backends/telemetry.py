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

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from opentelemetry import context, metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from backends.base import Backend
from backends.cache_base import VersionedCache

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from types import TracebackType

    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Tracer, TracerProvider

    from backends.base import Change, Entry, Snapshot
    from backends.cache_base import CacheLookup
    from backends.reports import Stats, VerifyReport, WarmReport
    from kvstore.keys import Fence, Key

T = TypeVar("T")

SCOPE: Final = "kvstore"
DURATION: Final = "db.client.operation.duration"


class Instruments:
    """The tracer and the duration histogram every traced wrapper of one database shares."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """``None`` providers are OpenTelemetry's global ones (whatever the application set,
        or the API's no-ops)."""
        self.tracer: Tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        self.meter: Meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self.duration: Histogram = self.meter.create_histogram(
            DURATION, unit="s", description="Duration of kvstore operations, per tier."
        )
        self._attributes: dict[tuple[str, str, str, str | None], dict[str, str]] = {}

    def operation(self, system: str, tier: str, name: str, namespace: str | None) -> _Operation:
        """A span and a duration measurement around one operation (``with``)."""
        key = (system, tier, name, namespace)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = {"db.system.name": system, "db.operation.name": name, "kvstore.tier": tier}
            if namespace is not None:
                attributes["db.collection.name"] = namespace
            if len(self._attributes) >= _ATTRIBUTE_SETS:
                self._attributes.clear()
            self._attributes[key] = attributes
        span_name = name if namespace is None else f"{name} {namespace}"
        return _Operation(self, span_name, attributes)


_ATTRIBUTE_SETS: Final = 4096
"""Attribute dicts kept for reuse (one per system, tier, operation and namespace)."""


class _Operation:
    """One operation's span (current while it runs) and duration measurement. A class, not
    a generator-based context manager: it wraps every call of every tier."""

    __slots__ = ("_attributes", "_instruments", "_name", "_span", "_start", "_token")

    def __init__(self, instruments: Instruments, name: str, attributes: dict[str, str]) -> None:
        self._instruments = instruments
        self._name = name
        self._attributes = attributes

    def __enter__(self) -> None:
        self._start = time.perf_counter()
        span = self._instruments.tracer.start_span(
            self._name, kind=SpanKind.CLIENT, attributes=self._attributes
        )
        self._span = span
        # a span that records nothing (no SDK) need not become current: its children would
        # record nothing either
        self._token = (
            context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span, attributes = self._span, self._attributes
        if self._token is not None:
            context.detach(self._token)
        if exc_type is not None:
            # the class name only: an exception's message may name an id
            error = exc_type.__name__
            attributes = {**attributes, "error.type": error}
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        self._instruments.duration.record(time.perf_counter() - self._start, attributes)


def _namespace(keys: Sequence[Key]) -> str | None:
    """The namespace of ``keys`` if they share one (a batch of one collection)."""
    first = keys[0].namespace if keys else None
    return first if all(key.namespace == first for key in keys) else None


class TracedBackend(Backend):
    """``inner`` with a span and a duration measurement around each operation."""

    kind: ClassVar[str] = "traced"

    def __init__(self, inner: Backend, instruments: Instruments, *, tier: str = "store") -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.clock = inner.clock
        self._instruments = instruments
        self._tier = tier
        self._system = inner.system

    def __repr__(self) -> str:
        return f"TracedBackend({self.inner!r})"

    async def _traced(self, name: str, namespace: str | None, work: Awaitable[T]) -> T:
        with self._instruments.operation(self._system, self._tier, name, namespace):
            return await work

    async def initialize(self) -> None:
        await self.inner.initialize()

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: Key) -> Entry | None:
        return await self._traced("get", key.namespace, self.inner.get(key))

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        return await self._traced("get_many", _namespace(keys), self.inner.get_many(keys))

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
        fence: Fence | None = None,
    ) -> Entry:
        work = self.inner.put(key, value, expected_version=expected_version, ttl=ttl, fence=fence)
        return await self._traced("put", key.namespace, work)

    async def delete(
        self, key: Key, *, expected_version: int | None = None, fence: Fence | None = None
    ) -> int:
        work = self.inner.delete(key, expected_version=expected_version, fence=fence)
        return await self._traced("delete", key.namespace, work)

    async def lock_ticket(self, owner: str, name: str, *, hold: float) -> int:
        return await self._traced(
            "lock_ticket", None, self.inner.lock_ticket(owner, name, hold=hold)
        )

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        work = self.inner.lock_turn(owner, name, ticket, hold=hold, lease=lease)
        return await self._traced("lock_turn", None, work)

    async def lock_release(self, owner: str, name: str, ticket: int) -> None:
        await self._traced("lock_release", None, self.inner.lock_release(owner, name, ticket))

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = 100,
    ) -> builtins.list[tuple[Key, Entry]]:
        work = self.inner.list(namespace, prefix, after=after, limit=limit)
        return await self._traced("list", namespace, work)

    async def delete_owner(self, owner: str) -> int:
        return await self._traced("delete_owner", None, self.inner.delete_owner(owner))

    # -- the rest: delegated untraced (bulk, upkeep and the change feed) ------------------

    def stats(self) -> Stats:
        return self.inner.stats()

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = 100
    ) -> builtins.list[tuple[Key, Entry]]:
        return await self.inner.recent(namespace, owner=owner, limit=limit)

    async def warm(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        limit: int = 1000,
        progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        return await self.inner.warm(namespace, owner=owner, limit=limit, progress=progress)

    async def verify(
        self,
        namespace: str,
        *,
        owner: str | None = None,
        repair: bool = False,
        limit: int = 10_000,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        return await self.inner.verify(
            namespace, owner=owner, repair=repair, limit=limit, progress=progress
        )

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        return self.inner.scan(namespace=namespace, owner=owner, batch_size=batch_size)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        return await self.inner.restore(items)

    async def read_changes(
        self, after: int, limit: int
    ) -> tuple[builtins.list[Change], Snapshot | None]:
        return await self.inner.read_changes(after, limit)

    async def head(self) -> tuple[int, Snapshot | None]:
        return await self.inner.head()

    async def read_generation(self, cache: str) -> tuple[int, str] | None:
        return await self.inner.read_generation(cache)

    async def advance_generation(
        self, cache: str, incarnation: str, *, current: int | None, to: int
    ) -> bool:
        return await self.inner.advance_generation(cache, incarnation, current=current, to=to)


class TracedCache(VersionedCache):
    """A cache tier with a span and a duration measurement around each request-path call."""

    def __init__(self, inner: VersionedCache, instruments: Instruments) -> None:
        self.inner = inner
        self.system = inner.system
        self.lists_keys = inner.lists_keys
        self._instruments = instruments

    def __repr__(self) -> str:
        return f"TracedCache({self.inner!r})"

    async def _traced(self, name: str, namespace: str | None, work: Awaitable[T]) -> T:
        with self._instruments.operation(self.system, "cache", name, namespace):
            return await work

    async def close(self) -> None:
        await self.inner.close()

    async def cached_keys(self, namespace: str, owner: str | None = None) -> list[Key]:
        return await self.inner.cached_keys(namespace, owner)

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> list[CacheLookup]:
        work = self.inner.lookup(keys, lease_ttl=lease_ttl)
        return await self._traced("lookup", _namespace(keys), work)

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        namespace = _namespace([key for key, _, _ in items])
        return await self._traced("fill", namespace, self.inner.fill(items, ttl=ttl))

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        return await self._traced("write", key.namespace, self.inner.write(key, entry, ttl=ttl))

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        namespace = _namespace([key for key, _ in items])
        await self._traced("tombstones", namespace, self.inner.tombstones(items, ttl=ttl))

    async def invalidate(self, keys: Sequence[Key]) -> None:
        await self._traced("invalidate", _namespace(keys), self.inner.invalidate(keys))

    async def invalidate_owner(self, owner: str) -> None:
        await self._traced("invalidate_owner", None, self.inner.invalidate_owner(owner))

    async def ping(self) -> None:
        await self._traced("ping", None, self.inner.ping())

    async def incarnation(self) -> str:
        return await self.inner.incarnation()

    def use_generation(self, incarnation: str, generation: int) -> None:
        self.inner.use_generation(incarnation, generation)

    @property
    def seen_incarnation(self) -> str | None:
        return self.inner.seen_incarnation

    async def claim_generation(self) -> bool:
        return await self.inner.claim_generation()


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

        for field, description in TIER_COUNTERS.items():
            meter.create_observable_counter(
                f"kvstore.cache.{field}",
                callbacks=[observe(_tier_field(field), sum)],
                description=description,
            )
        for field, description in TIER_GAUGES.items():
            meter.create_observable_gauge(
                f"kvstore.cache.{field}",
                callbacks=[observe(_tier_field(field), max if field == "generation" else sum)],
                description=description,
            )
        meter.create_observable_gauge(
            "kvstore.cache.breaker.open",
            callbacks=[observe(_breaker_open, max)],
            description="1 while a circuit breaker keeps reads off the cache, else 0.",
        )
        for field, description in SQL_COUNTERS.items():
            meter.create_observable_counter(
                f"kvstore.sql.{field}",
                callbacks=[observe(_sql_field(field), sum)],
                description=description,
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


def _tier_field(field: str) -> Callable[[Stats], float | None]:
    def read(stats: Stats) -> float | None:
        return None if stats.tier is None else float(getattr(stats.tier, field))

    return read


def _sql_field(field: str) -> Callable[[Stats], float | None]:
    def read(stats: Stats) -> float | None:
        return None if stats.sql is None else float(getattr(stats.sql, field))

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
}
