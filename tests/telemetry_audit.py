"""An OpenTelemetry SDK of the tests' own, and the audit that no user data reaches it.

:class:`Telemetry` keeps spans in memory and reads metrics on demand. :func:`findings` is
the no-user-data check: every span name, attribute, status, event and metric attribute must
come from kvstore's closed vocabulary: the operation names of the backend contract, the
systems and tiers, exception class names, and the namespace (it names a collection, as a
table name does); a span is named by its operation and namespace. Whatever else shows up
(an id, a value, a URL, a password) is a finding. With ``KVSTORE_TEST_TELEMETRY_AUDIT=1``
every database the ``make_db`` fixture builds is traced into an SDK of the test's own, and
the test fails on a finding (``.ci/run`` runs the conformance suite that way).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backends.base import Backend
from backends.cache_base import VersionedCache
from kvstore.errors import InvalidKeyError
from kvstore.keys import check_namespace

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

AUDIT: Final = os.environ.get("KVSTORE_TEST_TELEMETRY_AUDIT") == "1"
"""Whether this run traces every fixture-built database and audits what it exports."""

OPERATIONS: Final = frozenset(
    name
    for contract in (Backend, VersionedCache)
    for name in vars(contract)
    if not name.startswith("_") and callable(getattr(contract, name))
)
SYSTEMS: Final = frozenset({"memory", "sqlite", "postgresql", "redis", "tiered", "cache"})
TIERS: Final = frozenset({"store", "record", "cache"})
_EXCEPTION_NAME: Final = re.compile(r"[A-Z][A-Za-z0-9]*(Error|Exception|Exit)|CancelledError")


def _is_namespace(value: object) -> bool:
    try:
        check_namespace(value)
    except InvalidKeyError:
        return False
    return True


class Telemetry:
    """An SDK of the test's own: spans kept in memory, metrics read on demand."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def options(self) -> dict[str, Any]:
        """``create_database`` keywords that export to this SDK."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.spans.get_finished_spans()

    def points(self) -> Iterator[tuple[str, dict[str, Any], Any]]:
        """Every data point now: (metric name, attributes, the point)."""
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        yield metric.name, dict(point.attributes or {}), point

    def value(self, name: str) -> float:
        values = [p.value for n, _, p in self.points() if n == name]
        assert values, f"no {name} recorded"
        return float(values[0])

    def durations(self) -> list[dict[str, Any]]:
        """The attributes of every ``db.client.operation.duration`` series."""
        return [a for n, a, _ in self.points() if n == "db.client.operation.duration"]


def _attribute_finding(key: str, value: Any) -> str | None:
    """Why ``key: value`` is outside the vocabulary, or ``None``."""
    allowed: dict[str, Callable[[Any], object]] = {
        "db.system.name": lambda v: v in SYSTEMS,
        "db.operation.name": lambda v: v in OPERATIONS,
        "kvstore.tier": lambda v: v in TIERS,
        "db.collection.name": _is_namespace,
        "error.type": lambda v: isinstance(v, str) and _EXCEPTION_NAME.fullmatch(v),
    }
    check = allowed.get(key)
    if check is None:
        return f"unknown attribute {key!r}"
    return None if check(value) else f"{key}={value!r} is outside the vocabulary"


def _span_name_allowed(name: str, attributes: dict[str, Any]) -> bool:
    """kvstore names a span ``"<operation>"`` or ``"<operation> <db.collection.name>"``."""
    namespace = attributes.get("db.collection.name")
    return (
        name in OPERATIONS
        if namespace is None
        else name == f"{attributes.get('db.operation.name')} {namespace}"
    )


def findings(telemetry: Telemetry) -> list[str]:
    """Everything exported that is not kvstore's vocabulary (see the module docstring)."""
    found = []
    for span in telemetry.finished():
        where = f"span {span.name!r}"
        if not _span_name_allowed(span.name, dict(span.attributes or {})):
            found.append(f"{where}: the name is outside the vocabulary")
        for key, value in (span.attributes or {}).items():
            if (why := _attribute_finding(key, value)) is not None:
                found.append(f"{where}: {why}")
        description = span.status.description
        if description is not None and not _EXCEPTION_NAME.fullmatch(description):
            found.append(f"{where}: status {description!r} is not an exception class name")
        found += [f"{where}: event {event.name!r}" for event in span.events]
    for name, attributes, _ in telemetry.points():
        for key, value in attributes.items():
            if (why := _attribute_finding(key, value)) is not None:
                found.append(f"metric {name}: {why}")
    return found
