"""The Redis cache: the :class:`~backends.cache_base.VersionedCache` role the tiered store uses,
over a shared :class:`~backends.redis.client.RedisClient`.

A lookup is one MGET (of the record keys, plus the generation marker once a generation is
in use on a standalone server); a miss takes a lease with the ``LEASE`` script. Fills,
writes and tombstones are the ``FILL``, ``WRITE`` and ``TOMBSTONES`` scripts (:mod:`.lua`),
atomic per key (tombstones go many to a call), which store only what lands by revision
(:func:`backends.cache_base.lands`). A cache entry lives for the cache TTL, never past the
record's own expiry.

Generations (see :class:`~backends.cache_base.VersionedCache`): :meth:`RedisCache.incarnation`
asks the server for its ``run_id``; from :meth:`RedisCache.use_generation` on, keys live
under the generation's prefix and the client refuses connections to any other incarnation;
a script that finds the generation marker gone (flushed, evicted) raises
:class:`~kvstore.errors.CacheLostError`.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from backends.cache_base import CacheLookup, VersionedCache
from backends.redis import lua
from backends.redis.client import DRIVER_ERRORS, MAX_LEASE_TTL, NewIncarnationError
from backends.redis.format import member, pack, pack_tombstone, unpack
from kvstore.errors import (
    BackendUnavailableError,
    CacheLostError,
    ConfigurationError,
    InvalidRecordError,
)
from kvstore.keys import check_component

if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterable, Sequence
    from datetime import datetime

    from redis.typing import EncodableT

    from backends.base import Entry
    from backends.coalesce import Coalesced
    from backends.redis.client import RedisClient
    from kvstore.keys import Key

Call = tuple[lua.Script, tuple[str, ...], tuple["EncodableT", ...]]
Lookups = list[CacheLookup]

DEFAULT_TOMBSTONE_TTL: Final = 3600.0
"""Seconds a tombstone lives when neither the call nor the cache gives a cache TTL."""
TOMBSTONES_PER_CALL: Final = 64
"""Tombstones one script call carries at most (Redis runs nothing else meanwhile)."""


class RedisCache(VersionedCache):
    """Leased, forward-only cache entries and tombstones in Redis."""

    system = "redis"

    def __init__(self, redis: RedisClient, *, cache_ttl: float | None = None) -> None:
        if cache_ttl is not None and not cache_ttl > 0:
            raise ConfigurationError("cache_ttl must be positive seconds, or None")
        self.redis = redis
        self.clock = redis.clock
        self.description = redis.description
        self._cache_ttl = cache_ttl
        self.writes: Coalesced[Call, Any] = redis.coalesced(partial(self._scripts, "write"))
        """The ``WRITE`` script calls of concurrent calls of :meth:`write`, sent together:
        one pipeline, one deadline and one retry wrapper for a group commit's round of
        writes (its ``sent`` and ``items`` count the pipelines and the writes)."""

    def __repr__(self) -> str:
        return f"RedisCache({self.description})"

    async def close(self) -> None:
        await self.redis.close()

    async def ping(self) -> None:
        await self.redis.ping()

    # -- reads: lookups and leases ---------------------------------------------------------

    async def lookup(self, keys: Sequence[Key], *, lease_ttl: float) -> Lookups:
        if not keys:
            return []
        if not 0 < lease_ttl <= MAX_LEASE_TTL:
            raise InvalidRecordError(f"lease_ttl must be positive seconds, at most {MAX_LEASE_TTL}")
        values = await self.redis.read_values(
            keys, marked=self.redis.incarnation_in_use is not None
        )
        answers: Lookups = []
        misses: list[int] = []
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
            (lua.LEASE, self._keys(keys[i]), (token, lease_ms))
            for i, token in zip(misses, tokens, strict=True)
        ]
        pipe = self.redis.ready()
        results = self.redis.checked(
            "lookup", await self.redis.once("lookup", lambda: pipe.scripts(calls))
        )
        for position, token, result in zip(misses, tokens, results, strict=True):
            if isinstance(result, bytes):
                answers[position] = CacheLookup(unpack(result))
            elif result == 1:
                answers[position] = CacheLookup(None, token)
        return answers

    # -- writes: fills, writes, tombstones -------------------------------------------------

    async def fill(
        self, items: Sequence[tuple[Key, Entry, str]], *, ttl: float | None = None
    ) -> int:
        if not items:
            return 0
        calls = [
            self._call(
                lua.FILL,
                key,
                token,
                pack(entry),
                self._px(ttl, entry.expires_at, None),
                entry.revision,
            )
            for key, entry, token in items
        ]
        results = await self._scripts("fill", calls)
        return sum(1 for result in results if result == 1)

    async def write(self, key: Key, entry: Entry, *, ttl: float | None = None) -> bool:
        px = self._px(ttl, entry.expires_at, None)
        call = self._call(lua.WRITE, key, "", pack(entry), px, entry.revision)
        if self.redis.autopipeline:
            return bool(await self.writes.call(call) == 1)
        return bool((await self._scripts("write", [call]))[0] == 1)

    async def tombstones(
        self, items: Sequence[tuple[Key, int]], *, ttl: float | None = None
    ) -> None:
        if not items:
            return
        px = self._px(ttl, None, DEFAULT_TOMBSTONE_TTL)
        if self.redis.cluster:  # a script's keys live on one node: one owner's a call
            by_owner: dict[str, list[tuple[Key, int]]] = {}
            for item in items:
                by_owner.setdefault(item[0].owner, []).append(item)
            groups: Iterable[Sequence[tuple[Key, int]]] = by_owner.values()
        else:
            groups = (items,)
        calls = [
            self._tombstones_call(group[start : start + TOMBSTONES_PER_CALL], px)
            for group in groups
            for start in range(0, len(group), TOMBSTONES_PER_CALL)
        ]
        await self._scripts("tombstones", calls)

    def _tombstones_call(self, items: Sequence[tuple[Key, int]], px: int) -> Call:
        """One ``TOMBSTONES`` call: four keys and four arguments a tombstone."""
        layout = self.redis.layout
        keys: list[str] = []
        args: list[EncodableT] = [px]
        for key, revision in items:
            name = layout.record(key)
            keys += (name, layout.lease(name), *layout.owner_keys(key.owner, key.namespace))
            args += (pack_tombstone(revision), revision, member(key.rest), key.namespace)
        if self._marked:
            keys.append(layout.marker)
        return lua.TOMBSTONES, tuple(keys), tuple(args)

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

    def _keys(self, key: Key) -> tuple[str, ...]:
        """What a cache script of ``key`` touches: record, lease, index, namespaces, erase
        epoch, and the generation marker where calls check it (:attr:`_marked`)."""
        layout = self.redis.layout
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
        return self.redis.incarnation_in_use is not None and not self.redis.cluster

    def _call(
        self, script: lua.Script, key: Key, token: str, packed: bytes, px: int, revision: int
    ) -> Call:
        args = (token, packed, px, revision, member(key.rest), key.namespace)
        return script, self._keys(key), args

    async def _scripts(self, op: str, calls: Sequence[Call]) -> builtins.list[Any]:
        """Script calls in one pipeline (and concurrent callers' pipelines in one write to
        Redis: the autopipeline); a lost generation marker fails them all."""
        pipe = self.redis.ready()
        results = self.redis.checked(
            op, await self.redis.idempotent(op, lambda: pipe.scripts(calls))
        )
        if any(result == -1 for result in results):
            raise CacheLostError(f"Redis {op}: the generation marker is gone (flushed or evicted)")
        return results

    # -- invalidation ----------------------------------------------------------------------

    async def invalidate(self, keys: Sequence[Key]) -> None:
        if not keys:
            return
        layout = self.redis.layout
        names = [layout.record(key) for key in keys]
        commands = [("UNLINK", name, layout.lease(name)) for name in names]
        pipe = self.redis.ready()
        self.redis.checked(
            "invalidate", await self.redis.idempotent("invalidate", lambda: pipe.batch(commands))
        )

    async def invalidate_owner(self, owner: str) -> None:
        check_component(owner, "owner")
        await self.redis.erase(owner, "invalidate_owner")

    # -- generations -----------------------------------------------------------------------

    async def incarnation(self) -> str:
        """The server's ``run_id`` (new on every start, restore or failover); on a Cluster,
        every primary's, as sorted ``host:port=run_id`` pairs; a server that does not report
        one (fakeredis) gets a random token kept in the server itself."""
        client = self.redis.ready().client
        if isinstance(client, RedisCluster):
            return await self._cluster_incarnation(client)
        try:
            async with asyncio.timeout(self.redis.timeout):
                info = await client.info("server")
                run_id = info.get("run_id") if isinstance(info, dict) else None
                if run_id:
                    return str(run_id)
        except ResponseError:
            pass  # no INFO: fall back to the token
        except DRIVER_ERRORS as exc:
            raise self.redis.unavailable("incarnation", exc) from exc
        token = secrets.token_hex(16)
        name = f"{self.redis.prefix}*incarnation"
        pipe = self.redis.ready()
        await self.redis.idempotent("incarnation", lambda: pipe.call("SET", name, token, "NX"))
        stored = await self.redis.idempotent("incarnation", lambda: pipe.call("GET", name))
        return bytes(stored).decode()

    async def _cluster_incarnation(self, client: RedisCluster) -> str:
        """Every primary's ``run_id``, asked on each (a node whose new connection fails the
        check still reported its ``run_id`` to the client's connect hook)."""
        seen = self.redis.seen_runs
        try:
            async with asyncio.timeout(self.redis.timeout):
                await client.ping()  # learns the topology on first use
                primaries = [node.name for node in client.get_primaries()]
                for name in primaries:
                    node = client.get_node(node_name=name)
                    try:
                        info = await client.info("server", target_nodes=node)
                    except NewIncarnationError:
                        continue  # the connect hook recorded its run_id
                    seen[name] = str(info["run_id"])
        except DRIVER_ERRORS as exc:
            raise self.redis.unavailable("incarnation", exc) from exc
        missing = [name for name in primaries if name not in seen]
        if missing:
            raise BackendUnavailableError(f"Redis Cluster nodes {missing} gave no run_id")
        return ",".join(sorted(f"{name}={seen[name]}" for name in primaries))

    def use_generation(self, incarnation: str, generation: int) -> None:
        """Keep cache keys under ``generation`` of the server's ``incarnation`` from now on
        (:meth:`RedisClient.use_generation`)."""
        self.redis.use_generation(incarnation, generation)

    @property
    def seen_incarnation(self) -> str | None:
        """The newest incarnation a new connection met (may differ from the one in use)."""
        return self.redis.seen_incarnation

    async def claim_generation(self) -> bool:
        """Put the generation marker; return whether it was there already (the generation
        is intact). A Cluster keeps no marker (True)."""
        if self.redis.cluster:
            return True
        pipe = self.redis.ready()
        name = self.redis.layout.marker
        created = await self.redis.idempotent("claim", lambda: pipe.call("SET", name, b"1", "NX"))
        return created is None
