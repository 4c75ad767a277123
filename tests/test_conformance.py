"""The conformance suite: every backend must behave the same. Parametrized by ``db``."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

import pytest
from pydantic import ValidationError

from kvstore import (
    ConfigurationError,
    ConflictError,
    ContextRecord,
    Database,
    DatabaseClosedError,
    Id,
    IdentityRecord,
    InvalidKeyError,
    InvalidRecordError,
    Record,
    SerializationError,
    StateRecord,
    UserRecord,
)
from kvstore.clock import ManualClock
from kvstore.collection import Collection
from kvstore.store import Store

if TYPE_CHECKING:
    from backends.base import Entry
    from tests.conftest import MakeDb

WEIRD_IDS = [
    "a:b",
    "a%b",
    "a_b",
    "*",
    "?",
    "[x]",
    "back\\slash",
    "{tag}",
    "}{",
    "100%_done:*?[]\\{}",
    "ünïcødé-ユーザー",
    "emoji-🙂",
    "with space",
    "'; DROP TABLE kv_records; --",
]


class Note(Record):
    """A caller's own record kind, for the generic collection API."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    text: str


def state(user_id: str = "u1", session_id: str = "s1", name: str = "INTRODUCTION") -> StateRecord:
    return StateRecord(user_id=user_id, session_id=session_id, state=name)


def identity(user_id: str, identity_id: str) -> IdentityRecord:
    return IdentityRecord(
        user_id=user_id, identity_id=identity_id, category="career", name=f"The {identity_id}"
    )


async def test_seed_example_usage(db: Database) -> None:
    assert await db.get_state("user-1", "session-1") is None
    await db.save_state(StateRecord(user_id="user-1", session_id="session-1", state="INTRODUCTION"))
    stored = await db.get_state("user-1", "session-1")
    assert stored is not None
    assert stored.state == "INTRODUCTION"
    assert await db.get_identities("user-1") == []


async def test_versions_and_timestamps_are_set_by_the_store(db: Database) -> None:
    first = await db.save_state(state())
    assert first.version == 1
    assert first.created_at is not None
    assert first.created_at.tzinfo is not None
    assert first.created_at.utcoffset() == timedelta(0)
    assert first.updated_at == first.created_at
    second = await db.save_state(first.model_copy(update={"state": "GOAL_SETTING"}))
    assert second.version == 2
    assert second.created_at == first.created_at
    assert second.updated_at is not None
    assert second.updated_at >= first.updated_at
    assert await db.get_state("u1", "s1") == second


async def test_every_record_kind_round_trips(db: Database) -> None:
    context = ContextRecord(
        user_id="u1", session_id="s1", context={"messages": [{"role": "user", "text": "hi"}]}
    )
    user = UserRecord(
        user_id="u1", display_name="Ann", email="ann@example.com", preferences={"tone": "warm"}
    )
    ident = identity("u1", "i1")
    saved_context = await db.save_context(context)
    saved_user = await db.save_user(user)
    saved_identity = await db.save_identity(ident)
    assert await db.get_context("u1", "s1") == saved_context
    assert await db.get_user("u1") == saved_user
    assert await db.get_identity("u1", "i1") == saved_identity
    assert saved_context.context == context.context
    assert saved_user.email == "ann@example.com"
    assert await db.delete_context("u1", "s1")
    assert await db.delete_identity("u1", "i1")
    assert not await db.delete_identity("u1", "i1")
    assert await db.get_context("u1", "s1") is None
    assert await db.get_identity("u1", "i1") is None


