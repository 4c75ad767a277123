"""The SQL backend's single-record save and get, one user's listing and a batch get,
against the raw drivers, side by side.

python -m benchmarks.sql_backend [--seconds 1] [--postgres URL] [--skip-sqlite]

Every contender runs the same statements (``backends.sql.statements``) on the same
``kv_records`` table with the same ~1.2 KB JSON value: raw asyncpg (one connection, and a
pool without the reset query on release), raw aiosqlite (one connection, WAL,
synchronous=NORMAL), the SQL backend, and, for scale, the same upsert through SQLAlchemy
Core (``engine.begin()``). The listing is one user's page of 10 records on PostgreSQL,
against the raw pool running the backend's statement and the SQLAlchemy Core statement
the backend uses under a longer prefix (and used for every listing before it got a hot
statement). ``get_many`` reads 10 keys spread over users, against the raw pool running the
backend's statement and a Core ``IN`` list of tuples. PostgreSQL runs in a throwaway
database created and dropped here.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import create_async_engine

from backends.base import utcnow
from backends.sql import POSTGRES_SQL, SQLITE_SQL, build_sql_backend, queries
from backends.sql.migrate import upgrade
from backends.sql.schema import kv_records, sqlite_time
from benchmarks.common import measure, session_record, throwaway_database
from kvstore.keys import Key
from kvstore.models.base import METADATA_FIELDS
from serializers import JSONSerializer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from backends.sql import SQLBackend

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
KEYS = 1000


def key_args(index: int) -> tuple[str, str, str]:
    return ("state", f"user-{index % 100}", f"session-{index}")


TASKS = 32
BATCH = 10
"""Keys per ``get_many``."""

KEY_OBJECTS = [Key(ns, (owner, key)) for ns, owner, key in map(key_args, range(KEYS))]
VALUE = JSONSerializer().dumps(session_record(), exclude=METADATA_FIELDS)
TEXT = VALUE.decode()


class Keys:
    """Cycles over the prefilled keys; each call takes the next one."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> int:
        return next(self._counter) % KEYS


