"""Group commit on PostgreSQL (``backends/sql/batch.py``): saves that queue for a connection
go as one statement per round, each with its own result. Every save of the conformance
suite on PostgreSQL goes through it too; ``tests/test_pg_faults.py`` cuts rounds with
server restarts, and ``tests/test_sql_faults.py`` bounds a queued save's wait."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import asyncpg
import pytest

from backends.sql import SQLBackend, build_sql_backend
from kvstore import ConflictError, SerializationError
from kvstore.keys import Key
from tests import postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.postgres

VALUE = b'{"state": "A"}'


@pytest.fixture
async def backend(postgres_url: str) -> AsyncIterator[SQLBackend]:
    """Two connections: one turn for saves, so every save that comes while one runs queues
    and goes in the next round."""
    await postgres.execute(postgres_url, "DELETE FROM kv_records")
    sql = build_sql_backend(postgres_url, {"pool_size": 2})
    try:
        await sql.initialize()
        yield sql
    finally:
        await sql.close()


def keys(count: int) -> list[Key]:
    run = uuid.uuid4().hex[:8]
    return [Key("state", (f"u{run}", f"s{i}")) for i in range(count)]


async def test_concurrent_saves_share_rounds_and_each_gets_its_own_result(
    backend: SQLBackend,
) -> None:
    many = keys(60)
    before = backend.sql_stats()
    saved = await asyncio.gather(*(backend.put(key, VALUE) for key in many))
    after = backend.sql_stats()
    assert [entry.version for entry in saved] == [1] * 60
    assert len({entry.revision for entry in saved}) == 60
    assert after.saves - before.saves == 60
    assert after.save_statements - before.save_statements < 60 / 4  # rounds, not saves
    stored = await backend.get_many(many)
    assert [entry.revision if entry else None for entry in stored] == [e.revision for e in saved]


async def test_conflicts_inside_a_round_fail_only_their_callers(backend: SQLBackend) -> None:
    existing, fresh = keys(20), keys(20)
    for key in existing:
        await backend.put(key, VALUE)
    checks: list[tuple[Key, int | None]] = [
        *((key, 1 if i % 2 else 7) for i, key in enumerate(existing)),  # right / wrong
        *((key, 0 if i % 2 else 3) for i, key in enumerate(fresh)),  # new / must exist
    ]
    before = backend.sql_stats()
    outcomes = await asyncio.gather(
        *(
            backend.put(key, b'{"state": "B"}', expected_version=expected)
            for key, expected in checks
        ),
        return_exceptions=True,
    )
    assert backend.sql_stats().save_statements - before.save_statements < len(checks) / 2
    for (key, expected), outcome in zip(checks, outcomes, strict=True):
        if expected in (1, 0):
            assert not isinstance(outcome, BaseException), (key, expected, outcome)
            assert outcome.version == (2 if expected == 1 else 1)
        else:
            assert isinstance(outcome, ConflictError), (key, expected, outcome)
            assert outcome.expected == expected
            assert outcome.actual == (1 if key in existing else 0)
    for key, expected in checks:
        entry = await backend.get(key)
        if key in fresh and expected == 3:
            assert entry is None
        else:
            assert entry is not None
            assert entry.value == (b'{"state": "B"}' if expected in (1, 0) else VALUE)


async def test_one_keys_saves_keep_their_order_across_rounds(backend: SQLBackend) -> None:
    [key] = keys(1)
    saved = await asyncio.gather(*(backend.put(key, VALUE) for _ in range(30)))
    assert sorted(entry.version for entry in saved) == list(range(1, 31))
    by_version = sorted(saved, key=lambda entry: entry.version)
    revisions = [entry.revision for entry in by_version]
    assert revisions == sorted(revisions)
    stored = await backend.get(key)
    assert stored is not None
    assert stored.version == 30


async def test_a_value_the_server_refuses_fails_only_its_own_save(backend: SQLBackend) -> None:
    many = keys(12)
    bad = many[5]
    values = {key: (b'{"text": "a\\u0000b"}' if key == bad else VALUE) for key in many}
    outcomes = await asyncio.gather(
        *(backend.put(key, values[key]) for key in many), return_exceptions=True
    )
    for key, outcome in zip(many, outcomes, strict=True):
        if key == bad:
            assert isinstance(outcome, SerializationError)
        else:
            assert not isinstance(outcome, BaseException), outcome
    stored = await backend.get_many(many)
    assert [entry is not None for entry in stored] == [key != bad for key in many]


async def test_a_caller_cancelled_while_queued_writes_nothing(
    backend: SQLBackend, postgres_url: str
) -> None:
    blocker, *queued = keys(6)
    await backend.put(blocker, VALUE)
    admin = await asyncpg.connect(postgres_url)
    try:
        async with admin.transaction():
            # the row lock holds the first save (and so the one turn) until the commit below
            await admin.execute(
                "SELECT 1 FROM kv_records WHERE owner = $1 FOR UPDATE", blocker.owner
            )
            first = asyncio.create_task(backend.put(blocker, VALUE))
            await asyncio.sleep(0.1)
            waiting = [asyncio.create_task(backend.put(key, VALUE)) for key in queued]
            await asyncio.sleep(0.1)
            waiting[2].cancel()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
    finally:
        await admin.close()
    assert isinstance(results[3], asyncio.CancelledError)
    assert await backend.get(queued[2]) is None
    for key, result in zip([blocker, *queued], results, strict=True):
        if key != queued[2]:
            assert not isinstance(result, BaseException), result
            assert await backend.get(key) is not None