async def test_a_record_read_again_unchanged_is_copied_and_each_read_owns_its_own(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads of an unchanged record validate it at most three times, then get copies
    (``kvstore.recent``); what a caller changes in its record reaches no other read; a new
    save is read back at once; nothing of a deleted or erased record stays held."""
    validated: Counter[str] = Counter()
    decode = Collection._decode

    def counted(self: Collection[Record], entry: Entry) -> Record:
        validated[self.namespace] += 1
        return decode(self, entry)

    monkeypatch.setattr(Collection, "_decode", counted)
    assert isinstance(db, Store)
    notes = db.collection(Note, "notes", ttl=3600)  # an expiry is part of what is compared
    saved = await db.save_state(
        StateRecord(user_id="u1", session_id="s1", state="A", data={"turns": [{"text": "hi"}]})
    )
    note = await notes.save(Note(user_id="u1", note_id="n1", text="remember"))
    for _ in range(5):
        found = await db.get_state("u1", "s1")
        assert found == saved
        assert found is not None
        found.data["turns"].append("changed")  # type: ignore[union-attr]
        found.state = "CHANGED"
        assert await notes.get_many([("u1", "n1"), ("u1", "absent")]) == [note, None]
    assert validated["state"] <= 3
    assert validated["notes"] <= 3
    again = await db.save_state(saved.model_copy(update={"state": "B"}))
    assert await db.get_state("u1", "s1") == again
    assert await db.delete_state("u1", "s1")
    assert await db.get_state("u1", "s1") is None
    assert db.states.key("u1", "s1") not in db.recent
    assert await db.delete_user("u1") == 1
    assert len(db.recent) == 0


async def test_expected_version_guards_saves(db: Database) -> None:
    with pytest.raises(ConflictError):
        await db.save_state(state(), expected_version=1)
    first = await db.save_state(state(), expected_version=0)
    with pytest.raises(ConflictError) as conflict:
        await db.save_state(state(name="X"), expected_version=0)
    assert conflict.value.actual == 1
    with pytest.raises(ConflictError):
        await db.save_state(state(name="X"), expected_version=2)
    assert await db.get_state("u1", "s1") == first
    second = await db.save_state(state(name="CHAT"), expected_version=1)
    assert second.version == 2


async def test_expected_version_guards_deletes(db: Database) -> None:
    saved = await db.save_state(state())
    with pytest.raises(ConflictError):
        await db.delete_state("u1", "s1", expected_version=2)
    assert await db.get_state("u1", "s1") == saved
    assert await db.delete_state("u1", "s1", expected_version=1)
    assert not await db.delete_state("u1", "s1", expected_version=0)
    with pytest.raises(ConflictError):
        await db.delete_state("u1", "s1", expected_version=1)


async def test_recreated_record_starts_again_at_version_one(db: Database) -> None:
    await db.save_state(state())
    await db.save_state(state())
    await db.delete_state("u1", "s1")
    again = await db.save_state(state())
    assert again.version == 1


async def test_concurrent_conditional_writers_lose_no_update(db: Database) -> None:
    await db.save_state(StateRecord(user_id="u1", session_id="s1", state="C", data={"n": 0}))
    writers, increments = 16, 4

    async def writer() -> None:
        for _ in range(increments):
            while True:
                current = await db.get_state("u1", "s1")
                assert current is not None
                count = current.data["n"]
                assert isinstance(count, int)
                bumped = current.model_copy(update={"data": {"n": count + 1}})
                try:
                    await db.save_state(bumped, expected_version=current.version)
                    break
                except ConflictError:
                    await asyncio.sleep(0)

    await asyncio.gather(*(writer() for _ in range(writers)))
    final = await db.get_state("u1", "s1")
    assert final is not None
    assert final.data["n"] == writers * increments
    assert final.version == writers * increments + 1


async def test_last_writer_wins_without_expected_version(db: Database) -> None:
    results = await asyncio.gather(*(db.save_state(state(name=f"S{i}")) for i in range(20)))
    assert sorted(r.version for r in results) == list(range(1, 21))
    final = await db.get_state("u1", "s1")
    assert final is not None
    assert final.version == 20


@pytest.mark.parametrize("weird", WEIRD_IDS)
async def test_weird_ids_round_trip_and_list(db: Database, weird: str) -> None:
    await db.save_state(state(user_id=weird, session_id=weird))
    await db.save_identity(identity(weird, weird))
    fetched = await db.get_state(weird, weird)
    assert fetched is not None
    assert (fetched.user_id, fetched.session_id) == (weird, weird)
    assert [s.session_id for s in await db.list_sessions(weird)] == [weird]
    assert [i.identity_id for i in await db.get_identities(weird)] == [weird]


async def test_listings_never_cross_users(db: Database) -> None:
    for user in ["u1", "u10", "U1", "u", "u1:x", "u1%", "u_"]:
        await db.save_state(state(user_id=user, session_id=f"{user}-s"))
        await db.save_identity(identity(user, f"{user}-i"))
    assert [s.session_id for s in await db.list_sessions("u1")] == ["u1-s"]
    assert [i.identity_id for i in await db.get_identities("u1")] == ["u1-i"]
    assert [s.session_id for s in await db.list_sessions("u_")] == ["u_-s"]
    assert [s.session_id for s in await db.list_sessions("u1%")] == ["u1%-s"]
    assert await db.list_sessions("nobody") == []


async def test_listings_are_ordered_and_paginate(db: Database) -> None:
    session_ids = [f"s{i:03d}" for i in range(25)] + ["a:b", "a", "ab", "é"]
    for session_id in reversed(session_ids):
        await db.save_state(state(session_id=session_id))
    listed = [s.session_id for s in await db.list_sessions("u1")]
    assert listed == sorted(session_ids)
    store_states = getattr(db, "states", None)
    if store_states is None:
        pytest.fail("the Database implementation must expose its built-in collections")
    page = await store_states.page("u1", limit=10)
    seen = [r.session_id for r in page.records]
    while page.next_after is not None:
        page = await store_states.page("u1", after=page.next_after, limit=10)
        seen += [r.session_id for r in page.records]
    assert seen == sorted(session_ids)


async def test_delete_user_erases_every_record_of_that_user_only(db: Database) -> None:
    notes = db.collection(Note, "notes")
    for user in ["u1", "u10"]:
        await db.save_user(UserRecord(user_id=user))
        await db.save_state(state(user_id=user))
        await db.save_context(ContextRecord(user_id=user, session_id="s1"))
        await db.save_identity(identity(user, "i1"))
        await db.save_identity(identity(user, "i2"))
        await notes.save(Note(user_id=user, note_id="n1", text="remember"))
    assert await db.delete_user("u1") == 6
    assert await db.get_user("u1") is None
    assert await db.get_state("u1", "s1") is None
    assert await db.get_context("u1", "s1") is None
    assert await db.get_identities("u1") == []
    assert await notes.get("u1", "n1") is None
    assert await db.get_user("u10") is not None
    assert len(await db.get_identities("u10")) == 2
    assert await notes.get("u10", "n1") is not None
    assert await db.delete_user("u1") == 0


async def test_ttl_expires_records(db: Database) -> None:
    # a TTL long enough that a loaded machine still reads the record before it expires,
    # and a sleep that outlasts it however late the save returned
    notes = db.collection(Note, "notes", ttl=0.8)
    await notes.save(Note(user_id="u1", note_id="short", text="x"))
    await notes.save(Note(user_id="u1", note_id="long", text="x"), ttl=60)
    forever = db.collection(Note, "notes")
    await forever.save(Note(user_id="u1", note_id="kept", text="x"))
    assert await notes.get("u1", "short") is not None
    await asyncio.sleep(1.1)
    assert await notes.get("u1", "short") is None
    assert await notes.get("u1", "long") is not None
    assert [n.note_id for n in await notes.list("u1")] == ["kept", "long"]
    again = await notes.save(Note(user_id="u1", note_id="short", text="y"), expected_version=0)
    assert again.version == 1


async def test_a_record_is_absent_from_its_expiry_on_the_stores_clock(make_db: MakeDb) -> None:
    """Expired means absent, to the microsecond of the store's clock (a ManualClock here),
    whatever the server's own expiry does meanwhile."""
    clock = ManualClock(datetime.now(UTC))
    async with make_db(clock=clock) as db:
        notes = db.collection(Note, "notes")
        await notes.save(Note(user_id="u1", note_id="n", text="x"), ttl=60)
        clock.advance(59.999)
        assert await notes.get("u1", "n") is not None
        clock.advance(0.001)
        assert await notes.get("u1", "n") is None
        assert await notes.get_many([("u1", "n")]) == [None]
        assert await notes.list("u1") == []


async def test_a_timedelta_ttl_is_taken_as_its_seconds(make_db: MakeDb) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with make_db(clock=clock) as db:
        notes = db.collection(Note, "notes", ttl=timedelta(seconds=30))
        await notes.save(Note(user_id="u1", note_id="short", text="x"))
        await notes.save(Note(user_id="u1", note_id="long", text="x"), ttl=timedelta(minutes=2))
        clock.advance(29.999)
        assert await notes.get("u1", "short") is not None
        clock.advance(0.001)
        assert await notes.get("u1", "short") is None
        clock.advance(89.999)
        assert await notes.get("u1", "long") is not None
        clock.advance(0.001)
        assert await notes.get("u1", "long") is None


BAD_TTLS = [float("nan"), float("inf"), -1, 0, 0.0, 1e12, 10**400, True, "60", timedelta(0)]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_a_bad_ttl_is_refused_and_changes_nothing(db: Database, ttl: object) -> None:
    with pytest.raises(InvalidRecordError, match="ttl"):
        db.collection(Note, "notes", ttl=ttl)  # type: ignore[arg-type]
    notes = db.collection(Note, "notes")
    saved = await notes.save(Note(user_id="u1", note_id="n", text="x"))
    with pytest.raises(InvalidRecordError, match="ttl"):
        await notes.save(Note(user_id="u1", note_id="n", text="y"), ttl=ttl)  # type: ignore[arg-type]
    assert await notes.get("u1", "n") == saved


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), float("-inf"), "\ud800", 2**64, -(2**63) - 1, [2**70]],
    ids=["nan", "inf", "-inf", "lone-surrogate", "2**64", "-2**63-1", "nested-2**70"],
)
async def test_values_json_cannot_carry_are_refused_and_nothing_changes(
    db: Database, bad: object
) -> None:
    saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A", data={}))
    record = saved.model_copy(update={"state": "B"}, deep=True)
    record.data["bad"] = bad  # type: ignore[assignment]  # bypasses validation on purpose
    with pytest.raises(SerializationError):
        await db.save_state(record)
    assert await db.get_state("u1", "s1") == saved


