"""One worker process of the history test: ``python -m tests.history.worker --help``.

It opens one tiered store (PostgreSQL + Redis), says ``{"event": "ready"}`` on stdout, then
obeys JSON commands read from stdin, one per line, answering each on stdout:

* ``{"cmd": "run"}``: start the random load (reads and last-writer-wins saves of the keys
  given on the command line) and answer ``running``; it goes on until ``{"cmd": "stop"}``
  (answered ``done``) or for ``--duration`` seconds (``--autorun``: at once, then quit);
* ``{"cmd": "save" | "get" | "delete", "key": "user/session"}``: one operation, answered with
  its log record (the test drives sequential histories across processes this way);
* ``{"cmd": "quit"}`` or end of input: close the store and exit 0.

Every operation is appended to ``--log`` as one JSON line, written when the operation ended:
``start`` and ``end`` are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every
process of the host), ``version``/``marker`` what was written or read, ``error`` the type
name of what was raised. A write is logged with a version only once it was acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict
from enum import Enum
from typing import TYPE_CHECKING, Any, TextIO

from kvstore import (
    BackendUnavailableError,
    Database,
    DatabaseType,
    KVStoreError,
    StateRecord,
    create_database,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

HANG_GUARD = 5.0
"""Seconds one store call may take; a longer one is logged as error ``Hang`` (not a kvstore
error type, so it fails the test: the store promises deadlines everywhere)."""
SETTLE_DEADLINE = 15.0
"""Seconds a store whose cache breaker opened at start-up may take to close it."""
OPEN_DEADLINE = 60.0
"""Seconds to open the store (connect, create tables) before giving up."""
CLOSE_DEADLINE = 15.0

LogRecord = dict[str, Any]


def key_parts(key: str) -> tuple[str, str]:
    """``"user/session"`` as ``(user_id, session_id)``; the test's ids never hold ``/``."""
    user, sep, session = key.partition("/")
    if not sep or not user or not session:
        raise ValueError(f"a key is user/session, got {key!r}")
    return user, session


