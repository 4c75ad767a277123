"""Shared benchmark helpers: a realistic session record and a side-by-side timer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore import StateRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def session_record(user_id: str = "user-1", session_id: str = "session-1") -> StateRecord:
    """A ~1.2 KB session state record with nested data, like the coach service keeps."""
    return StateRecord(
        user_id=user_id,
        session_id=session_id,
        state="IDENTITY_BRAINSTORMING",
        data={
            "turn": 17,
            "goal": "Feel confident speaking up in meetings at work",
            "scores": {"confidence": 0.62, "clarity": 0.71, "energy": 0.55},
            "candidates": [
                {"id": f"identity-{i}", "name": f"Candidate identity {i}", "votes": i * 3}
                for i in range(8)
            ],
            "last_messages": [
                {"role": "coach" if i % 2 else "user", "text": "x" * 60} for i in range(6)
            ],
            "flags": {"onboarded": True, "paused": False, "locale": "en-GB"},
        },
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """Operations per second of one contender."""

    name: str
    ops_per_second: float


def time_sync(name: str, operation: Callable[[], object], *, seconds: float = 1.0) -> Measurement:
    """Run ``operation`` repeatedly for about ``seconds``; report operations per second."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for _ in range(100):
            operation()
        count += 100
    return Measurement(name, count / (now - start))


async def time_async(
    name: str,
    operation: Callable[[], Awaitable[object]],
    *,
    seconds: float = 1.0,
    tasks: int = 1,
) -> Measurement:
    """Run ``operation`` in ``tasks`` concurrent loops for about ``seconds``; ops per second."""
    count = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await operation()
            count += 1

    await asyncio.gather(*(loop() for _ in range(tasks)))
    return Measurement(name, count / (time.perf_counter() - start))


def print_ratios(title: str, baseline: Measurement, others: list[Measurement]) -> None:
    """A markdown table of ops/s and ratio to ``baseline``."""
    print(f"\n### {title}\n")
    print("| contender | ops/s | ratio |")
    print("|---|---:|---:|")
    for measurement in [baseline, *others]:
        ratio = measurement.ops_per_second / baseline.ops_per_second
        print(f"| {measurement.name} | {measurement.ops_per_second:,.0f} | {ratio:.2f}x |")