async def test_largest_faithful_integers_round_trip(db: Database) -> None:
    data = {"max": 2**64 - 1, "min": -(2**63), "digits": "12345678901234567890123", "n": 1.5}
    saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A", data=data))
    assert (await db.get_state("u1", "s1")) == saved
    assert saved.data == data


FLOATS = [1e20, 1e16, -1e300, 1.5e-300, 5e-324, 1.2345678901234568e20, 0.1, 1.0, -0.0, 2.0**63]


async def test_floats_read_back_as_floats_and_save_again(db: Database) -> None:
    """jsonb would turn an integral float in exponent notation into an int (1e20 ->
    100000000000000000000, which no longer fits 64 bits): every backend gives back the
    float, and the record read back saves again."""
    data = {"floats": FLOATS, "text": "1e20", "int": 10**18}
    saved = await db.save_state(StateRecord(user_id="u1", session_id="s1", state="A", data=data))
    back = await db.get_state("u1", "s1")
    assert back is not None
    assert back == saved
    floats = back.data["floats"]
    assert isinstance(floats, list)
    assert [type(x) for x in floats] == [float] * len(FLOATS)
    assert floats == FLOATS
    assert type(back.data["int"]) is int
    again = await db.save_state(back)
    assert again.data == data


@pytest.mark.parametrize("bad_id", ["", "a\x00b", "tab\tid", "x" * 256, "\ud800"])
async def test_invalid_ids_are_refused(db: Database, bad_id: str) -> None:
    with pytest.raises(InvalidKeyError):
        await db.get_state(bad_id, "s1")
    with pytest.raises(InvalidKeyError):
        await db.delete_user(bad_id)
    with pytest.raises(ValidationError):
        StateRecord(user_id=bad_id, session_id="s1", state="A")


