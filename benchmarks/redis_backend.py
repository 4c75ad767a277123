"""Redis backend vs raw redis-py and peer libraries, on the same ~1.2 KB record.

Run: ``python -m benchmarks.redis_backend`` (a few seconds; ``--seconds`` for longer runs).
It starts a private ``redis-server`` on a free loopback port (or uses ``--url``, which must
name a database of its own: it is flushed) and prints ops/s and ratios to raw redis-py with
default settings doing the same GET / SET of the same serialized record, and pydantic on
the caller side: 1 task and 32 concurrent tasks. The kvstore rows run with their timeouts
on (``socket_timeout`` 1 s as one deadline per operation). Rounds alternate between the
contenders so drift hits all alike; the best round counts.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from redis.asyncio import Redis

from backends.redis import build_redis_backend
from kvstore import DatabaseType, StateRecord, create_database
from kvstore.keys import Key
from tests.redis_servers import RedisServer

if TYPE_CHECKING:
    from backends.redis import RedisBackend

Op = Callable[[int], Awaitable[Any]]
TASKS = 32
BASE = "raw redis-py (defaults)"
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


async def rate(op: Op, tasks: int, seconds: float) -> float:
    """Operations per second of ``op`` run by ``tasks`` concurrent loops."""
    done = 0
    stop = time.perf_counter() + seconds

    async def loop(worker: int) -> None:
        nonlocal done
        i = worker
        while time.perf_counter() < stop:
            await op(i % KEYS)
            i += tasks
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(tasks)))
    return done / (time.perf_counter() - start)


Table = dict[str, tuple[Op, Op]]


async def byte_contenders(url: str, closers: list[Any]) -> Table:
    """The backend on bytes vs raw redis-py GET / SET of the same bytes."""
    payload = sample_record().model_dump_json().encode()
    raw = Redis.from_url(url)
    closers.append(raw.aclose)
    table: Table = {}

    async def raw_get(i: int) -> Any:
        return await raw.get(f"raw:{i}")

    async def raw_set(i: int) -> Any:
        return await raw.set(f"raw:{i}", payload)

    table[BASE] = (raw_get, raw_set)
    for name, autopipeline in (("RedisBackend", True), ("RedisBackend, no autopipeline", False)):
        backend = build_redis_backend(url, {"autopipeline": autopipeline, "key_prefix": name[-4:]})
        closers.append(backend.close)
        keys = [Key("state", ("user-123", f"s{i}")) for i in range(KEYS)]
        table[name] = _backend_ops(backend, keys, payload)
    for _, save in table.values():
        for i in range(KEYS):
            await save(i)
    return table


def _backend_ops(backend: RedisBackend, keys: list[Key], payload: bytes) -> tuple[Op, Op]:
    async def get(i: int) -> Any:
        return await backend.get(keys[i])

    async def put(i: int) -> Any:
        return await backend.put(keys[i], payload)

    return get, put


async def record_contenders(url: str, closers: list[Any]) -> Table:
    """name -> (get op, save op) on records: raw redis-py + pydantic, kvstore, peers."""
    record = sample_record()
    model = StateRecord
    raw = Redis.from_url(url)
    closers.append(raw.aclose)

    async def raw_get(i: int) -> Any:
        return model.model_validate_json(await raw.get(f"rawrec:{i}"))  # type: ignore[arg-type]

    async def raw_set(i: int) -> Any:
        return await raw.set(f"rawrec:{i}", dump(record))

    table: Table = {BASE: (raw_get, raw_set)}
    kv = create_database(DatabaseType.REDIS, url, key_prefix="db:")
    closers.append(kv.close)
    records = [record.model_copy(update={"session_id": f"s{i}"}) for i in range(KEYS)]

    async def kv_get(i: int) -> Any:
        return await kv.get_state("user-123", f"s{i}")

    async def kv_save(i: int) -> Any:
        return await kv.save_state(records[i])

    table["kvstore Database (Redis)"] = (kv_get, kv_save)
    table.update(await peers(url, record, closers))
    for _, save in table.values():
        for i in range(KEYS):
            await save(i)
    return table


async def peers(db_url: str, record: StateRecord, closers: list[Any]) -> Table:
    """aiocache, cashews and litestar's RedisStore storing the same JSON bytes."""
    from aiocache import RedisCache
    from aiocache.serializers import NullSerializer
    from cashews import Cache
    from litestar.stores.redis import RedisStore

    model = StateRecord
    parts = urlsplit(db_url)
    db_number = int(parts.path.strip("/") or 0)
    table: Table = {}

    litestar = RedisStore(Redis.from_url(db_url), namespace="lit")
    closers.append(litestar._redis.aclose)

    async def lit_get(i: int) -> Any:
        return model.model_validate_json(await litestar.get(f"{i}"))  # type: ignore[arg-type]

    async def lit_set(i: int) -> Any:
        return await litestar.set(f"{i}", dump(record))

    table["litestar RedisStore"] = (lit_get, lit_set)

    aio = RedisCache(
        serializer=NullSerializer(), endpoint=parts.hostname, port=parts.port, db=db_number
    )
    closers.append(aio.close)

    async def aio_get(i: int) -> Any:
        return model.model_validate_json(await aio.get(f"aio:{i}"))

    async def aio_set(i: int) -> Any:
        return await aio.set(f"aio:{i}", dump(record))

    table["aiocache RedisCache"] = (aio_get, aio_set)

    cashews = Cache()
    cashews.setup(db_url)
    closers.append(cashews.close)

    async def cash_get(i: int) -> Any:
        return model.model_validate_json(await cashews.get(f"cash:{i}"))  # type: ignore[arg-type]

    async def cash_set(i: int) -> Any:
        return await cashews.set(f"cash:{i}", dump(record))

    table["cashews"] = (cash_get, cash_set)
    return table


