"""The circuit breaker on a manual clock: when it opens, probes and closes, and how long it
was open."""

from __future__ import annotations

import logging

from backends.breaker import BreakerState, CircuitBreaker
from kvstore.clock import ManualClock

LOGGER = logging.getLogger("tests.breaker")


def breaker(clock: ManualClock) -> CircuitBreaker:
    return CircuitBreaker(3, 2.0, logger=LOGGER, clock=clock)


def test_failures_in_a_row_open_it_and_a_probe_after_reset_after_closes_it() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.failed(OSError())
    b.failed(OSError())
    b.succeeded()  # the run of failures ends
    for _ in range(3):
        b.failed(OSError())
    assert b.state is BreakerState.OPEN
    clock.advance(1.5)
    assert not b.probe_due()
    clock.advance(0.5)
    assert b.probe_due()
    b.start_probe()
    assert not b.probe_due()
    b.finish_probe(healthy=False)
    assert b.state is BreakerState.OPEN
    clock.advance(2.0)
    b.start_probe()
    b.finish_probe(healthy=True)
    assert b.closed
    assert b.open_seconds() == 4.0


def test_a_call_that_goes_through_while_open_makes_the_probe_due_at_once() -> None:
    clock = ManualClock()
    b = breaker(clock)
    for _ in range(3):
        b.failed(OSError())
    clock.advance(0.25)
    assert not b.probe_due()
    b.succeeded()
    assert b.probe_due()
    assert b.open_seconds() == 0.25  # still open until the probe closes it


def test_open_seconds_add_up_over_outages() -> None:
    clock = ManualClock()
    b = breaker(clock)
    b.open_at_start()
    clock.advance(2.0)
    b.start_probe()
    b.finish_probe(healthy=True)
    clock.advance(10.0)  # closed: not counted
    for _ in range(3):
        b.failed(OSError())
    clock.advance(3.0)
    assert b.open_seconds() == 5.0
