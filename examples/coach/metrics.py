"""The coach service's ``/metrics`` for Prometheus: kvstore's OpenTelemetry metrics
(``create_database(..., meter_provider=...)``) through OpenTelemetry's Prometheus reader.

On with ``KVSTORE_COACH_METRICS=1``. Each uvicorn worker serves its own process's counters
(Prometheus scrapes one worker per request behind one port: sum them with a scrape per
worker, or run one worker per port, as with any multi-process Python service).
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from starlette.types import ASGIApp


def enabled() -> bool:
    """Whether the environment asks for ``/metrics``."""
    return os.environ.get("KVSTORE_COACH_METRICS") == "1"


@functools.cache
def meter_provider() -> MeterProvider:
    """The process's meter provider, read by Prometheus (one per process: the reader
    registers with prometheus_client's global registry)."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    return MeterProvider(metric_readers=[PrometheusMetricReader()])


def endpoint() -> ASGIApp:
    """The ``/metrics`` ASGI app: Prometheus's text format of the registry."""
    from prometheus_client import make_asgi_app

    app: ASGIApp = make_asgi_app()
    return app
