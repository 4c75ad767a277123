"""Export and import as JSON Lines: exact round trips, idempotence, every bad line reported."""

from __future__ import annotations

import gzip
import io
import uuid
from pathlib import Path

import orjson
import pytest

from kvstore import ContextRecord, DatabaseType, Record, StateRecord, create_database
from kvstore.keys import Key
from kvstore.store import Store
from kvstore.transfer import export_lines, import_lines, open_text


def memory_store() -> Store:
    store = create_database(DatabaseType.MEMORY)
    assert isinstance(store, Store)
    return store


async def filled_store(users: int = 30) -> Store:
    store = memory_store()
    for n in range(users):
        user = f"user-{n}"
        saved = await store.save_state(StateRecord(user_id=user, session_id="s", state="A"))
        await store.save_state(saved.model_copy(update={"state": "B"}))
        await store.save_context(
            ContextRecord(user_id=user, session_id="s", context={"messages": ["hi", n]})
        )
    return store


def same(copied: Record | None, original: Record | None) -> bool:
    """Records equal but for their revisions (an import's are the target store's own)."""
    assert copied is not None
    assert original is not None
    return copied.model_dump(exclude={"revision"}) == original.model_dump(exclude={"revision"})


async def test_export_then_import_gives_identical_records(tmp_path: Path) -> None:
    source = await filled_store()
    path = tmp_path / "backup.jsonl.gz"
    with open_text(path, "wb") as sink:
        async for line in export_lines(source.backend):
            sink.write(line)
    target = memory_store()
    with open_text(path, "rb") as lines:
        report = await import_lines(target.backend, iter(lines), batch_size=7)
    assert (report.read, report.written, report.rejected) == (60, 60, [])
    for n in range(30):
        assert same(
            await target.get_state(f"user-{n}", "s"), await source.get_state(f"user-{n}", "s")
        )
        assert same(
            await target.get_context(f"user-{n}", "s"), await source.get_context(f"user-{n}", "s")
        )
    with gzip.open(path) as lines:
        again = await import_lines(target.backend, iter(lines))
    assert (again.written, again.unchanged) == (0, 60)  # re-running changes nothing


async def test_bad_lines_are_reported_with_numbers_and_never_stop_good_ones() -> None:
    source = await filled_store(users=2)
    good = [line async for line in export_lines(source.backend)]
    wrong_kind = orjson.loads(good[0])
    wrong_kind["value"]["state"] = ""  # fails StateRecord validation
    mismatched = orjson.loads(good[1])
    mismatched["key"] = ["someone-else", "s"]
    lines = [
        good[0],
        b'{"namespace": "state", "key": ["u", "s"], "version": 1, "created_at"\n',  # truncated
        b"\x00\x01garbage\n",
        orjson.dumps(wrong_kind) + b"\n",
        good[1],
        orjson.dumps({**orjson.loads(good[2]), "version": 0}) + b"\n",
        orjson.dumps({**orjson.loads(good[2]), "namespace": "Bad NS"}) + b"\n",
        orjson.dumps(mismatched) + b"\n",
        orjson.dumps({**orjson.loads(good[2]), "created_at": "yesterday"}) + b"\n",
        good[2],
        good[3],
    ]
    rejects = io.BytesIO()
    target = memory_store()
    report = await import_lines(target.backend, iter(lines), rejects=rejects)
    assert [number for number, _ in report.rejected] == [2, 3, 4, 6, 7, 8, 9]
    assert report.written == 4
    assert rejects.getvalue().count(b"\n") == 7
    assert same(await target.get_state("user-0", "s"), await source.get_state("user-0", "s"))


async def test_dry_run_writes_nothing_and_counts_what_a_real_run_would_write() -> None:
    source = await filled_store(users=3)
    lines = [line async for line in export_lines(source.backend)]
    target = memory_store()
    report = await import_lines(target.backend, iter(lines), dry_run=True)
    assert (report.read, report.written, report.unchanged, report.rejected) == (6, 6, 0, [])
    assert await target.get_state("user-0", "s") is None
    real = await import_lines(target.backend, iter(lines))
    assert (real.written, real.unchanged) == (6, 0)
    again = await import_lines(target.backend, iter(lines), dry_run=True)
    assert (again.written, again.unchanged) == (0, 6)


async def test_export_of_one_user_or_namespace() -> None:
    source = await filled_store(users=12)
    user_lines = [orjson.loads(x) async for x in export_lines(source.backend, owner="user-1")]
    assert {(d["namespace"], d["key"][0]) for d in user_lines} == {
        ("state", "user-1"),
        ("context", "user-1"),
    }
    states = [orjson.loads(x) async for x in export_lines(source.backend, namespace="state")]
    assert len(states) == 12
    assert all(d["namespace"] == "state" and d["version"] == 2 for d in states)


def note_line(owner: str, note: str, value: bytes) -> bytes:
    """An export line of a record of a namespace of the application's own, value as given."""
    return (
        b'{"namespace":"notes","key":["%s","%s"],"version":1,'
        b'"created_at":"2026-01-01T00:00:00+00:00","updated_at":"2026-01-01T00:00:00+00:00",'
        b'"expires_at":null,"value":%s}\n' % (owner.encode(), note.encode(), value)
    )


@pytest.mark.postgres
async def test_a_value_the_store_cannot_hold_exactly_is_a_rejected_line(
    postgres_url: str,
) -> None:
    """A NUL character (PostgreSQL's jsonb refuses it) or an integer outside 64 bits (a
    JSON parser makes a float of it) in a value of any namespace: that line is rejected
    with the reason, the others are written exactly."""
    owner = f"import-{uuid.uuid4().hex[:8]}"
    lines = [
        note_line(owner, "n1", b'{"text":"fine"}'),
        note_line(owner, "n2", b'{"text":"a\\u0000b"}'),
        note_line(owner, "n3", b'{"count":18446744073709551616}'),
        note_line(owner, "n4", b'{"count":18446744073709551615,"low":-9223372036854775808}'),
    ]
    async with create_database(DatabaseType.SQL, postgres_url) as db:
        assert isinstance(db, Store)
        report = await import_lines(db.backend, iter(lines))
        assert [number for number, _ in report.rejected] == [2, 3]
        assert "NUL" in report.rejected[0][1]
        assert "outside [-2**63, 2**64)" in report.rejected[1][1]
        assert report.written == 2
        stored = await db.backend.get(Key("notes", (owner, "n4")))
        assert stored is not None
        assert orjson.loads(stored.value) == {
            "count": 18446744073709551615,
            "low": -9223372036854775808,
        }
        await db.delete_user(owner)
