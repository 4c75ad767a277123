"""The record layer's memo of recent reads (``kvstore.recent``): an entry read again,
equal in full, is the held one (with its memo); anything else replaces it; bounded."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from backends.base import Entry, with_memo
from backends.memory import MemoryBackend
from kvstore import ConfigurationError, DatabaseType, StateRecord, create_database
from kvstore.keys import Key
from kvstore.recent import RecentReads
from kvstore.store import Store

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def entry(value: bytes = b'{"state":"A"}', *, version: int = 1, revision: int = 1) -> Entry:
    return Entry(value, version, NOW, NOW, revision=revision)


def key(name: str) -> Key:
    return Key("state", ("u1", name))


def test_an_equal_entry_read_again_is_the_held_one_given_a_memo() -> None:
    recent = RecentReads()
    read = entry()
    first = recent.held(key("s1"), read)
    assert first is read
    assert first.memo is None  # read once: no memo yet
    again = recent.held(key("s1"), entry())
    assert again is first
    assert again.memo == {}
    again.memo[object] = 1
    assert recent.held(key("s1"), entry()).memo == {object: 1}


def test_any_difference_replaces_the_held_entry() -> None:
    for changed in [
        entry(b'{"state":"B"}'),
        entry(version=2),
        entry(revision=2),
        replace(entry(), updated_at=datetime(2027, 1, 1, tzinfo=UTC)),
        replace(entry(), expires_at=NOW),
    ]:
        recent = RecentReads()
        held = recent.held(key("s1"), entry())
        fresh = recent.held(key("s1"), changed)
        assert fresh is changed
        assert fresh.memo is None
        assert recent.held(key("s1"), replace(changed)) is changed  # now the held one
        assert (len(recent), recent.bytes) == (1, len(changed.value))
        assert held.memo is None


def test_keys_are_held_apart() -> None:
    recent = RecentReads()
    one = recent.held(key("s1"), entry())
    two = recent.held(key("s2"), entry())
    assert one is not two
    assert recent.held(key("s1"), entry()) is one


def test_an_entry_with_a_memo_already_passes_through() -> None:
    recent = RecentReads()
    near = with_memo(entry())
    assert recent.held(key("s1"), near) is near
    assert len(recent) == 0


def test_it_holds_at_most_max_entries_least_recently_used_first() -> None:
    recent = RecentReads(max_entries=2)
    first = recent.held(key("s1"), entry())
    recent.held(key("s2"), entry())
    assert recent.held(key("s1"), entry()) is first  # s1 is now the most recent
    recent.held(key("s3"), entry())
    assert len(recent) == 2
    assert recent.held(key("s1"), entry()) is first
    second = entry()
    assert recent.held(key("s2"), second) is second  # dropped, held anew


def test_it_holds_at_most_max_bytes_of_values() -> None:
    value = b"x" * 100
    recent = RecentReads(max_bytes=250)
    for name in ["s1", "s2", "s3"]:
        recent.held(key(name), entry(value))
    assert (len(recent), recent.bytes) == (2, 200)
    big = entry(b"y" * 251)
    assert recent.held(key("s4"), big) is big  # larger than the bound: never held
    assert (len(recent), recent.bytes) == (2, 200)


def test_zero_entries_holds_nothing() -> None:
    recent = RecentReads(max_entries=0)
    read = entry()
    assert recent.held(key("s1"), read) is read
    assert read.memo is None
    assert len(recent) == 0


def test_forgetting_a_key_or_an_owner_drops_what_is_held() -> None:
    recent = RecentReads()
    held = {
        (owner, name): recent.held(Key("state", (owner, name)), entry())
        for owner, name in [("u1", "s1"), ("u1", "s2"), ("u2", "s1")]
    }
    recent.forget(Key("state", ("u1", "s1")))
    recent.forget(Key("state", ("u1", "absent")))
    assert (len(recent), recent.bytes) == (2, 2 * len(entry().value))
    recent.forget_owner("u1")
    assert len(recent) == 1
    assert recent.held(Key("state", ("u2", "s1")), entry()) is held["u2", "s1"]


def test_a_read_that_began_before_a_forget_holds_nothing() -> None:
    recent = RecentReads()
    since = recent.epoch
    recent.forget_owner("u9")  # any forget: the read may have read a deleted record
    read = entry()
    assert recent.held(key("s1"), read, since) is read
    assert len(recent) == 0
    assert recent.held(key("s1"), read, recent.epoch) is read  # a read begun now holds
    assert len(recent) == 1


class GatedGets(MemoryBackend):
    """A dict store whose gets wait, after reading, until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, key: Key) -> Entry | None:
        found = await super().get(key)
        await self.gate.wait()
        return found


@pytest.mark.parametrize("erase", ["delete_user", "delete_state"])
async def test_a_get_in_flight_across_an_erasure_leaves_nothing_held(erase: str) -> None:
    """The get began before the erasure and returns what it read (it was there when the
    get began), but that record's data is not kept in the process after the erasure."""
    backend = GatedGets()
    async with Store(backend) as db:
        await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A"))
        backend.gate.clear()
        reading = asyncio.create_task(db.get_state("u1", "s1"))
        await asyncio.sleep(0.01)  # the get has read and waits at the gate
        if erase == "delete_user":
            assert await db.delete_user("u1") == 1
        else:
            assert await db.delete_state("u1", "s1")
        backend.gate.set()
        found = await reading
        assert found is not None
        assert found.state == "A"
        assert len(db.recent) == 0
        assert await db.get_state("u1", "s1") is None


def test_clear_drops_everything() -> None:
    recent = RecentReads()
    first = recent.held(key("s1"), entry())
    recent.clear()
    assert (len(recent), recent.bytes) == (0, 0)
    read = entry()
    assert recent.held(key("s1"), read) is read
    assert read is not first


@pytest.mark.parametrize(
    "options",
    [{"recent_reads": -1}, {"recent_reads": 1.5}, {"recent_reads_bytes": "4MB"}],
)
def test_bad_bounds_are_a_configuration_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="recent_reads"):
        create_database(DatabaseType.MEMORY, **options)


def test_the_bounds_reach_the_store() -> None:
    db = create_database(DatabaseType.MEMORY, recent_reads=7, recent_reads_bytes=900)
    assert isinstance(db, Store)
    assert (db.recent.max_entries, db.recent.max_bytes) == (7, 900)