async def get_many_ratios(url: str, seconds: float, rounds: int) -> dict[str, tuple[float, float]]:
    """Keys per second, one task: a batch of 100 keys vs single gets, as bytes through the
    backend and as records through the Database."""
    payload = sample_record().model_dump_json().encode()
    backend = build_redis_backend(url, {"key_prefix": "many:"})
    keys = [Key("state", ("user-123", f"s{i}")) for i in range(100)]
    db = create_database(DatabaseType.REDIS, url, key_prefix="manydb:")
    ids = [("user-123", f"s{i}") for i in range(100)]
    try:
        for i, key in enumerate(keys):
            await backend.put(key, payload)
            await db.save_state(sample_record(f"s{i}"))

        async def backend_many(_i: int) -> Any:
            return await backend.get_many(keys)

        async def backend_one(i: int) -> Any:
            return await backend.get(keys[i % 100])

        async def db_many(_i: int) -> Any:
            return await db.states.get_many(ids)  # type: ignore[attr-defined]

        async def db_one(i: int) -> Any:
            return await db.get_state("user-123", f"s{i % 100}")

        pairs = {
            "backend, bytes": (backend_many, backend_one),
            "Database, records": (db_many, db_one),
        }
        best = dict.fromkeys(pairs, (0.0, 0.0))
        for _ in range(rounds):
            for name, (many, one) in pairs.items():
                batch = await rate(many, 1, seconds) * 100
                single = await rate(one, 1, seconds)
                best[name] = (max(best[name][0], batch), max(best[name][1], single))
    finally:
        await backend.close()
        await db.close()
    return best


async def measure(table: Table, seconds: float, rounds: int) -> dict[tuple[str, str, int], float]:
    """Best ops/s per (contender, op, tasks) over alternating short rounds."""
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(rounds):
        for tasks in (1, TASKS):
            for op_name, pick in (("get", 0), ("save", 1)):
                for name, ops in table.items():
                    ops_s = await rate(ops[pick], tasks, seconds)
                    key = (name, op_name, tasks)
                    best[key] = max(best.get(key, 0.0), ops_s)
    return best


async def main(url: str | None, seconds: float, rounds: int) -> None:
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
        bytes_table = await byte_contenders(url, closers)
        bytes_best = await measure(bytes_table, seconds, rounds)
        records_table = await record_contenders(url, closers)
        records_best = await measure(records_table, seconds, rounds)
        many = await get_many_ratios(url, seconds, rounds)
    finally:
        for close in closers:
            await close()
        await admin.flushdb()
        await admin.aclose()
        if server is not None:
            server.stop()
    print("\nBytes: the backend vs raw redis-py GET / SET of the same serialized record\n")
    report(bytes_table, bytes_best)
    print("\nRecords: pydantic model in and out, vs raw redis-py + pydantic\n")
    report(records_table, records_best)
    print("\n| get_many of 100 keys, one task | batch keys/s | single gets keys/s | ratio |")
    print("|---|---|---|---|")
    for name, (batch, one) in many.items():
        print(f"| {name} | {batch:,.0f} | {one:,.0f} | {batch / one:.1f}x |")


def report(table: Table, best: dict[tuple[str, str, int], float]) -> None:
    """Print the ratio table as markdown."""
    columns = [(op, tasks) for tasks in (1, TASKS) for op in ("get", "save")]
    header = " | ".join(f"{op} x{tasks}" for op, tasks in columns)
    print(f"| ratio to raw redis-py (ops/s) | {header} |")
    print("|---" * (len(columns) + 1) + "|")
    for name in table:
        cells = []
        for op, tasks in columns:
            value = best[(name, op, tasks)]
            cells.append(f"{value / best[(BASE, op, tasks)]:.2f} ({value:,.0f})")
        print(f"| {name} | {' | '.join(cells)} |")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", help="a Redis database of the benchmark's own (it is flushed)")
    parser.add_argument("--seconds", type=float, default=0.1, help="per measurement")
    parser.add_argument("--rounds", type=int, default=8, help="best of this many")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.seconds, args.rounds))


if __name__ == "__main__":
    cli()