class Worker:
    """The store of this process and the log of everything done with it."""

    def __init__(self, name: str, db: Database, log: TextIO) -> None:
        self.name = name
        self.db = db
        self.log = log
        self.writes = 0

    def record(self, entry: LogRecord) -> LogRecord:
        entry = {"w": self.name, **entry}
        self.log.write(json.dumps(entry, separators=(",", ":")) + "\n")
        return entry

    async def _op(
        self, op: str, key: str, call: Callable[[], Awaitable[StateRecord | bool | None]]
    ) -> LogRecord:
        entry: LogRecord = {"op": op, "key": key}
        start = time.monotonic_ns()
        guard = asyncio.timeout(HANG_GUARD)
        try:
            async with guard:
                result = await call()
        except Exception as exc:  # noqa: BLE001 - every error is logged; the checker judges
            end = time.monotonic_ns()
            hung = isinstance(exc, TimeoutError) and guard.expired()
            entry["error"] = "Hang" if hung else type(exc).__name__
            entry["error_type"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
            entry["kvstore"] = isinstance(exc, KVStoreError)
            entry["unavailable"] = isinstance(exc, BackendUnavailableError)
            entry["message"] = str(exc)[:300]
        else:
            end = time.monotonic_ns()
            if isinstance(result, StateRecord):
                entry["version"] = result.version
                entry["marker"] = result.data.get("w")
                entry["batch"] = result.data.get("batch")
            elif isinstance(result, bool):
                entry["deleted"] = result
            else:
                entry["version"] = None
        entry["start"] = start
        entry["end"] = end
        return self.record(entry)

    async def save(self, key: str) -> LogRecord:
        user, session = key_parts(key)
        self.writes += 1
        marker = f"{self.name}:{self.writes}"
        record = StateRecord(user_id=user, session_id=session, state="S", data={"w": marker})

        async def call() -> StateRecord:
            saved = await self.db.save_state(record)
            if saved.data.get("w") != marker:
                raise AssertionError(f"save_state returned {saved.data!r}, not {marker!r}")
            return saved

        return await self._op("write", key, call)

    async def get(self, key: str) -> LogRecord:
        user, session = key_parts(key)
        return await self._op("read", key, lambda: self.db.get_state(user, session))

    async def delete(self, key: str) -> LogRecord:
        user, session = key_parts(key)
        return await self._op("delete", key, lambda: self.db.delete_state(user, session))

    async def settle(self, deadline: float) -> LogRecord | None:
        """Reach the steady state before the test's load and fault: a tiered store whose
        cache did not answer in time at start-up (a loaded machine) begins with its breaker
        open and serves from SQL until a probe, ``breaker_reset_after`` later. Read a key of
        this worker's own (outside the history) every 100 ms until the breaker is closed, at
        most ``deadline`` seconds. Returns what it took, or ``None`` if nothing was needed."""
        stats = self.stats()
        if stats is None or stats.get("breaker", "closed") == "closed":
            return None
        began = time.monotonic()
        while time.monotonic() - began < deadline:
            await asyncio.sleep(0.1)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(HANG_GUARD):
                    await self.db.get_state(f"warmup-{self.name}", "s1")
            if (self.stats() or {}).get("breaker") == "closed":
                break
        return {
            "breaker": stats.get("breaker"),
            "seconds": round(time.monotonic() - began, 2),
            "closed": (self.stats() or {}).get("breaker") == "closed",
        }

    def stats(self) -> dict[str, Any] | None:
        """The tiered store's counters (``db.stats().tier``) as plain data, or ``None``
        without a cache tier."""
        value = self.db.stats().tier
        if value is None:
            return None
        plain = asdict(value)
        cleaned = {k: (v.value if isinstance(v, Enum) else v) for k, v in plain.items()}
        result: dict[str, Any] = json.loads(json.dumps(cleaned, default=str))
        return result


class Load:
    """The random load: ``concurrency`` tasks, each reading any key or saving one of the
    write keys (earlier write keys more often: some keys hot, some cold), until stopped."""

    def __init__(self, worker: Worker, args: argparse.Namespace) -> None:
        self.worker = worker
        self.keys: list[str] = args.keys
        self.write_keys: list[str] = args.write_keys
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.write_keys))]
        self.read_ratio: float = args.read_ratio
        self.pause = args.pause_ms / 1000
        self.seed: int = args.seed
        self.concurrency: int = args.concurrency
        self.stopping = asyncio.Event()
        self.ops = 0

    async def run(self, max_seconds: float) -> int:
        tasks = [asyncio.create_task(self._task(n)) for n in range(self.concurrency)]
        try:
            async with asyncio.timeout(max_seconds):
                await self.stopping.wait()
        except TimeoutError:
            self.stopping.set()
        await asyncio.gather(*tasks)
        return self.ops

    async def _task(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        while not self.stopping.is_set():
            if not self.write_keys or rng.random() < self.read_ratio:
                await self.worker.get(rng.choice(self.keys))
            else:
                await self.worker.save(rng.choices(self.write_keys, self.weights)[0])
            self.ops += 1
            await asyncio.sleep(rng.uniform(0, self.pause))


def arm_crash(after: int) -> None:
    """Make this process SIGKILL itself inside the tiered store's ``CacheUpdater.apply``
    call number ``after`` (that method applies a committed write to the cache, right after
    the SQL commit): the write is committed but neither cached nor acknowledged."""
    from backends.tiered.update import CacheUpdater

    original = getattr(CacheUpdater, "apply", None)
    if original is None:
        raise SystemExit("CacheUpdater.apply is gone: move the crash point with it")
    calls = 0

    async def crashing(self: CacheUpdater, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls >= after:
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)

    setattr(CacheUpdater, "apply", crashing)  # noqa: B010 - patching a method


def open_database(args: argparse.Namespace) -> Database:
    options: dict[str, Any] = dict(args.option)
    if args.skew:
        # The clock option is passed only when needed: a store without it refuses it with
        # ConfigurationError, which the worker reports instead of running unskewed.
        from kvstore.clock import SkewedClock

        options["clock"] = SkewedClock(args.skew)
    return create_database(
        DatabaseType.TIERED, connection_string=args.sql, cache_url=args.cache, **options
    )


def reply(message: LogRecord) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[LogRecord]) -> None:
    """Feed stdin's commands to ``queue`` (a daemon thread: never blocks the exit)."""
    for line in sys.stdin:
        if not line.strip():
            continue
        command: LogRecord = json.loads(line)
        loop.call_soon_threadsafe(queue.put_nowait, command)
        if command.get("cmd") == "quit":
            return
    loop.call_soon_threadsafe(queue.put_nowait, {"cmd": "quit"})


