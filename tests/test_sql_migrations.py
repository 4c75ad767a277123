"""Alembic migrations on real PostgreSQL and SQLite: from empty and from the first
revision to head, idempotent, and safe when several processes start at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from backends.sql import build_sql_backend
from backends.sql.config import create_engine, parse_sql_url
from backends.sql.migrate import current_revision, head_revision, upgrade
from backends.sql.schema import sqlite_time
from kvstore import BackendUnavailableError
from kvstore.keys import Key
from tests import postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

FIRST_REVISION = "0001"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with nothing in it: a new SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    async with postgres.fresh_database("migrate") as url:
        yield url


async def test_upgrade_from_empty_reaches_head_and_is_idempotent(empty_url: str) -> None:
    assert await current_revision(empty_url) is None
    assert await upgrade(empty_url) == head_revision()
    assert await upgrade(empty_url) == head_revision()
    assert await current_revision(empty_url) == head_revision()


@pytest.mark.parametrize("written_under", [FIRST_REVISION, "0002"])
async def test_upgrade_from_an_earlier_revision_keeps_data_and_revises_it(
    empty_url: str, written_under: str
) -> None:
    """Rows written under schema 0001 (no revisions) or 0002 (revisions by trigger alone)
    have distinct revisions after the upgrade; from then on every write gets a new one, and
    deletes leave tombstones."""
    assert await upgrade(empty_url, written_under) == written_under
    engine = create_engine(parse_sql_url(empty_url))
    now = datetime.now(UTC)
    insert = sa.text(
        "INSERT INTO kv_records (namespace, owner, key, value, version, created_at, updated_at)"
        " VALUES ('state', :owner, 's1', '{\"state\": \"A\"}', 3, :now, :now)"
    )
    async with engine.begin() as connection:
        for owner in ("u1", "u2", "u3"):
            await connection.execute(
                insert,
                {
                    "owner": owner,
                    "now": sqlite_time(now) if engine.dialect.name == "sqlite" else now,
                },
            )
    await engine.dispose()
    assert await upgrade(empty_url) == head_revision()
    backend = build_sql_backend(empty_url)
    try:
        old = await backend.get_many([Key("state", (u, "s1")) for u in ("u1", "u2", "u3")])
        assert all(entry is not None and entry.version == 3 for entry in old)
        revisions = {entry.revision for entry in old if entry is not None}
        assert len(revisions) == 3
        assert min(revisions) > 0
        head, _ = await backend.head()
        saved = await backend.put(Key("state", ("u1", "s1")), b'{"state": "B"}')
        assert (saved.version, saved.revision > head) == (4, True)
        deleted = await backend.delete(Key("state", ("u2", "s1")))
        assert deleted > saved.revision
        changes, _ = await backend.read_changes(head, 100)
        assert [(c.key.owner, c.revision, c.deleted) for c in changes] == [
            ("u1", saved.revision, False),
            ("u2", deleted, True),
        ]
    finally:
        await backend.close()


async def test_concurrent_initialization_migrates_once(empty_url: str) -> None:
    backends = [build_sql_backend(empty_url) for _ in range(4)]
    try:
        await asyncio.gather(*(backend.initialize() for backend in backends))
        await backends[0].put(Key("state", ("u1", "s1")), b"{}")
        entry = await backends[3].get(Key("state", ("u1", "s1")))
        assert entry is not None
    finally:
        await asyncio.gather(*(backend.close() for backend in backends))
    assert await current_revision(empty_url) == head_revision()


@pytest.mark.parametrize(
    "url", ["postgresql://coach:s3cret@127.0.0.1:1/coach", "sqlite:////nonexistent/dir/kv.db"]
)
async def test_migration_commands_fail_typed_without_the_password(url: str) -> None:
    with pytest.raises(BackendUnavailableError) as error:
        await upgrade(url)
    assert "s3cret" not in str(error.value)
    with pytest.raises(BackendUnavailableError):
        await current_revision(url)
