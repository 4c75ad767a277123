"""The store's one clock: wall time for people, monotonic time for deadlines.

Every backend reads time through a :class:`Clock` it is given (``clock=`` option of
:func:`kvstore.create_database`; :data:`SYSTEM_CLOCK` by default). Wall time stamps
``created_at``/``updated_at`` and decides expiry; it never orders changes (the system of
record's revisions do). Monotonic time measures leases, breaker timers and lateness.

Tests skew a process's wall clock with :class:`SkewedClock` and drive time by hand with
:class:`ManualClock`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Where a store reads the time."""

    def now(self) -> datetime:
        """The wall time: an aware UTC datetime."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...


class SystemClock:
    """The host's clocks."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()


@dataclass(frozen=True, slots=True)
class SkewedClock:
    """The host's clocks with the wall time off by ``offset`` seconds (a host whose clock
    runs ahead, or behind when negative). Monotonic time is the host's."""

    offset: float

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (:meth:`advance`); both times move together."""

    __slots__ = ("_elapsed", "_start")

    def __init__(self, start: datetime | None = None) -> None:
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        return self._elapsed

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._elapsed += seconds