async def test_records_are_validated_and_wrong_kinds_refused(db: Database) -> None:
    with pytest.raises(ValidationError):
        StateRecord(user_id="u1", session_id="s1", state="A", data={"x": float("nan")})
    with pytest.raises(ValidationError):
        StateRecord(user_id="u1", session_id="s1", state="A", data={"x": {1, 2}})
    with pytest.raises(InvalidRecordError):
        await db.save_state(ContextRecord(user_id="u1", session_id="s1"))  # type: ignore[arg-type]
    assert await db.get_state("u1", "s1") is None


async def test_oversized_values_are_refused(db: Database) -> None:
    big = StateRecord(user_id="u1", session_id="s1", state="A", data={"x": "y" * 2_000_000})
    with pytest.raises(InvalidRecordError):
        await db.save_state(big)
    assert await db.get_state("u1", "s1") is None


async def test_stored_values_cannot_be_mutated_through_objects(db: Database) -> None:
    record = StateRecord(user_id="u1", session_id="s1", state="A", data={"items": [1]})
    saved = await db.save_state(record)
    record.data["items"].append(2)  # type: ignore[union-attr]
    saved.data["items"].append(3)  # type: ignore[union-attr]
    fetched = await db.get_state("u1", "s1")
    assert fetched is not None
    assert fetched.data == {"items": [1]}
    fetched.data["items"] = []
    again = await db.get_state("u1", "s1")
    assert again is not None
    assert again.data == {"items": [1]}


