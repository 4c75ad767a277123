"""Redis backend vs raw redis-py and peer libraries, on the same ~1.2 KB record.

Run: ``python -m benchmarks.redis_backend [--seconds 1]``. It starts a private
``redis-server`` on a free loopback port (or uses ``--url``, which must name a database of
its own: it is flushed) and compares, with 1 task and 32 concurrent tasks:

* bytes: the backend's ``get`` / ``put`` vs raw redis-py ``GET`` / ``SET`` of the same
  serialized record;
* records: the ``Database`` (pydantic models in and out) vs raw redis-py with
  ``model_validate_json`` / ``model_dump_json`` on the caller's side, and the peers
  (litestar's RedisStore, aiocache, cashews: ``pip install -e '.[bench]'``) storing the
  same JSON;
* ``get_many`` of 100 keys vs 100 single gets, one task.

The raw baseline is redis-py at its fastest: hiredis and ``socket_timeout=None`` (no
``asyncio.wait_for`` per call); the kvstore rows keep their deadline (``socket_timeout`` 1 s,
one per operation). Contenders are timed in interleaved slices (:func:`benchmarks.common.
measure`): median ops/s with its range, p50/p99, CPU per operation, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from backends.redis import build_redis_backend
from benchmarks.common import measure
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.keys import Key
from tests.redis_servers import RedisServer

if TYPE_CHECKING:
    from backends.redis import RedisBackend

Op = Callable[[int], Awaitable[Any]]
Contender = tuple[str, Op, Op]
"""A name, its get of key index i and its save of key index i."""
TASKS = 32
KEYS = 256


def sample_record(session: str = "s0") -> StateRecord:
    """A session state of ~1.2 KB serialized, with nested data."""
    return StateRecord(
        user_id="user-123",
        session_id=session,
        state="GOAL_SETTING",
        data={
            "goal": "run a marathon" * 4,
            "steps": [{"n": i, "text": "step text " * 3, "done": i % 2 == 0} for i in range(12)],
            "scores": {"confidence": 0.72, "energy": 0.5},
        },
    )


def dump(record: StateRecord) -> bytes:
    """The caller-side serialization the raw and peer rows do (what the model reads back)."""
    return record.model_dump_json(exclude={"schema_version"}).encode()


def fastest_redis(url: str) -> Redis:
    """redis-py at its best settings: hiredis (installed) and no per-call timeout."""
    return Redis.from_url(url, socket_timeout=None)


async def byte_contenders(url: str, closers: list[Any]) -> list[Contender]:
    """The backend on bytes vs raw redis-py GET / SET of the same bytes."""
    payload = sample_record().model_dump_json().encode()
    raw = fastest_redis(url)
    closers.append(raw.aclose)

    async def raw_get(i: int) -> Any:
        return await raw.get(f"raw:{i}")

    async def raw_set(i: int) -> Any:
        return await raw.set(f"raw:{i}", payload)

    contenders: list[Contender] = [("raw redis-py GET / SET", raw_get, raw_set)]
    for name, autopipeline in (("RedisBackend", True), ("RedisBackend, no autopipeline", False)):
        backend = build_redis_backend(url, {"autopipeline": autopipeline, "key_prefix": name[-4:]})
        closers.append(backend.close)
        keys = [Key("state", ("user-123", f"s{i}")) for i in range(KEYS)]
        contenders.append((name, *_backend_ops(backend, keys, payload)))
    return contenders


def _backend_ops(backend: RedisBackend, keys: list[Key], payload: bytes) -> tuple[Op, Op]:
    async def get(i: int) -> Any:
        return await backend.get(keys[i])

    async def put(i: int) -> Any:
        return await backend.put(keys[i], payload)

    return get, put


async def record_contenders(url: str, closers: list[Any]) -> list[Contender]:
    """Records in and out: raw redis-py + pydantic, the kvstore Database, the peers."""
    record = sample_record()
    model = StateRecord
    raw = fastest_redis(url)
    closers.append(raw.aclose)

    async def raw_get(i: int) -> Any:
        return model.model_validate_json(await raw.get(f"rawrec:{i}"))  # type: ignore[arg-type]

    async def raw_set(i: int) -> Any:
        return await raw.set(f"rawrec:{i}", dump(record))

    kv = create_database(DatabaseType.REDIS, url, key_prefix="db:")
    closers.append(kv.close)
    records = [record.model_copy(update={"session_id": f"s{i}"}) for i in range(KEYS)]

    async def kv_get(i: int) -> Any:
        return await kv.get_state("user-123", f"s{i}")

    async def kv_save(i: int) -> Any:
        return await kv.save_state(records[i])

    return [
        ("raw redis-py + pydantic", raw_get, raw_set),
        ("kvstore Database (Redis)", kv_get, kv_save),
        *peers(url, record, closers),
    ]


def peers(db_url: str, record: StateRecord, closers: list[Any]) -> list[Contender]:
    """litestar's RedisStore, aiocache and cashews storing the same JSON bytes (none if
    the bench extra is not installed)."""
    try:
        from aiocache import RedisCache
        from aiocache.serializers import NullSerializer
        from cashews import Cache
        from litestar.stores.redis import RedisStore
    except ImportError:
        print("(peers left out: pip install -e '.[bench]' to compare them)")
        return []
    model = StateRecord
    parts = urlsplit(db_url)
    db_number = int(parts.path.strip("/") or 0)

    litestar_client = fastest_redis(db_url)
    litestar = RedisStore(litestar_client, namespace="lit")
    closers.append(litestar_client.aclose)

    async def lit_get(i: int) -> Any:
        return model.model_validate_json(await litestar.get(f"{i}"))  # type: ignore[arg-type]

    async def lit_set(i: int) -> Any:
        return await litestar.set(f"{i}", dump(record))

    aio = RedisCache(
        serializer=NullSerializer(), endpoint=parts.hostname, port=parts.port, db=db_number
    )
    closers.append(aio.close)

    async def aio_get(i: int) -> Any:
        return model.model_validate_json(await aio.get(f"aio:{i}"))

    async def aio_set(i: int) -> Any:
        return await aio.set(f"aio:{i}", dump(record))

    cashews = Cache()
    cashews.setup(db_url)
    closers.append(cashews.close)

    async def cash_get(i: int) -> Any:
        return model.model_validate_json(await cashews.get(f"cash:{i}"))  # type: ignore[arg-type]

    async def cash_set(i: int) -> Any:
        return await cashews.set(f"cash:{i}", dump(record))

    return [
        ("litestar RedisStore", lit_get, lit_set),
        ("aiocache RedisCache", aio_get, aio_set),
        ("cashews", cash_get, cash_set),
    ]


def cycling(op: Op) -> Callable[[], Awaitable[Any]]:
    """``op`` over the key indexes in turn, one index per call (shared by the tasks)."""
    state = {"next": 0}

    def call() -> Awaitable[Any]:
        index = state["next"]
        state["next"] = (index + 1) % KEYS
        return op(index)

    return call


async def compare(what: str, contenders: list[Contender], seconds: float) -> None:
    """One table per operation and task count; the first contender is the baseline."""
    for _, _, save in contenders:
        for i in range(KEYS):
            await save(i)
    for tasks in (1, TASKS):
        for op_name, saving in (("get", False), ("save", True)):
            await measure(
                f"{what} {op_name}, {tasks} task(s)",
                seconds,
                [(name, cycling(save if saving else get)) for name, get, save in contenders],
                tasks,
            )


async def get_many(url: str, seconds: float) -> None:
    """One task reading 100 keys: one ``get_many`` vs 100 single gets, as bytes through
    the backend and as records through the Database (the ratio is keys/s to keys/s)."""
    payload = sample_record().model_dump_json().encode()
    backend = build_redis_backend(url, {"key_prefix": "many:"})
    keys = [Key("state", ("user-123", f"s{i}")) for i in range(100)]
    db = create_database(DatabaseType.REDIS, url, key_prefix="manydb:")
    ids = [("user-123", f"s{i}") for i in range(100)]
    try:
        for i, key in enumerate(keys):
            await backend.put(key, payload)
            await db.save_state(sample_record(f"s{i}"))

        async def backend_many() -> Any:
            return await backend.get_many(keys)

        one = cycling(lambda i: backend.get(keys[i % 100]))

        async def backend_hundred() -> Any:
            for _ in range(100):
                await one()

        async def db_many() -> Any:
            return await db.states.get_many(ids)  # type: ignore[attr-defined]

        async def db_hundred() -> Any:
            for i in range(100):
                await db.get_state("user-123", f"s{i}")

        await measure(
            "100 keys, one task: get_many vs 100 single gets (bytes, the backend)",
            seconds,
            [("100 single gets", backend_hundred), ("get_many of 100", backend_many)],
            1,
        )
        await measure(
            "100 keys, one task: get_many vs 100 single gets (records, the Database)",
            seconds,
            [("100 single gets", db_hundred), ("get_many of 100", db_many)],
            1,
        )
    finally:
        await backend.close()
        await db.close()


async def main(url: str | None, seconds: float) -> None:
    server = None
    if url is None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not on PATH; pass --url redis://host:port/db")
        server = RedisServer(Path(tempfile.mkdtemp(prefix="kvstore-bench-"))).start()
        url = server.url
    admin = Redis.from_url(url)
    await admin.flushdb()
    closers: list[Any] = []
    try:
        await compare("bytes", await byte_contenders(url, closers), seconds)
        await compare("records", await record_contenders(url, closers), seconds)
        await get_many(url, seconds)
    finally:
        for close in closers:
            await close()
        await admin.flushdb()
        await admin.aclose()
        if server is not None:
            server.stop()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a Redis database of the benchmark's own (it is flushed)")
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender and table")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.seconds))


if __name__ == "__main__":
    cli()
