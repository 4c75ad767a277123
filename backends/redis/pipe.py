"""Autopipelining: commands that concurrent tasks issue in one event-loop iteration go to
Redis as one pipeline, on one connection, in one write.

A caller that finds nothing queued and nothing in flight sends its command directly (no
extra loop iteration for a lone caller). Otherwise the command joins a queue that is sent
as one pipeline at the next loop iteration. redis-py's client-side CPU per call is the
bottleneck on a small machine, and one pipeline of N commands costs far less than N calls.

Scripts are sent as EVALSHA; a NOSCRIPT answer (server restarted, ``SCRIPT FLUSH``) is
retried once as EVAL, which caches the script again.

On a plain ``redis.asyncio.Redis`` client (standalone or Sentinel; not Cluster, not a
subclass such as fakeredis) commands skip redis-py's per-call machinery: they are packed by
hiredis in C, written on a connection taken from the client's own pool, and their raw
replies read back (no response callbacks: the backend only sends commands whose raw reply
it expects). Connection errors and cancellations disconnect that connection, as redis-py
does; error replies are raised (single command) or returned in place (batches).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.client import NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from backends.deadline import deadline

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio.connection import AbstractConnection, ConnectionPool
    from redis.typing import EncodableT

    from backends.redis.lua import Script

Command = tuple["EncodableT", ...]
_RAW: dict[str, Any] = {NEVER_DECODE: True}
"""Replies stay bytes even on a client made with ``decode_responses=True``."""


def _first_key(command: Command) -> EncodableT | None:
    """The first key ``command`` names (scripts: after the key count)."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return command[3] if int(command[2]) > 0 else None
    return command[1] if len(command) > 1 else None


class AutoPipeline:
    """Sends commands for many concurrent callers in as few round trips as possible."""

    def __init__(
        self, client: Redis | RedisCluster, *, timeout: float, enabled: bool = True
    ) -> None:
        self.client = client
        self.enabled = enabled
        self.cluster = isinstance(client, RedisCluster)
        """Whether the client is a Redis Cluster client (asked once: the check is slow)."""
        self.timeout = timeout
        self._pool: ConnectionPool | None = (
            client.connection_pool if type(client) is Redis and not client.connection else None
        )
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._in_flight = 0
        self._replies = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def replies(self) -> int:
        """Round trips answered so far, on any connection (the progress a deadline watches:
        a server that answers others is not the one that is slow)."""
        return self._replies

    async def call(self, *command: EncodableT) -> Any:
        """Run one command; its result, or its error raised."""
        if not self.enabled or (not self._queue and self._in_flight == 0):
            self._in_flight += 1
            try:
                if self._pool is not None:
                    return (await self._wire([command], raise_on_error=True))[0]
                result = await self.client.execute_command(*command, **_RAW)
                self._replies += 1
                return result
            finally:
                self._in_flight -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((command, future))
        return await future

    async def script(self, script: Script, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run ``script`` by EVALSHA, falling back to EVAL on NOSCRIPT."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.body, len(keys), *keys, *args)

    async def batch(self, commands: Sequence[Command]) -> list[Any]:
        """Run ``commands`` in one pipeline; results (or exception objects) in order."""
        if not commands:
            return []
        if self._pool is not None:
            self._in_flight += 1
            try:
                return await self._wire(commands, raise_on_error=False)
            finally:
                self._in_flight -= 1
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_RAW)
        self._in_flight += 1
        try:
            results: list[Any] = await pipe.execute(raise_on_error=False)
        except RedisConnectionError:
            if self.cluster:
                await self._rediscover(commands[0])
            raise
        finally:
            self._in_flight -= 1
        self._replies += 1
        if self.cluster:
            for command, result in zip(commands, results, strict=True):
                if isinstance(result, RedisConnectionError):
                    await self._rediscover(command)
                    break
        return results

    async def _rediscover(self, command: Command) -> None:
        """A Cluster pipeline that met a dead node leaves redis-py's slot map as it was (a
        single command that fails refreshes it before the next call): send one cheap
        single command to a key of ``command``, so the next call finds a failover's new
        primary instead of the dead one."""
        key = _first_key(command)
        if key is not None:
            with contextlib.suppress(RedisError):
                await self.client.execute_command("EXISTS", key)

    async def scripts(
        self, calls: Sequence[tuple[Script, Sequence[str], Sequence[EncodableT]]]
    ) -> list[Any]:
        """Run many script calls in one pipeline (EVAL again where NOSCRIPT); results or
        error replies (:class:`ResponseError` objects) in order. A lone call goes as
        :meth:`script`, so it shares a pipeline with other callers' concurrent commands."""
        if len(calls) == 1:
            script, keys, args = calls[0]
            try:
                return [await self.script(script, keys, args)]
            except ResponseError as exc:
                return [exc]
        results = await self.batch(
            [("EVALSHA", s.sha, len(keys), *keys, *args) for s, keys, args in calls]
        )
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            retried = await self.batch(
                [
                    ("EVAL", calls[i][0].body, len(calls[i][1]), *calls[i][1], *calls[i][2])
                    for i in missing
                ]
            )
            for i, result in zip(missing, retried, strict=True):
                results[i] = result
        return results

    def _flush(self) -> None:
        queued, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(queued))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, queued: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        live = [(command, future) for command, future in queued if not future.cancelled()]
        if not live:
            return
        try:
            async with deadline(self.timeout, progress=self.replies):
                results = await self._send_live([command for command, _ in live])
        except BaseException as exc:
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _wire(self, commands: Sequence[Command], *, raise_on_error: bool) -> list[Any]:
        """Send ``commands`` in one write on one pooled connection; raw replies in order."""
        assert self._pool is not None
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            if len(commands) == 1:
                packed = pack_command(commands[0])  # type: ignore[arg-type]
            else:
                packed = b"".join(pack_command(c) for c in commands)  # type: ignore[arg-type]
            await connection.send_packed_command(packed, check_health=True)
            results: list[Any] = []
            for _ in commands:
                try:
                    results.append(await connection.read_response(disable_decoding=True))
                except ResponseError as exc:
                    if raise_on_error:
                        raise
                    results.append(exc)
            self._replies += 1
            return results
        except ResponseError:
            raise
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)

    async def _send_live(self, commands: list[Command]) -> list[Any]:
        if len(commands) > 1:
            return await self.batch(commands)
        self._in_flight += 1
        try:
            if self._pool is not None:
                return await self._wire(commands, raise_on_error=False)
            result = await self.client.execute_command(*commands[0], **_RAW)
            self._replies += 1
            return [result]
        except Exception as exc:  # noqa: BLE001 - handed to the caller as its result
            return [exc]
        finally:
            self._in_flight -= 1

    async def aclose(self) -> None:
        """Wait for pipelines already sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