async def test_generic_collection_api(db: Database) -> None:
    notes = db.collection(Note, "notes")
    saved = await notes.save(Note(user_id="u1", note_id="n1", text="hello"))
    assert saved.version == 1
    assert await notes.get("u1", "n1") == saved
    with pytest.raises(ConflictError):
        await notes.save(Note(user_id="u1", note_id="n1", text="again"), expected_version=0)
    await notes.save(Note(user_id="u1", note_id="n2", text="two"))
    many = await notes.get_many([("u1", "n2"), ("u1", "missing"), ("u1", "n1")])
    assert [n.note_id if n else None for n in many] == ["n2", None, "n1"]
    assert [n.note_id for n in await notes.list("u1")] == ["n1", "n2"]
    assert await notes.delete("u1", "n1")
    assert await notes.get("u1", "n1") is None
    with pytest.raises(InvalidRecordError):
        await notes.get("u1")
    with pytest.raises(InvalidKeyError):
        db.collection(Note, "state")
    with pytest.raises(InvalidKeyError):
        db.collection(Note, "Bad Namespace")


async def test_namespaces_are_separate(db: Database) -> None:
    first = db.collection(Note, "notes")
    second = db.collection(Note, "notes.archive")
    await first.save(Note(user_id="u1", note_id="n1", text="a"))
    assert await second.get("u1", "n1") is None
    assert await second.list("u1") == []


async def test_older_schema_versions_are_upgraded_on_read(db: Database) -> None:
    class NoteV2(Record):
        SCHEMA_VERSION: ClassVar[int] = 2
        KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
        user_id: Id
        note_id: Id
        body: str
        words: int

    @NoteV2.upgrade(from_version=1)
    def rename_text(data: dict[str, object]) -> dict[str, object]:
        text = str(data.pop("text"))
        return {**data, "body": text, "words": len(text.split())}

    await db.collection(Note, "notes").save(Note(user_id="u1", note_id="n1", text="two words"))
    upgraded = await db.collection(NoteV2, "notes").get("u1", "n1")
    assert upgraded is not None
    assert (upgraded.body, upgraded.words, upgraded.version) == ("two words", 2, 1)
    assert upgraded.schema_version == 2
    await db.collection(NoteV2, "notes").save(NoteV2(user_id="u1", note_id="n9", body="b", words=1))
    with pytest.raises(SerializationError):  # written by a newer schema than Note reads
        await db.collection(Note, "notes").get("u1", "n9")


async def test_lifecycle_is_idempotent_and_closed_database_refuses(make_db: MakeDb) -> None:
    database = make_db()
    try:
        assert await database.get_state("u1", "s1") is None  # lazy initialization
        await database.initialize()
        await database.initialize()
    finally:
        await database.close()
    await database.close()
    with pytest.raises(DatabaseClosedError):
        await database.get_state("u1", "s1")
    with pytest.raises(DatabaseClosedError):
        await database.save_state(state())


async def test_timestamps_are_utc(db: Database) -> None:
    saved = await db.save_user(UserRecord(user_id="u1"))
    assert saved.updated_at is not None
    assert saved.updated_at.tzinfo is not None
    assert saved.updated_at.astimezone(UTC) == saved.updated_at


async def test_scan_and_restore_copy_a_store_exactly(db: Database, make_db: MakeDb) -> None:
    """Bulk export/import primitives: scan streams entries in key order, restore writes them
    as they were (versions, timestamps), idempotently and never over a newer version."""
    backend = getattr(db, "backend", None)
    assert backend is not None
    if not backend.capabilities.bulk:
        with pytest.raises(NotImplementedError):
            await backend.restore([])
        return
    notes = db.collection(Note, "notes")
    for user in ["u1", "u10", "u2"]:
        await db.save_state(state(user_id=user))
        await db.save_state(state(user_id=user, name="CHAT"))
        await notes.save(Note(user_id=user, note_id="n", text=user))
    everything = [item async for item in backend.scan(batch_size=2)]
    assert len(everything) == 6
    assert [k.components for k, _ in everything if k.namespace == "state"] == [
        ("u1", "s1"),
        ("u10", "s1"),
        ("u2", "s1"),
    ]
    only_u1 = [k async for k, _ in backend.scan(owner="u1", batch_size=1)]
    assert {k.namespace for k in only_u1} == {"state", "notes"}
    assert all(k.owner == "u1" for k in only_u1)
    only_notes = [k async for k, _ in backend.scan(namespace="notes")]
    assert [k.owner for k in only_notes] == ["u1", "u10", "u2"]

    async with make_db() as copy:
        target = getattr(copy, "backend", None)
        assert target is not None
        await copy.delete_user("u1")
        await copy.delete_user("u10")
        await copy.delete_user("u2")
        assert await target.restore(everything) == 6
        assert await target.restore(everything) == 0  # idempotent
        assert same(await copy.get_state("u10", "s1"), await db.get_state("u10", "s1"))
        assert same(await copy.collection(Note, "notes").list("u2"), await notes.list("u2"))
        newer = await copy.save_state(state(user_id="u1", name="NEWER"))
        assert await target.restore(everything) == 0  # never over a newer version
        assert await copy.get_state("u1", "s1") == newer


