"""The tiered store's read-your-writes check under concurrency: writers on a few keys, many
readers, and a task flushing the cache every 50 ms. No read that starts after a save was
acknowledged may return an older version; afterwards the cache agrees with the record."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import TYPE_CHECKING

from backends.tiered import TieredBackend
from kvstore import StateRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from kvstore.store import Store


async def run_stress(
    db: Store,
    flush: Callable[[], Awaitable[None]],
    *,
    seconds: float = 3.0,
    keys: int = 3,
    writers: int = 4,
    readers: int = 24,
) -> int:
    """Run the workload for ``seconds``; fail on any read of the past. Returns reads done."""
    backend = db.backend
    assert isinstance(backend, TieredBackend)
    user = f"stress-{uuid.uuid4().hex[:10]}"
    sessions = [f"s{n}" for n in range(keys)]
    acked = dict.fromkeys(sessions, 0)
    past: list[str] = []
    reads = 0
    stop = asyncio.Event()
    rng = random.Random(7)

    async def writer(number: int) -> None:
        count = 0
        while not stop.is_set():
            session = rng.choice(sessions)
            count += 1
            record = StateRecord(
                user_id=user, session_id=session, state="RUN", data={"w": number, "n": count}
            )
            saved = await db.save_state(record)
            acked[session] = max(acked[session], saved.version)
            await asyncio.sleep(0)  # a memory backend never yields by itself

    async def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            session = rng.choice(sessions)
            floor = acked[session]
            got = await db.get_state(user, session)
            reads += 1
            version = 0 if got is None else got.version
            if version < floor:
                past.append(f"{session}: read v{version} after v{floor} was acknowledged")
            await asyncio.sleep(0)

    async def flusher() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.05)
            await flush()

    tasks = [asyncio.create_task(writer(n)) for n in range(writers)]
    tasks += [asyncio.create_task(reader()) for _ in range(readers)]
    tasks.append(asyncio.create_task(flusher()))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    assert past == [], past[:5]
    assert reads > 0
    assert all(version > 0 for version in acked.values())
    for session in sessions:
        key = db.states.key(user, session)
        through_store = await backend.get(key)
        in_record = await backend.record.get(key)
        assert through_store is not None
        assert in_record is not None
        assert through_store.revision == in_record.revision
    assert (await backend.verify("state", owner=user)).stale == []
    await db.delete_user(user)
    return reads