async def serve(args: argparse.Namespace, log: TextIO) -> int:
    try:
        db = open_database(args)
        async with asyncio.timeout(OPEN_DEADLINE):
            await db.initialize()
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails
        reply({"event": "failed", "error": type(exc).__name__, "message": str(exc)[:500]})
        return 3
    worker = Worker(args.name, db, log)
    warmup = await worker.settle(SETTLE_DEADLINE)
    opened = {"op": "open", "pid": os.getpid(), "skew": args.skew, "warmup": warmup}
    worker.record({**opened, "stats": worker.stats()})
    queue: asyncio.Queue[LogRecord] = asyncio.Queue()
    threading.Thread(
        target=read_commands, args=(asyncio.get_running_loop(), queue), daemon=True
    ).start()
    reply({"event": "ready", "pid": os.getpid()})
    load: Load | None = None
    running: asyncio.Task[int] | None = None
    if args.autorun:
        queue.put_nowait({"cmd": "run"})
        queue.put_nowait({"cmd": "stop", "when": "done"})
    try:
        while True:
            command = await queue.get()
            cmd = command.get("cmd")
            if cmd == "quit":
                break
            if cmd == "run" and running is None:
                load = Load(worker, args)
                running = asyncio.create_task(load.run(args.duration))
                reply({"event": "running"})
            elif cmd == "stop" and running is not None and load is not None:
                if command.get("when") != "done":
                    load.stopping.set()
                reply({"event": "done", "ops": await running})
                running = load = None
                if args.autorun:
                    break
            elif cmd in ("save", "get", "delete"):
                key = str(command["key"])
                operation = {"save": worker.save, "get": worker.get, "delete": worker.delete}
                reply({"event": "result", **(await operation[cmd](key))})
            else:
                reply({"event": "refused", "command": command})
    finally:
        if load is not None and running is not None:
            load.stopping.set()
            await running
        worker.record({"op": "stats", "stats": worker.stats()})
        async with asyncio.timeout(CLOSE_DEADLINE):
            await db.close()
    return 0


def store_option(text: str) -> tuple[str, Any]:
    """``NAME=JSON`` as ``(name, value)``: ``cache_timeout=0.5``, ``autopipeline=false``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"an option is NAME=JSON, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not JSON") from exc


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.history.worker", description=__doc__)
    parser.add_argument("--name", required=True, help="this worker's name in the logs")
    parser.add_argument("--sql", required=True, help="the PostgreSQL URL (system of record)")
    parser.add_argument("--cache", required=True, help="the Redis URL (maybe via a proxy)")
    parser.add_argument("--log", required=True, help="the JSON-lines log to append to")
    parser.add_argument("--keys", nargs="+", required=True, help="keys read: user/session")
    parser.add_argument("--write-keys", nargs="*", help="keys written (default: --keys)")
    parser.add_argument("--read-ratio", type=float, default=0.7)
    parser.add_argument("--concurrency", type=int, default=2, help="operations in flight")
    parser.add_argument("--pause-ms", type=float, default=2.0, help="max pause between ops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skew", type=float, default=0.0, help="wall clock offset, seconds")
    parser.add_argument(
        "--option",
        action="append",
        type=store_option,
        default=[],
        metavar="NAME=JSON",
        help="a create_database option, e.g. cache_timeout=0.5 (repeatable)",
    )
    parser.add_argument(
        "--crash-after", type=int, help="SIGKILL itself in the Nth cache update after a commit"
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds a run lasts unless stopped"
    )
    parser.add_argument(
        "--autorun", action="store_true", help="run at once for --duration seconds, then quit"
    )
    parser.add_argument(
        "--max-lifetime", type=int, default=300, help="seconds before SIGALRM ends the process"
    )
    args = parser.parse_args(argv)
    if args.write_keys is None:
        args.write_keys = list(args.keys)
    for key in [*args.keys, *args.write_keys]:
        key_parts(key)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.alarm(args.max_lifetime)  # a worker outliving a lost test still ends
    if args.crash_after is not None:
        arm_crash(args.crash_after)
    with open(args.log, "a", buffering=1, encoding="utf-8") as log:  # noqa: PTH123
        return asyncio.run(serve(args, log))


if __name__ == "__main__":
    sys.exit(main())
