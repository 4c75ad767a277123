"""Session locks and fences: the same behaviour on every backend (parametrized by ``db``).

Leases run on the store's clock (the server's, where there is one), so these tests wait
real time for a lease to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from backends.memory import MemoryBackend
from kvstore import (
    ConflictError,
    Database,
    Fence,
    FencedError,
    InvalidKeyError,
    InvalidRecordError,
    LockTimeoutError,
    StateRecord,
)
from kvstore.store import Store
from tests.waiting import eventually


def state(name: str, user_id: str = "u1", session_id: str = "s1") -> StateRecord:
    return StateRecord(user_id=user_id, session_id=session_id, state=name)


async def test_a_lock_lets_one_holder_in_at_a_time(db: Database) -> None:
    inside = 0
    most = 0

    async def turn(n: int) -> None:
        nonlocal inside, most
        async with db.lock("u1", "s1", timeout=10) as fence:
            inside += 1
            most = max(most, inside)
            current = await db.get_state("u1", "s1")
            await asyncio.sleep(0.005)
            count = int(current.state) if current else 0
            await db.save_state(state(str(count + 1)), fence=fence)
            inside -= 1

    await asyncio.gather(*(turn(n) for n in range(8)))
    saved = await db.get_state("u1", "s1")
    assert saved is not None
    assert (most, saved.state, saved.version) == (1, "8", 8)


async def test_waiters_are_served_first_come_first_served(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[int] = []
    holder = db.lock("u1", "s1")
    await holder.__aenter__()
    assert isinstance(db, Store)
    backend = db.backend
    take_ticket = backend.lock_ticket
    tickets: list[int] = []

    async def counted(owner: str, name: str, *, hold: float) -> int:
        ticket = await take_ticket(owner, name, hold=hold)
        tickets.append(ticket)
        return ticket

    monkeypatch.setattr(backend, "lock_ticket", counted)

    async def wait(n: int) -> None:
        async with db.lock("u1", "s1", timeout=10):
            order.append(n)

    async def all_joined() -> bool:
        return len(tickets) >= len(waiters)

    waiters: list[asyncio.Task[None]] = []
    for n in range(5):
        waiters.append(asyncio.create_task(wait(n)))
        await eventually(all_joined)  # each is in the queue before the next arrives
    await holder.__aexit__(None, None, None)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4]


async def test_other_sessions_are_not_held_up(db: Database) -> None:
    async with db.lock("u1", "s1"), db.lock("u1", "s2", timeout=1), db.lock("u2", "s1", timeout=1):
        pass


async def test_a_holder_past_its_lease_is_fenced_off_once_another_took_over(
    db: Database,
) -> None:
    await db.save_state(state("BEFORE"))
    paused = db.lock("u1", "s1", ttl=0.2)
    old = await paused.__aenter__()
    await asyncio.sleep(0.4)  # the holder "pauses" past its lease
    async with db.lock("u1", "s1", timeout=5) as new:
        assert new.token > old.token
        with pytest.raises(FencedError) as refused:
            await db.save_state(state("LATE"), fence=old)
        assert (refused.value.expected, refused.value.actual) == (old.token, new.token)
        assert isinstance(refused.value, ConflictError)
        with pytest.raises(FencedError):
            await db.delete_state("u1", "s1", fence=old)
        with pytest.raises(FencedError):
            await db.save_state(state("LATE"), fence=old, expected_version=1)
        kept = await db.get_state("u1", "s1")
        assert kept is not None
        assert (kept.state, kept.version) == ("BEFORE", 1)
        saved = await db.save_state(state("NEW"), fence=new)
        assert saved.version == 2
    await paused.__aexit__(None, None, None)  # releasing a lapsed lock is harmless


async def test_a_lapsed_lease_nobody_took_over_still_writes(db: Database) -> None:
    async with db.lock("u1", "s1", ttl=0.1) as fence:
        await asyncio.sleep(0.3)
        saved = await db.save_state(state("STILL MINE"), fence=fence)
        assert saved.version == 1
        assert await db.delete_state("u1", "s1", fence=fence)


async def test_fenced_writes_keep_their_version_checks(db: Database) -> None:
    async with db.lock("u1", "s1") as fence:
        first = await db.save_state(state("A"), fence=fence, expected_version=0)
        with pytest.raises(ConflictError) as conflict:
            await db.save_state(state("B"), fence=fence, expected_version=0)
        assert not isinstance(conflict.value, FencedError)
        second = await db.save_state(state("B"), fence=fence, expected_version=first.version)
        with pytest.raises(ConflictError):
            await db.delete_state("u1", "s1", fence=fence, expected_version=first.version)
        assert await db.delete_state("u1", "s1", fence=fence, expected_version=second.version)
        assert not await db.delete_state("u1", "s1", fence=fence)


async def test_a_wait_past_its_timeout_is_a_typed_error_and_leaves_the_queue(
    db: Database,
) -> None:
    async with db.lock("u1", "s1"):
        with pytest.raises(LockTimeoutError, match="'s1'"):
            async with db.lock("u1", "s1", timeout=0.2):
                pass
    # the timed-out waiter left no ticket behind: the next one gets the lock at once
    async with db.lock("u1", "s1", timeout=1):
        pass


async def test_a_cancelled_waiter_leaves_no_ticket_behind(db: Database) -> None:
    holder = db.lock("u1", "s1")
    await holder.__aenter__()
    waiter = asyncio.create_task(db.lock("u1", "s1", timeout=10).__aenter__())
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await holder.__aexit__(None, None, None)
    async with db.lock("u1", "s1", timeout=1):  # not held up by the cancelled ticket
        pass


async def test_the_lock_is_released_when_the_body_raises(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.lock("u1", "s1"):
            raise RuntimeError("the step failed")
    async with db.lock("u1", "s1", timeout=1):
        pass


async def test_bad_lock_arguments_and_foreign_fences_are_refused(db: Database) -> None:
    with pytest.raises(InvalidRecordError):
        db.lock("u1", "s1", ttl=0)
    with pytest.raises(InvalidRecordError):
        db.lock("u1", "s1", timeout=float("inf"))
    with pytest.raises(InvalidKeyError):
        db.lock("", "s1")
    with pytest.raises(InvalidKeyError):
        db.lock("u1", "bad\x00id")
    async with db.lock("u1", "s1") as fence:
        with pytest.raises(InvalidRecordError, match="another user"):
            await db.save_state(state("X", user_id="u2"), fence=fence)
    assert await db.get_state("u2", "s1") is None
    forged = Fence("u1", "s1", 10**12)
    saved = await db.save_state(state("FORGED"), fence=forged)  # a larger token writes
    assert saved.version == 1


async def test_a_user_erasure_takes_their_locks(db: Database) -> None:
    async with db.lock("u1", "s1") as fence:
        await db.save_state(state("A"), fence=fence)
    await db.delete_user("u1")
    async with db.lock("u1", "s1", timeout=1) as again:
        assert again.token > fence.token
        await db.save_state(state("B"), fence=again)


class SwallowingBackend(MemoryBackend):
    """Swallows a cancellation that arrives during a turn, as Python 3.11's
    ``asyncio.wait_for`` can when its inner call completes at the same moment."""

    def __init__(self) -> None:
        super().__init__()
        self.turning = asyncio.Event()
        self.swallow = False

    async def lock_turn(
        self, owner: str, name: str, ticket: int, *, hold: float, lease: float
    ) -> bool | None:
        if self.swallow:
            self.turning.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)
        return await super().lock_turn(owner, name, ticket, hold=hold, lease=lease)


async def test_a_waiter_whose_cancel_was_swallowed_below_still_stops() -> None:
    backend = SwallowingBackend()
    async with Store(backend) as db:
        holder = db.lock("u1", "s1")
        await holder.__aenter__()
        backend.swallow = True
        waiter = asyncio.create_task(db.lock("u1", "s1", timeout=2).__aenter__())
        await backend.turning.wait()
        waiter.cancel()  # lands in the turn, which swallows it
        with pytest.raises(asyncio.CancelledError):
            await waiter
        backend.swallow = False
        await holder.__aexit__(None, None, None)
        async with db.lock("u1", "s1", timeout=1):  # the cancelled waiter left the queue
            pass
