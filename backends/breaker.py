"""A circuit breaker: stop calling a failing dependency, probe it now and then.

``threshold`` consecutive failures open the breaker (one warning in the log); while open,
callers skip the dependency. After ``reset_after`` seconds one caller probes; a healthy
probe closes the breaker (one info line), a failed one keeps it open for another period.
A call that goes through while the breaker is open (a caller that may not skip the
dependency) makes the probe due at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    import logging

    from kvstore.clock import Clock


class BreakerState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    """The dependency is used."""
    OPEN = "open"
    """The dependency is skipped until a probe succeeds."""
    HALF_OPEN = "half_open"
    """One caller is probing."""


class CircuitBreaker:
    """Consecutive-failure breaker with a timed probe. Not thread-safe: one event loop."""

    def __init__(
        self,
        threshold: int,
        reset_after: float,
        *,
        logger: logging.Logger,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if threshold < 1 or reset_after < 0:
            raise ConfigurationError("breaker_threshold must be >= 1, breaker_reset_after >= 0")
        self.threshold = threshold
        self.reset_after = reset_after
        self.state = BreakerState.CLOSED
        self._logger = logger
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._out_since = 0.0
        self._out_total = 0.0

    @property
    def closed(self) -> bool:
        """Whether callers use the dependency."""
        return self.state is BreakerState.CLOSED

    def open_seconds(self) -> float:
        """Seconds spent open or half-open since the breaker was built (the time callers
        skipped the dependency), the current stretch included."""
        if self.closed:
            return self._out_total
        return self._out_total + self._clock.monotonic() - self._out_since

    def probe_due(self) -> bool:
        """Whether the breaker is open and has waited long enough for a probe."""
        return (
            self.state is BreakerState.OPEN
            and self._clock.monotonic() - self._opened_at >= self.reset_after
        )

    def succeeded(self) -> None:
        """A call went through: the run of failures ends, and an open breaker probes at the
        next chance instead of waiting out ``reset_after``."""
        self._failures = 0
        if self.state is BreakerState.OPEN:
            self._opened_at = float("-inf")

    def failed(self, exc: BaseException) -> None:
        """A call failed; the ``threshold``-th failure in a row opens the breaker."""
        self._failures += 1
        if self.closed and self._failures >= self.threshold:
            self._open()
            self._logger.warning(
                "cache failed %d times in a row (last: %s); circuit breaker open, serving "
                "from the system of record for %.1f s before probing",
                self._failures,
                type(exc).__name__,
                self.reset_after,
            )

    def open_at_start(self) -> None:
        """The dependency did not answer at start-up: begin open."""
        self._open()
        self._logger.warning(
            "cache did not answer at start-up; circuit breaker open, serving from the "
            "system of record for %.1f s before probing",
            self.reset_after,
        )

    def start_probe(self) -> None:
        """One caller probes now; others keep skipping the dependency."""
        self.state = BreakerState.HALF_OPEN

    def finish_probe(self, healthy: bool) -> None:
        """Close after a healthy probe, else stay open for another ``reset_after``."""
        if healthy:
            self.state = BreakerState.CLOSED
            self._failures = 0
            self._out_total += self._clock.monotonic() - self._out_since
            self._logger.info("cache answers again; circuit breaker closed")
        else:
            self._open()

    def _open(self) -> None:
        if self.closed:
            self._out_since = self._clock.monotonic()
        self.state = BreakerState.OPEN
        self._opened_at = self._clock.monotonic()