async def test_stats_name_the_store_and_count_each_tier(db: Database) -> None:
    before = db.stats()
    await db.save_state(state())
    assert await db.get_state("u1", "s1") is not None
    after = db.stats()
    assert after.backend in {"memory", "sql", "redis", "tiered"}
    assert after.backend == before.backend
    assert (after.tier is not None) == (after.backend == "tiered")
    if after.tier is not None and before.tier is not None:
        assert after.tier.reads == before.tier.reads + 1
        assert after.tier.hits + after.tier.misses + after.tier.bypassed >= after.tier.reads
    if after.sql is not None and before.sql is not None:
        assert after.sql.saves == before.sql.saves + 1


async def test_cache_upkeep_works_with_a_cache_tier_and_is_refused_without(
    db: Database,
) -> None:
    for user in ("u1", "u2", "u3"):
        await db.save_state(state(user))
    if db.stats().tier is None:
        with pytest.raises(ConfigurationError, match="no cache tier"):
            await db.warm_cache()
        with pytest.raises(ConfigurationError, match="no cache tier"):
            await db.verify_cache()
        return
    chunks: list[int] = []
    warmed = await db.warm_cache("state", limit=10, progress=chunks.append)
    assert warmed.read == 3
    assert sum(chunks) == 3
    report = await db.verify_cache("state", owner="u2")
    assert (report.checked, report.stale, report.extra) == (1, [], [])


CLUSTER_PIPELINE_CYCLE = {"ClusterPipeline", "PipelineStrategy", "list"}
"""What redis-py (8.2) leaves for the cycle collector per Cluster pipeline: the pipeline and
its execution strategy refer to each other (and the command list). Not kvstore's to break."""


async def test_the_request_path_leaves_no_reference_cycles(db: Database, backend_name: str) -> None:
    """Saves, reads (found and not), conditional saves, a conflict and deletes leave nothing
    for Python's cycle collector: reference counting frees all they make. Garbage in cycles
    makes a service's collections run more often over its whole heap (the load test spent
    about a fifth of its loop time collecting). On a Redis Cluster, redis-py's own
    pipelines are the one exception, checked to be the only one."""
    records = [state("gc-user", f"s{n}") for n in range(8)]

    async def turn(record: StateRecord) -> None:
        saved = await db.save_state(record)
        assert await db.get_state(record.user_id, record.session_id) == saved
        again = await db.save_state(saved, expected_version=saved.version)
        try:
            await db.save_state(saved, expected_version=saved.version)
        except ConflictError:
            pass
        else:
            raise AssertionError("a stale expected_version was not refused")
        assert await db.delete_state(record.user_id, record.session_id)
        assert await db.get_state(record.user_id, record.session_id) is None
        assert again.version == saved.version + 1

    await asyncio.gather(*(turn(record) for record in records))  # pools, statements, scripts
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collector finds, to name it
    try:
        for _ in range(3):
            await asyncio.gather(*(turn(record) for record in records))
        gc.collect()
        found = Counter(type(garbage).__name__ for garbage in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    if backend_name == "redis_cluster":
        assert found["ClusterPipeline"] > 0, "redis-py's Cluster pipelines no longer cycle"
        assert set(found) <= CLUSTER_PIPELINE_CYCLE, found
    else:
        assert not found, f"freed only by the cycle collector: {found.most_common(10)}"


def same(copied: object, original: object) -> bool:
    """Records equal but for their revisions: a copy's are the target store's own."""

    def plain(value: object) -> object:
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, Record):
            return value.model_dump(exclude={"revision"})
        return value

    return plain(copied) == plain(original)
