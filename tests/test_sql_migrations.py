"""Alembic migrations on real PostgreSQL and SQLite: from empty and from the first
revision to head, idempotent, and safe when several processes start at once."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from backends.sql import build_sql_backend
from backends.sql_migrate import current_revision, head_revision, upgrade
from kvstore import BackendUnavailableError
from kvstore.keys import Key
from tests import postgres
from tests.services import unavailable

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
    if not await postgres.server_available():
        unavailable(f"no PostgreSQL at {postgres.ADMIN_URL}")
    name = postgres.unique_name("migrate")
    url = await postgres.create_database(name)
    try:
        yield url
    finally:
        await postgres.drop_database(name)


async def test_upgrade_from_empty_reaches_head_and_is_idempotent(empty_url: str) -> None:
    assert await current_revision(empty_url) is None
    assert await upgrade(empty_url) == head_revision()
    assert await upgrade(empty_url) == head_revision()
    assert await current_revision(empty_url) == head_revision()


async def test_upgrade_from_the_first_revision_keeps_data(empty_url: str) -> None:
    assert await upgrade(empty_url, FIRST_REVISION) == FIRST_REVISION
    old = build_sql_backend(empty_url)
    try:
        await old.initialize()  # brings it to head, which keeps what the first revision stored
        await old.put(Key("state", ("u1", "s1")), b'{"state": "A"}')
    finally:
        await old.close()
    assert await upgrade(empty_url) == head_revision()
    backend = build_sql_backend(empty_url)
    try:
        entry = await backend.get(Key("state", ("u1", "s1")))
        assert entry is not None
        assert entry.version == 1
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