async def _noreset(_connection: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (the pool baseline BASELINES.md calls fair)."""


async def postgres(seconds: float, admin_url: str) -> None:
    async with throwaway_database(admin_url, "sql") as url:
        await _postgres_run(url, seconds)


async def _postgres_run(url: str, seconds: float) -> None:
    single = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=10, max_size=10, reset=_noreset)
    backend = build_sql_backend(url, {"pool_size": 10, "max_overflow": 0})
    await backend.initialize()
    alone = build_sql_backend(url, {"pool_size": 10, "max_overflow": 0, "group_commit": False})
    await alone.initialize()
    core = create_async_engine(
        url.replace("postgresql://", "postgresql+asyncpg://"), pool_size=10, max_overflow=0
    )
    keys = Keys()
    for i in range(KEYS):
        await single.execute(POSTGRES_SQL["put"], *key_args(i), TEXT, utcnow(), None)

    async def raw_put(connection: Any) -> None:
        await connection.fetch(POSTGRES_SQL["put"], *key_args(keys.next()), TEXT, utcnow(), None)

    async def raw_get(connection: Any) -> None:
        rows = await connection.fetch(POSTGRES_SQL["get"], *key_args(keys.next()), utcnow())
        assert rows

    async def pool_put() -> None:
        async with pool.acquire() as connection:
            await raw_put(connection)

    async def pool_get() -> None:
        async with pool.acquire() as connection:
            await raw_get(connection)

    async def core_put() -> None:
        ns, owner, key = key_args(keys.next())
        now = utcnow()
        values = {"namespace": ns, "owner": owner, "key": key, "value": TEXT, "version": 1}
        insert = pg_insert(kv_records).values(**values, created_at=now, updated_at=now)
        statement = insert.on_conflict_do_update(
            index_elements=["namespace", "owner", "key"],
            set_={"value": insert.excluded.value, "version": kv_records.c.version + 1},
        ).returning(kv_records.c.version, kv_records.c.created_at)
        async with core.begin() as connection:
            (await connection.execute(statement)).one()

    async def core_get() -> None:
        ns, owner, key = key_args(keys.next())
        t = kv_records
        statement = sa.select(t.c.value, t.c.version, t.c.created_at).where(
            t.c.namespace == ns, t.c.owner == owner, t.c.key == key
        )
        async with core.connect() as connection:
            (await connection.execute(statement)).one()

    def owner() -> str:
        return key_args(keys.next())[1]

    async def pool_list() -> None:
        async with pool.acquire() as connection:
            rows = await connection.fetch(POSTGRES_SQL["list"], "state", owner(), "", utcnow(), 100)
        assert rows

    async def core_list() -> None:
        statement = queries.select_listing("state", (owner(),), None, 100, utcnow())
        assert statement is not None
        async with core.connect() as connection:
            assert (await connection.execute(statement)).all()

    def batch() -> list[tuple[str, str, str]]:
        return [key_args(keys.next()) for _ in range(BATCH)]

    async def pool_get_many() -> None:
        namespaces, owners, texts = (list(part) for part in zip(*batch(), strict=True))
        async with pool.acquire() as connection:
            rows = await connection.fetch(
                POSTGRES_SQL["get_batch"], namespaces, owners, texts, utcnow()
            )
        assert len(rows) == BATCH

    async def core_get_many() -> None:
        t = kv_records
        statement = sa.select(t.c.value, t.c.version, t.c.created_at).where(
            sa.tuple_(t.c.namespace, t.c.owner, t.c.key).in_(batch())
        )
        async with core.connect() as connection:
            assert len((await connection.execute(statement)).all()) == BATCH

    async def backend_get_many() -> None:
        entries = await backend.get_many([_key(keys.next()) for _ in range(BATCH)])
        assert all(entries)

    def backend_put(sql: SQLBackend) -> Callable[[], Awaitable[object]]:
        return lambda: sql.put(_key(keys.next()), VALUE)

    def backend_get(sql: SQLBackend) -> Callable[[], Awaitable[object]]:
        return lambda: sql.get(_key(keys.next()))

    try:
        for tasks in (1, TASKS):
            where = "one task" if tasks == 1 else f"{tasks} tasks"
            put: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("raw asyncpg pool (no reset)", pool_put),
                ("SQL backend", backend_put(backend)),
                ("SQL backend, group_commit=False", backend_put(alone)),
                ("SQLAlchemy Core, engine.begin()", core_put),
            ]
            get: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("raw asyncpg pool (no reset)", pool_get),
                ("SQL backend", backend_get(backend)),
                ("SQLAlchemy Core, engine.connect()", core_get),
            ]
            if tasks == 1:
                put.insert(1, ("raw asyncpg, one connection", lambda: raw_put(single)))
                get.insert(1, ("raw asyncpg, one connection", lambda: raw_get(single)))
            await measure(f"PostgreSQL save (upsert), {where}", seconds, put, tasks)
            await measure(f"PostgreSQL get (by key), {where}", seconds, get, tasks)
            listing: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("raw asyncpg pool (no reset)", pool_list),
                ("SQL backend", lambda: backend.list("state", (owner(),))),
                ("SQLAlchemy Core, engine.connect()", core_list),
            ]
            await measure(f"PostgreSQL listing (a user's 10), {where}", seconds, listing, tasks)
            many: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("raw asyncpg pool (no reset)", pool_get_many),
                ("SQL backend", backend_get_many),
                ("SQLAlchemy Core, engine.connect()", core_get_many),
            ]
            await measure(f"PostgreSQL get_many ({BATCH} keys), {where}", seconds, many, tasks)
    finally:
        await backend.close()
        await alone.close()
        await core.dispose()
        await pool.close()
        await single.close()


def _key(index: int) -> Key:
    """The prebuilt key (the record layer builds and validates keys before the backend)."""
    return KEY_OBJECTS[index]


async def sqlite(seconds: float) -> None:
    import aiosqlite

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.db"
        url = f"sqlite:///{path}"
        await upgrade(url)
        raw = await aiosqlite.connect(path, isolation_level=None)
        await raw.execute("PRAGMA journal_mode=WAL")
        await raw.execute("PRAGMA synchronous=NORMAL")
        backend = build_sql_backend(url)
        await backend.initialize()
        keys = Keys()
        for i in range(KEYS):
            now = sqlite_time(utcnow())
            await raw.execute_fetchall(SQLITE_SQL["put"], (*key_args(i), TEXT, now, None))

        async def raw_put() -> None:
            now = sqlite_time(utcnow())
            args = (*key_args(keys.next()), TEXT, now, None)
            await raw.execute_fetchall(SQLITE_SQL["put"], args)

        async def raw_get() -> None:
            now = sqlite_time(utcnow())
            rows = await raw.execute_fetchall(SQLITE_SQL["get"], (*key_args(keys.next()), now))
            assert rows

        try:
            for tasks in (1, TASKS):
                where = "one task" if tasks == 1 else f"{tasks} tasks"
                await measure(
                    f"SQLite save (upsert), {where}",
                    seconds,
                    [
                        ("raw aiosqlite, one connection", raw_put),
                        ("SQL backend", lambda: backend.put(_key(keys.next()), VALUE)),
                    ],
                    tasks,
                )
                await measure(
                    f"SQLite get (by key), {where}",
                    seconds,
                    [
                        ("raw aiosqlite, one connection", raw_get),
                        ("SQL backend", lambda: backend.get(_key(keys.next()))),
                    ],
                    tasks,
                )
        finally:
            await backend.close()
            await raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--postgres", default=ADMIN_URL, help="server to create a database on")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(f"value: {len(VALUE)} bytes of JSON; {KEYS} keys cycled; ratios against the first row")
    if not args.skip_postgres:
        asyncio.run(postgres(args.seconds, args.postgres))
    if not args.skip_sqlite:
        asyncio.run(sqlite(args.seconds))


if __name__ == "__main__":
    main()
