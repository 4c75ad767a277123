"""Waiting in tests for what happens in the background (the change feed, repairs)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from backends.tiered import TieredBackend

DEADLINE: Final = 10.0
"""Seconds a test waits for something that happens in the background (a loaded machine
included) before it fails."""


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait until ``check()`` holds (polling), failing after :data:`DEADLINE` seconds."""
    async with asyncio.timeout(DEADLINE):
        while True:
            if await check():
                return
            await asyncio.sleep(0.01)


async def feed_caught_up(backend: TieredBackend) -> None:
    """Wait until ``backend``'s change feed has applied everything committed so far."""
    follower = backend.feed
    assert follower is not None
    head, _ = await backend.record.head()

    async def caught_up() -> bool:
        return follower.cursor >= head and not backend.tier_stats().feed_backlog

    await eventually(caught_up)
