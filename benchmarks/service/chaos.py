"""Faults injected while the conversations run, one after another in a cycle."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from benchmarks.service.servers import Postgres, Redis, Service


@dataclass
class Chaos:
    """Kills and freezes workers, restarts Redis (empty, and from an old snapshot), freezes
    it, restarts PostgreSQL; ``events`` counts what happened."""

    service: Service
    redis: Redis
    postgres: Postgres
    freeze: float
    """Seconds a worker stays frozen: past its locks' lease and the client's timeout, so
    its sessions are taken over while it sleeps."""
    events: Counter[str] = field(default_factory=Counter)

    def _victim(self) -> int | None:
        pids = self.service.worker_pids()
        return random.choice(pids) if pids else None

    async def kill_worker(self) -> None:
        """SIGKILL a worker mid-request (it is serving under load); uvicorn starts another.
        The sessions it held stay locked until their lease ends."""
        pid = self._victim()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)

    async def freeze_worker(self) -> None:
        """SIGSTOP a worker past its locks' lease (a long GC pause): other workers take its
        sessions over, and its writes are refused by the fence when it goes on."""
        pid = self._victim()
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.freeze)
        finally:
            os.kill(pid, signal.SIGCONT)

    async def redis_empty(self) -> None:
        await asyncio.to_thread(self.redis.restart, from_snapshot=False)

    async def redis_snapshot(self) -> None:
        await asyncio.to_thread(self.redis.restart, from_snapshot=True)

    async def redis_frozen(self) -> None:
        await self.redis.freeze(2.0)

    async def postgres_restart(self) -> None:
        await self.postgres.restart()

    async def run(self, deadline: float, every: float) -> None:
        """Take the snapshot, then one fault every ``every`` seconds until 3 s before
        ``deadline``."""
        cycle: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("worker killed (SIGKILL)", self.kill_worker),
            ("redis restarted from an old snapshot", self.redis_snapshot),
            ("postgres restarted", self.postgres_restart),
            ("redis frozen 2 s", self.redis_frozen),
            ("worker frozen past its lease", self.freeze_worker),
            ("redis restarted empty", self.redis_empty),
        ]
        await asyncio.sleep(min(every, 1.0))
        await asyncio.to_thread(self.redis.snapshot)
        turn = 0
        while time.monotonic() + 3 < deadline:
            await asyncio.sleep(every)
            name, fault = cycle[turn % len(cycle)]
            await fault()
            self.events[name] += 1
            turn += 1
