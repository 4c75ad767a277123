"""The tracer, the duration histogram and the span of one operation (see the package)."""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

from opentelemetry import context, metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Tracer, TracerProvider

SCOPE: Final = "kvstore"
_API_TRACE: Final = "opentelemetry.trace"
_API_METRICS: Final = "opentelemetry.metrics"
"""Where the API's own providers live (the SDK's are under ``opentelemetry.sdk``)."""
_NOTHING: Final = contextlib.nullcontext()
RECHECK: Final = 1.0
"""Seconds between looks for a global SDK set after the store was built: operations start
being recorded at most this long after the application sets its providers."""
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
        self._live = tracer_provider is not None or meter_provider is not None
        """Whether an SDK may be listening: providers were given, or a global one was set
        (once set, a global provider stays)."""
        self._recheck_at = 0.0

    def idle(self) -> bool:
        """Whether nothing would be recorded: no providers given, and the global ones are
        still the API's own (no SDK set yet). Looked up at most every :data:`RECHECK`
        seconds (a lookup reads the environment: ~3 µs) until an SDK is found."""
        if self._live:
            return False
        now = time.monotonic()
        if now < self._recheck_at:
            return True
        if type(trace.get_tracer_provider()).__module__.startswith(_API_TRACE) and type(
            metrics.get_meter_provider()
        ).__module__.startswith(_API_METRICS):
            self._recheck_at = now + RECHECK
            return True
        self._live = True
        return False

    def operation(
        self, system: str, tier: str, name: str, namespace: str | None
    ) -> _Operation | contextlib.nullcontext[None]:
        """A span and a duration measurement around one operation (``with``); nothing
        while no SDK is set (:meth:`idle`)."""
        if self.idle():
            return _NOTHING
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

    def not_recording(self) -> bool:
        """Whether the current span is not being recorded (no SDK, or sampled out)."""
        return self.idle() or not trace.get_current_span().is_recording()


_ATTRIBUTE_SETS: Final = 4096
"""Attribute dicts kept for reuse (one per system, tier, operation and namespace)."""

_SAMPLED_OUT: ContextVar[bool] = ContextVar("kvstore_sampled_out", default=False)
"""Whether the running code is inside an operation whose span is sampled out: its tiers'
spans would be sampled out with it (the sampler decides by the parent), so none is made."""


class _Operation:
    """One operation's span (current while it runs) and duration measurement. A class, not
    a generator-based context manager: it wraps every call of every tier."""

    __slots__ = (
        "_attributes",
        "_instruments",
        "_name",
        "_sampled_out",
        "_span",
        "_start",
        "_token",
    )

    def __init__(self, instruments: Instruments, name: str, attributes: dict[str, str]) -> None:
        self._instruments = instruments
        self._name = name
        self._attributes = attributes

    def __enter__(self) -> None:
        self._start = time.perf_counter()
        self._token = self._sampled_out = None
        if _SAMPLED_OUT.get():
            self._span = None  # a tier of a sampled-out operation: measured, not traced
            return
        span = self._span = self._instruments.tracer.start_span(
            self._name, kind=SpanKind.CLIENT, attributes=self._attributes
        )
        # the span becomes current so the tiers' spans are its children, sampled with it;
        # a sampled-out span tells the tiers to make none (they would be sampled out too,
        # at ~5 µs each in the SDK). Only the API's no-op span (no SDK: an invalid context)
        # is not worth it.
        if span.get_span_context().is_valid:
            self._token = context.attach(trace.set_span_in_context(span))
            if not span.is_recording():
                self._sampled_out = _SAMPLED_OUT.set(True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span, attributes = self._span, self._attributes
        if self._sampled_out is not None:
            _SAMPLED_OUT.reset(self._sampled_out)
        if self._token is not None:
            context.detach(self._token)
        if exc_type is not None:
            # the class name only: an exception's message may name an id
            error = exc_type.__name__
            attributes = {**attributes, "error.type": error}
            if span is not None:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR, error))
        if span is not None:
            span.end()
        self._instruments.duration.record(time.perf_counter() - self._start, attributes)
