"""Throwaway PostgreSQL databases for tests: uniquely named, created and dropped by us."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

ADMIN_URL = os.environ.get(
    "KVSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""A server where the tests may create databases (trust auth on this machine)."""


@asynccontextmanager
async def fresh_database(purpose: str) -> AsyncIterator[str]:
    """A new, empty database of one test (its URL), dropped afterwards; the test is skipped
    (failed in CI) when the server is not there."""
    if not await server_available():
        from tests.services import unavailable  # pytest's, not for the benchmarks' imports

        unavailable(f"no PostgreSQL at {ADMIN_URL}")
    name = unique_name(purpose)
    url = await create_database(name)
    try:
        yield url
    finally:
        await drop_database(name)


def database_url(name: str) -> str:
    """The URL of database ``name`` on the admin server."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def unique_name(purpose: str) -> str:
    """A database name no other test run uses: purpose, pid and a random part."""
    return f"kvstore_{purpose}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


async def server_available() -> bool:
    """Whether the admin server answers."""
    try:
        connection = await asyncpg.connect(ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def create_database(name: str) -> str:
    """Create database ``name``; return its URL."""
    connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return database_url(name)


async def drop_database(name: str) -> None:
    """Drop database ``name`` (one this test run created), closing its sessions."""
    connection = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def execute(url: str, sql: str, *args: object) -> str:
    """Run one statement on the database at ``url``."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        status: str = await connection.execute(sql, *args)
        return status
    finally:
        await connection.close()


async def empty(url: str) -> None:
    """Delete every record, lock ticket and fence of the database at ``url`` (the tables
    stay, migrated)."""
    await execute(url, "DELETE FROM kv_records; DELETE FROM kv_lock_tickets; DELETE FROM kv_fences")
