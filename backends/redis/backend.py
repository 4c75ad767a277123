"""The Redis backend on ``redis.asyncio``: a store of its own, and the tiered store's cache.

Layout of keys and values: :mod:`backends.redis.format`; Lua scripts: :mod:`backends.redis.lua`;
URLs and options: :mod:`backends.redis.connect`; concurrent callers share pipelines:
:mod:`backends.redis.pipe`. Reads are a plain GET / MGET of a packed string; every write is
one Lua script, atomic per key. A per-(owner, namespace) sorted set indexes the owner's keys
for ordered listings and erasure, so no operation ever scans the keyspace (no KEYS, no SCAN).

Every operation runs under one deadline (``socket_timeout``); idempotent ones are retried
with exponential backoff on connection errors. Any driver error (timeouts included) becomes
:class:`~kvstore.errors.BackendUnavailableError` with the driver exception chained.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from backends.base import (
    Backend,
    CacheLookup,
    Capabilities,
    Entry,
    VersionedCache,
    check_listing,
    version_conflict,
)
from backends.deadline import deadline
from backends.redis import lua
from backends.redis.connect import Closer, ConnectionSettings, check_url, connect
from backends.redis.format import (
    DEFAULT_KEY_PREFIX,
    Layout,
    from_us,
    member,
    member_key,
    pack,
    pack_tombstone,
    to_us,
    unpack,
)
from backends.redis.pipe import AutoPipeline
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import (
    BackendUnavailableError,
    CacheLostError,
    ConfigurationError,
    DatabaseClosedError,
    InvalidRecordError,
)
from kvstore.keys import DEFAULT_PAGE_SIZE, Key, check_component, check_namespace, decode_redis_key
from kvstore.urls import mask_url

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from datetime import datetime

    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.typing import EncodableT

    from kvstore.clock import Clock
    from kvstore.options import RedisOptions

T = TypeVar("T")
Stale = list[tuple[bytes, str]]
Commands = list[tuple["EncodableT", ...]]
Lookups = list[CacheLookup]
Positions = list[int]

DEFAULT_TOMBSTONE_TTL: Final = 3600.0
"""Seconds a tombstone lives when neither the call nor the backend gives a cache TTL."""

_DRIVER_ERRORS: Final = (RedisError, RedisClusterException, OSError)
"""What redis-py raises (a Cluster client's start-up failures are not RedisErrors); OSError
covers asyncio's TimeoutError."""
_ERASE_ATTEMPTS: Final = 8


class NewIncarnationError(RedisError):
    """A new connection met another server incarnation than the cache generation's."""


async def _ignore(_error: Exception) -> None:
    """Failure hook for :meth:`Retry.call_with_retry`: nothing to clean up."""


class RedisBackend(Backend, VersionedCache):
    """Entries as packed strings in Redis, indexed per owner and namespace."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, shared=True, versioned_cache=True, bulk=True
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        settings: ConnectionSettings | None = None,
        autopipeline: bool = True,
        cache_ttl: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("give exactly one of url and client")
        if cache_ttl is not None and not cache_ttl > 0:
            raise ConfigurationError("cache_ttl must be positive seconds, or None")
        self.clock = clock
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._layout = Layout(key_prefix)
        self._settings = settings or ConnectionSettings()
        self._autopipeline = autopipeline
        self._cache_ttl = cache_ttl
        self._timeout = self._settings.socket_timeout
        self._retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.01),
            self._settings.max_retries,
            supported_errors=(RedisConnectionError,),
        )
        self._prefix = key_prefix
        self._incarnation: str | None = None
        self._node_runs: dict[str, str] = {}
        """On a Cluster: each primary's ``run_id`` in the incarnation in use."""
        self._seen_runs: dict[str, str] = {}
        """On a Cluster: the ``run_id`` each node gave on its newest connection."""
        self._seen_incarnation: str | None = None
        self._pipe: AutoPipeline | None = None
        self._closers: list[Closer] = []
        self._closed = False
        self.description = mask_url(url) if url is not None else "injected client"

    def __repr__(self) -> str:
        return f"RedisBackend({self.description})"

    # -- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """Build the client if needed and check the server answers."""
        await self.ping()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.aclose()
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            try:
                if isinstance(client, RedisCluster):
                    await client.aclose()
                else:
                    await client.aclose(close_connection_pool=True)
                for closer in self._closers:
                    await closer()
            except _DRIVER_ERRORS as exc:
                raise self._unavailable("close", exc) from exc

    def _ready(self) -> AutoPipeline:
        pipe = self._pipe
        if pipe is not None:
            return pipe
        if self._closed:
            raise DatabaseClosedError("the Redis backend is closed")
        if self._client is None:
            assert self._url is not None
            self._client, self._closers = connect(
                self._url, self._settings, on_connect=self._check_incarnation
            )
        self._pipe = AutoPipeline(self._client, timeout=self._timeout, enabled=self._autopipeline)
        return self._pipe

    @property
    def _cluster(self) -> bool:
        return isinstance(self._client, RedisCluster)

    # -- error mapping and retries -------------------------------------------------------

    def _unavailable(self, op: str, exc: BaseException) -> BackendUnavailableError:
        if isinstance(exc, NewIncarnationError):
            return CacheLostError(f"Redis {op}: {exc}")
        detail = str(exc) or "no answer in time"
        return BackendUnavailableError(
            f"Redis {op} failed on {self.description}: {type(exc).__name__}: {detail}"
        )

    async def _idempotent(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` under the deadline, retried with backoff on connection errors."""
        try:
            async with self._deadline():
                return await self._retry.call_with_retry(make, _ignore)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(op, exc) from exc

    async def _once(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` under the deadline, never retried (not idempotent)."""
        try:
            async with self._deadline():
                return await make()
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(op, exc) from exc

    def _deadline(self) -> deadline:
        """``socket_timeout`` for one operation, not used up while the caller's loop stalls
        or while the server answers other calls (see :mod:`backends.deadline`)."""
        return deadline(self._timeout, progress=self._ready().replies)

    def _checked(self, op: str, results: list[Any]) -> list[Any]:
        for result in results:
            if isinstance(result, Exception):
                raise self._unavailable(op, result) from result
        return results

    # -- Backend -------------------------------------------------------------------------

    async def get(self, key: Key) -> Entry | None:
        name = self._layout.record(key)
        pipe = self._ready()
        data = await self._idempotent("get", lambda: pipe.call("GET", name))
        return self._current(data)

    async def get_many(self, keys: Sequence[Key]) -> list[Entry | None]:
        if not keys:
            return []
        values = await self._read_values(keys)
        return [self._current(data) for data in values]

    def _current(self, data: bytes | None) -> Entry | None:
        """The entry ``data`` holds, or ``None`` for nothing, a tombstone, or an entry past
        its ``expires_at`` (Redis's own expiry is whole milliseconds, and the store's clock
        decides: expired means absent, on every backend)."""
        if data is None:
            return None
        entry = unpack(data)
        if entry is None or entry.expires_at is None or entry.expires_at > self.clock.now():
            return entry
        return None

    async def _read_values(
        self, keys: Sequence[Key], *, marked: bool = False
    ) -> list[bytes | None]:
        """The raw values of ``keys``. ``marked``: also check the generation marker (a cache
        on a standalone server) and raise :class:`CacheLostError` if it is gone, or if the
        generation changed while the read was in flight (a retry may then have read the old
        generation's keys from a new server incarnation)."""
        layout = self._layout
        names = [layout.record(key) for key in keys]
        pipe = self._ready()
        if not self._cluster:
            if marked:
                names.append(layout.marker)  # a Cluster keeps no marker
            values: list[bytes | None] = await self._idempotent(
                "get_many", lambda: pipe.call("MGET", *names)
            )
            if marked and (values.pop() is None or self._layout is not layout):
                raise CacheLostError("Redis lookup: the generation marker is gone")
            return values
        slots: dict[str, list[int]] = {}  # one MGET per owner: one hash slot each
        for position, key in enumerate(keys):
            slots.setdefault(key.owner, []).append(position)
        groups = list(slots.values())
        commands = [("MGET", *(names[i] for i in group)) for group in groups]
        results = self._checked(
            "get_many", await self._idempotent("get_many", lambda: pipe.batch(commands))
        )
        if marked and self._layout is not layout:
            raise CacheLostError("Redis lookup: the cache generation changed meanwhile")
        out: list[bytes | None] = [None] * len(keys)
        for group, found in zip(groups, results, strict=True):
            for position, data in zip(group, found, strict=True):
                out[position] = data
        return out

    async def put(
        self,
        key: Key,
        value: bytes,
        *,
        expected_version: int | None = None,
        ttl: float | None = None,
    ) -> Entry:
        if expected_version is not None and expected_version < 0:
            raise InvalidRecordError("expected_version must be >= 0")
        now = self.clock.now()
        expires_at = None
        px = 0
        if ttl is not None:
            if not ttl > 0:
                raise InvalidRecordError("ttl must be positive seconds")
            expires_at = now + timedelta(seconds=ttl)
            px = max(1, round(ttl * 1000))
        name = self._layout.record(key)
        keys = (
            name,
            *self._layout.owner_keys(key.owner, key.namespace),
            self._layout.revision_counter(key.owner),
        )
        meta = b"%d:%d:%d:%d" % (
            to_us(now),
            -1 if expected_version is None else expected_version,
            px,
            to_us(expires_at) if expires_at is not None else 0,
        )
        args = (meta, value, member(key.rest), key.namespace)
        pipe = self._ready()
        ok, version, created, revision = await self._once(
            "put", lambda: pipe.script(lua.PUT, keys, args)
        )
        if not ok:
            assert expected_version is not None
            raise version_conflict(expected_version, version)
        return Entry(bytes(value), version, from_us(int(created)), now, expires_at, revision)

    async def delete(self, key: Key, *, expected_version: int | None = None) -> int:
        if expected_version is not None and expected_version < 0:
            raise InvalidRecordError("expected_version must be >= 0")
        keys = (
            self._layout.record(key),
            self._layout.owner_keys(key.owner, key.namespace)[0],
            self._layout.revision_counter(key.owner),
        )
        args = (-1 if expected_version is None else expected_version, member(key.rest))
        pipe = self._ready()
        ok, version, revision = await self._once(
            "delete", lambda: pipe.script(lua.DELETE, keys, args)
        )
        if not ok:
            assert expected_version is not None
            raise version_conflict(expected_version, version)
        return int(revision)

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> list[tuple[Key, Entry]]:
        check_listing(namespace, prefix, after, limit)
        owner = prefix[0]
        low = member(prefix[1:])
        start = b"[" + low
        if after is not None:
            mine = member(prefix[:1])
            encoded_after = member(after)
            if encoded_after.startswith(mine):
                if encoded_after[len(mine) :] >= low:
                    start = b"(" + encoded_after[len(mine) :]
            elif encoded_after > mine:
                return []
        stop = b"(" + low + b"\xff"
        index = self._layout.index(owner, namespace)
        pipe = self._ready()
        page: list[tuple[Key, Entry]] = []
        while len(page) < limit:
            want = limit - len(page)
            command = ("ZRANGEBYLEX", index, start, stop, "LIMIT", 0, want)
            members: list[bytes] = await self._idempotent(
                "list",
                lambda command=command: pipe.call(*command),  # type: ignore[misc]
            )
            if not members:
                break
            keys = [member_key(owner, namespace, item) for item in members]
            names = [self._layout.record(key) for key in keys]
            values = await self._idempotent(
                "list",
                lambda names=names: pipe.call("MGET", *names),  # type: ignore[misc]
            )
            stale: Stale = []
            for item, key, name, data in zip(members, keys, names, values, strict=True):
                if data is None:
                    stale.append((item, name))
                    continue
                entry = self._current(data)
                if entry is not None:
                    page.append((key, entry))
            if stale:
                await self._forget(index, stale)
            if len(members) < want:
                break
            start = b"(" + members[-1]
        return page

    async def _forget(self, index: str, stale: Sequence[tuple[bytes, str]]) -> None:
        """Drop index members whose record and lease are gone (expired)."""
        calls = [
            (lua.FORGET, (index, name, self._layout.lease(name)), (item,)) for item, name in stale
        ]
        pipe = self._ready()
        self._checked("list", await self._once("list", lambda: pipe.scripts(calls)))

    async def delete_owner(self, owner: str) -> int:
        check_component(owner, "owner")
        return await self._erase(owner, "delete_owner")

    async def _erase(self, owner: str, op: str) -> int:
        """Erase every key of ``owner`` found through its index, in one script that first
        checks the index is unchanged (else read again); count the live records removed."""
        ns_set = self._layout.namespaces(owner)
        counter = self._layout.revision_counter(owner)
        epoch = self._layout.erase_epoch(owner)
        lifetime = int(MAX_LEASE_TTL * 1000)
        # nothing indexed: leases may still be out, and a new epoch fences them
        bare: list[tuple[EncodableT, ...]] = [
            ("UNLINK", counter),
            ("INCR", epoch),
            ("PEXPIRE", epoch, lifetime),
        ]
        pipe = self._ready()
        for _ in range(_ERASE_ATTEMPTS):
            found: list[bytes] = await self._idempotent(op, lambda: pipe.call("SMEMBERS", ns_set))
            if not found:
                self._checked(op, await self._idempotent(op, lambda: pipe.batch(bare)))
                return 0
            namespaces = sorted(ns.decode() for ns in found)
            indexes = [self._layout.index(owner, ns) for ns in namespaces]
            ranges = [("ZRANGE", index, 0, -1) for index in indexes]
            listed = self._checked(
                op,
                await self._idempotent(
                    op,
                    lambda ranges=ranges: pipe.batch(ranges),  # type: ignore[misc]
                ),
            )
            records = [
                self._layout.record(member_key(owner, ns, item))
                for ns, items in zip(namespaces, listed, strict=True)
                for item in items
            ]
            leases = (self._layout.lease(name) for name in records)
            keys = [ns_set, *indexes, *records, *leases, counter, epoch]
            args: list[EncodableT] = [len(indexes), len(records), lifetime]
            args += [len(items) for items in listed]
            args += [item for items in listed for item in items]
            removed = await self._idempotent(
                op,
                lambda keys=keys, args=args: pipe.script(lua.ERASE, keys, args),  # type: ignore[misc]
            )
            if removed >= 0:
                return int(removed)
        raise BackendUnavailableError(
            f"Redis {op} gave up: the keys of one owner kept changing during {_ERASE_ATTEMPTS} "
            "attempts"
        )

    # -- bulk export and import ----------------------------------------------------------

    async def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """Every live entry in key order (namespace, owner, rest). With ``owner`` it reads
        that owner's index; without, it first finds every owner by SCAN for the owners'
        namespace-set keys (the one place SCAN is used; the pattern has no user input) and
        keeps the owner ids in memory, never the entries."""
        if batch_size <= 0:
            raise InvalidRecordError("batch_size must be positive")
        if namespace is not None:
            check_namespace(namespace)
        owners = [check_component(owner, "owner")] if owner is not None else await self._owners()
        pipe = self._ready()
        sets = [self._layout.namespaces(name) for name in owners]
        found: builtins.list[builtins.list[bytes]] = []
        for start in range(0, len(sets), batch_size):
            chunk = [("SMEMBERS", name) for name in sets[start : start + batch_size]]
            found += self._checked(
                "scan",
                await self._idempotent(
                    "scan",
                    lambda chunk=chunk: pipe.batch(chunk),  # type: ignore[misc]
                ),
            )
        by_namespace: dict[str, builtins.list[str]] = {}
        for name, namespaces in zip(owners, found, strict=True):
            for raw in namespaces:
                by_namespace.setdefault(raw.decode(), []).append(name)
        wanted = sorted(by_namespace) if namespace is None else [namespace]
        for space in wanted:
            for name in sorted(by_namespace.get(space, []), key=str.encode):
                after: tuple[str, ...] | None = None
                while True:
                    page = await self.list(space, (name,), after=after, limit=batch_size)
                    for item in page:
                        yield item
                    if len(page) < batch_size:
                        break
                    after = page[-1][0].components

    async def _owners(self) -> builtins.list[str]:
        """Every owner that has a namespace set, found by SCAN on every (primary) node."""
        prefix = self._layout.prefix
        pattern = f"{prefix}{{*}}\\*n"
        client = self._ready().client
        owners: set[str] = set()
        try:
            async with asyncio.timeout(self._timeout * 100):
                async for name in client.scan_iter(match=pattern, count=1000):
                    text = name.decode() if isinstance(name, bytes) else str(name)
                    owners.add(decode_redis_key(text[: -len("*n")] + ":x", prefix).owner)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable("scan", exc) from exc
        return sorted(owners, key=str.encode)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """Write entries as given (version, timestamps, expiry) where the key is absent or
        holds an older version; pipelines of one script per entry. Idempotent."""
        calls: builtins.list[tuple[lua.Script, tuple[str, ...], tuple[EncodableT, ...]]] = []
        for key, entry in items:
            px = self._px(None, entry.expires_at, None) if entry.expires_at is not None else 0
            keys = (
                self._layout.record(key),
                *self._layout.owner_keys(key.owner, key.namespace),
                self._layout.revision_counter(key.owner),
            )
            unrevised = pack(entry).split(b":", 2)[2]
            args = (unrevised, px, entry.version, member(key.rest), key.namespace)
            calls.append((lua.RESTORE, keys, args))
        written = 0
        pipe = self._ready()
        for start in range(0, len(calls), 500):
            chunk = calls[start : start + 500]
            results = self._checked(
                "restore",
                await self._idempotent(
                    "restore",
                    lambda chunk=chunk: pipe.scripts(chunk),  # type: ignore[misc]
                ),
            )
            written += sum(1 for result in results if result == 1)
        return written

    def _cache_keys(self, key: Key) -> tuple[str, ...]:
        layout = self._layout
        name = layout.record(key)
        keys = (
            name,
            layout.lease(name),
            *layout.owner_keys(key.owner, key.namespace),
            layout.erase_epoch(key.owner),
        )
        return (*keys, layout.marker) if self._marked else keys

    @property
    def _marked(self) -> bool:
        """Whether cache calls check the generation marker: once a generation is in use
        (:meth:`use_generation`), on a standalone server (a Cluster keeps no marker)."""
        return self._incarnation is not None and not self._cluster

    # -- VersionedCache ------------------------------------------------------------------

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> Lookups:
        if not keys:
            return []
        if not 0 < lease_ttl <= MAX_LEASE_TTL:
            raise InvalidRecordError(f"lease_ttl must be positive seconds, at most {MAX_LEASE_TTL}")
        values = await self._read_values(keys, marked=self._incarnation is not None)
        answers: Lookups = []
        misses: Positions = []
        for position, data in enumerate(values):
            entry = None if data is None else unpack(data)
            answers.append(CacheLookup(entry))
            if entry is None:
                misses.append(position)
        if not misses:
            return answers
        lease_ms = max(1, round(lease_ttl * 1000))
        tokens = [secrets.token_hex(16) for _ in misses]
        calls = [
            (lua.LEASE, self._cache_keys(keys[i]), (token, lease_ms))
            for i, token in zip(misses, tokens, strict=True)
        ]
        pipe = self._ready()
        results = self._checked("lookup", await self._once("lookup", lambda: pipe.scripts(calls)))
        for position, token, result in zip(misses, tokens, results, strict=True):
            if isinstance(result, bytes):
                answers[position] = CacheLookup(unpack(result))
            elif result == 1:
                answers[position] = CacheLookup(None, token)
        return answers

    def _px(self, ttl: float | None, expires_at: datetime | None, fallback: float | None) -> int:
        """Milliseconds a cache entry may live (0: forever): the cache TTL, capped by the
        record's own expiry (an expired record gets 1 ms, so it still displaces older ones)."""
        seconds = ttl if ttl is not None else self._cache_ttl
        if seconds is None:
            seconds = fallback
        if seconds is not None and not seconds > 0:
            raise InvalidRecordError("ttl must be positive seconds")
        if expires_at is not None:
            left = (expires_at - self.clock.now()).total_seconds()
            seconds = left if seconds is None else min(seconds, left)
        return 0 if seconds is None else max(1, round(seconds * 1000))

    def _cache_call(
        self, script: lua.Script, key: Key, token: str, packed: bytes, px: int, revision: int
    ) -> tuple[lua.Script, tuple[str, ...], tuple[EncodableT, ...]]:
        args = (token, packed, px, revision, member(key.rest), key.namespace)
        return script, self._cache_keys(key), args

    async def _cache_scripts(
        self, op: str, calls: Sequence[tuple[lua.Script, tuple[str, ...], tuple[EncodableT, ...]]]
    ) -> builtins.list[Any]:
        pipe = self._ready()
        results = self._checked(op, await self._idempotent(op, lambda: pipe.scripts(calls)))
        if any(result == -1 for result in results):
            raise CacheLostError(f"Redis {op}: the generation marker is gone (flushed or evicted)")
        return results

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        if not items:
            return 0
        calls = [
            self._cache_call(
                lua.FILL,
                key,
                token,
                pack(entry),
                self._px(ttl, entry.expires_at, None),
                entry.revision,
            )
            for key, entry, token in items
        ]
        results = await self._cache_scripts("fill", calls)
        return sum(1 for result in results if result == 1)

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        px = self._px(ttl, entry.expires_at, None)
        call = self._cache_call(lua.WRITE, key, "", pack(entry), px, entry.revision)
        return bool((await self._cache_scripts("write", [call]))[0] == 1)

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        if not items:
            return
        px = self._px(ttl, None, DEFAULT_TOMBSTONE_TTL)
        calls = [
            self._cache_call(lua.WRITE, key, "", pack_tombstone(revision), px, revision)
            for key, revision in items
        ]
        await self._cache_scripts("tombstones", calls)

    async def incarnation(self) -> str:
        """The server's ``run_id`` (new on every start, restore or failover); on a Cluster,
        every primary's, as sorted ``host:port=run_id`` pairs; a server that does not report
        one (fakeredis) gets a random token kept in the server itself."""
        client = self._ready().client
        if isinstance(client, RedisCluster):
            return await self._cluster_incarnation(client)
        try:
            async with asyncio.timeout(self._timeout):
                info = await client.info("server")
                run_id = info.get("run_id") if isinstance(info, dict) else None
                if run_id:
                    return str(run_id)
        except ResponseError:
            pass  # no INFO: fall back to the token
        except _DRIVER_ERRORS as exc:
            raise self._unavailable("incarnation", exc) from exc
        token = secrets.token_hex(16)
        name = f"{self._prefix}*incarnation"
        pipe = self._ready()
        await self._idempotent("incarnation", lambda: pipe.call("SET", name, token, "NX"))
        stored = await self._idempotent("incarnation", lambda: pipe.call("GET", name))
        return bytes(stored).decode()

    async def _cluster_incarnation(self, client: RedisCluster) -> str:
        """Every primary's ``run_id``, asked on each (a node whose new connection fails the
        check still reported its ``run_id`` to :meth:`_check_incarnation`)."""
        try:
            async with asyncio.timeout(self._timeout):
                await client.ping()  # learns the topology on first use
                primaries = [node.name for node in client.get_primaries()]
                for name in primaries:
                    node = client.get_node(node_name=name)
                    try:
                        info = await client.info("server", target_nodes=node)
                    except NewIncarnationError:
                        continue  # the connect hook recorded its run_id
                    self._seen_runs[name] = str(info["run_id"])
        except _DRIVER_ERRORS as exc:
            raise self._unavailable("incarnation", exc) from exc
        missing = [name for name in primaries if name not in self._seen_runs]
        if missing:
            raise BackendUnavailableError(f"Redis Cluster nodes {missing} gave no run_id")
        return ",".join(sorted(f"{name}={self._seen_runs[name]}" for name in primaries))

    def use_generation(self, incarnation: str, generation: int) -> None:
        """Keep cache keys under ``generation`` of the server's ``incarnation`` from now on;
        a connection to any other incarnation fails with :class:`CacheLostError` (on a
        Cluster: a connection to a node whose ``run_id`` is not the one in ``incarnation``,
        or to a node not in it)."""
        self._incarnation = self._seen_incarnation = incarnation
        if self._cluster:
            pairs = (pair.partition("=") for pair in incarnation.split(","))
            self._node_runs = {name: run_id for name, _, run_id in pairs}
        self._layout = Layout(f"{self._prefix}{generation}:")

    @property
    def seen_incarnation(self) -> str | None:
        """The newest incarnation a new connection met (may differ from the one in use)."""
        return self._seen_incarnation

    async def claim_generation(self) -> bool:
        """Put the generation marker; return whether it was there already (the generation
        is intact). A Cluster keeps no marker (True)."""
        if self._cluster:
            return True
        pipe = self._ready()
        name = self._layout.marker
        created = await self._idempotent("claim", lambda: pipe.call("SET", name, b"1", "NX"))
        return created is None

    async def _check_incarnation(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook: the usual handshake, then, once a generation is in
        use (on a Cluster, always), the server's ``run_id``; a new one fails the connection
        (nothing is sent on it) until the tiered store has moved to a new generation. On a
        Cluster each node is checked against its own ``run_id`` in the incarnation in use;
        a node not in it (a replica promoted by a failover) counts as new too."""
        await connection.on_connect()
        cluster = self._cluster
        if self._incarnation is None and not cluster:
            return
        await connection.send_command("INFO", "server")
        reply = await connection.read_response()
        text = reply.decode() if isinstance(reply, bytes) else str(reply)
        run_id = next(
            (line[7:].strip() for line in text.splitlines() if line.startswith("run_id:")), ""
        )
        if not run_id:
            return
        if cluster:
            name = f"{getattr(connection, 'host', '')}:{getattr(connection, 'port', '')}"
            self._seen_runs[name] = run_id
            if self._incarnation is not None and self._node_runs.get(name) != run_id:
                self._seen_incarnation = None  # every primary is asked again
                raise NewIncarnationError(f"the Redis Cluster node {name} is a new incarnation")
        elif run_id != self._incarnation:
            self._seen_incarnation = run_id
            raise NewIncarnationError(f"the Redis server is a new incarnation ({run_id})")

    async def invalidate(self, keys: Sequence[Key]) -> None:
        if not keys:
            return
        names = [self._layout.record(key) for key in keys]
        commands = [("UNLINK", name, self._layout.lease(name)) for name in names]
        pipe = self._ready()
        self._checked(
            "invalidate", await self._idempotent("invalidate", lambda: pipe.batch(commands))
        )

    async def invalidate_owner(self, owner: str) -> None:
        check_component(owner, "owner")
        await self._erase(owner, "invalidate_owner")

    async def ping(self) -> None:
        pipe = self._ready()
        await self._idempotent("ping", lambda: pipe.client.ping())


MAX_LEASE_TTL: Final = 3600.0
"""The longest a cache lease may live (seconds); an owner's erase epoch outlives them."""

DEFAULT_REDIS_URL: Final = "redis://localhost:6379/0"
"""Where ``DatabaseType.REDIS`` connects without a URL or ``$KVSTORE_REDIS_URL``."""


def build_redis_backend(
    url: str | None,
    options: RedisOptions,
    *,
    cache_ttl: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RedisBackend:
    """A Redis backend for ``url`` (default ``$KVSTORE_REDIS_URL``, then
    ``redis://localhost:6379/0``) or for the injected ``redis_client`` option, which is used
    as is and never closed. ``cache_ttl`` is its default TTL as a cache tier. No I/O."""
    client = options.get("redis_client")
    prefix = options.get("key_prefix", DEFAULT_KEY_PREFIX)
    autopipeline = options.get("autopipeline", True)
    settings = ConnectionSettings.from_options(options)
    if client is None:
        url = check_url(url or os.environ.get("KVSTORE_REDIS_URL") or DEFAULT_REDIS_URL)
    elif url is not None:
        raise ConfigurationError("give either a connection string or redis_client, not both")
    elif unused := sorted(set(options) & _CONNECTION_OPTIONS):
        raise ConfigurationError(f"an injected redis_client does not take: {', '.join(unused)}")
    return RedisBackend(
        url,
        client=client,
        key_prefix=prefix,
        settings=settings,
        autopipeline=autopipeline,
        cache_ttl=cache_ttl,
        clock=clock,
    )


_CONNECTION_OPTIONS: Final = frozenset(
    {"max_connections", "socket_connect_timeout", "health_check_interval", "pool_wait_timeout"}
)
"""Options that shape connections the backend makes itself."""
