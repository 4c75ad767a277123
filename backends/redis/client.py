"""What the Redis store and the Redis cache share: one client, one policy per call.

:class:`RedisClient` owns the ``redis.asyncio`` client (built from a URL by
:mod:`.connect`, or injected and never closed) and the autopipeline (:mod:`.pipe`) every
call goes through. Every operation runs under one deadline (``socket_timeout``) that a
stalled event loop does not use up (:mod:`backends.deadline`); idempotent ones are retried
with exponential backoff on connection errors; any driver error (timeouts included) becomes
:class:`~kvstore.errors.BackendUnavailableError` with the driver exception chained.

It also keeps the key layout in use (:mod:`.format`; a cache generation moves it) and checks
every new connection against the server incarnation that generation belongs to: a
connection to another one fails with :class:`~kvstore.errors.CacheLostError`, whichever
role sent the call. And it holds the two key-space operations both roles make: reading the
values of many keys (slot by slot on a Cluster) and erasing an owner through its index.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from backends.coalesce import Coalesced
from backends.deadline import deadline
from backends.redis import lua
from backends.redis.connect import Closer, ConnectionSettings, connect
from backends.redis.format import DEFAULT_KEY_PREFIX, Layout, member_key
from backends.redis.pipe import AutoPipeline
from kvstore.clock import SYSTEM_CLOCK
from kvstore.errors import (
    BackendUnavailableError,
    CacheLostError,
    ConfigurationError,
    DatabaseClosedError,
)
from kvstore.urls import mask_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.typing import EncodableT

    from kvstore.clock import Clock
    from kvstore.keys import Key

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

DRIVER_ERRORS: Final = (RedisError, RedisClusterException, OSError)
"""What redis-py raises (a Cluster client's start-up failures are not RedisErrors); OSError
covers asyncio's TimeoutError."""
MAX_LEASE_TTL: Final = 3600.0
"""The longest a cache lease may live (seconds); an owner's erase epoch outlives them."""
_ERASE_ATTEMPTS: Final = 8


class NewIncarnationError(RedisError):
    """A new connection met another server incarnation than the cache generation's."""


async def _ignore(_error: Exception) -> None:
    """Failure hook for :meth:`Retry.call_with_retry`: nothing to clean up."""


class RedisClient:
    """One Redis client, its call policy, its key layout and its incarnation check."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Redis | RedisCluster | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        settings: ConnectionSettings | None = None,
        autopipeline: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError("give exactly one of url and client")
        self.clock = clock
        self.prefix = key_prefix
        self.layout = Layout(key_prefix)
        """Key names under the cache generation in use (the bare prefix before one)."""
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._settings = settings or ConnectionSettings()
        self.autopipeline = autopipeline
        """Whether concurrent commands share pipelines, and single-key calls coalesce."""
        self.timeout = self._settings.socket_timeout
        self._retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.01),
            self._settings.max_retries,
            supported_errors=(RedisConnectionError,),
        )
        self.incarnation_in_use: str | None = None
        """The server incarnation of the cache generation in use, ``None`` before one."""
        self.seen_incarnation: str | None = None
        """The newest incarnation a new connection met (may differ from the one in use)."""
        self._node_runs: dict[str, str] = {}
        """On a Cluster: each primary's ``run_id`` in the incarnation in use."""
        self.seen_runs: dict[str, str] = {}
        """On a Cluster: the ``run_id`` each node gave on its newest connection (or when
        :meth:`RedisCache.incarnation <backends.redis.cache.RedisCache.incarnation>` asked)."""
        self._pipe: AutoPipeline | None = None
        self._coalescers: list[Coalesced[Any, Any]] = []
        """Every :meth:`coalesced` call of this client: closing waits for their calls."""
        self._coalesced: dict[bool, Coalesced[Key, bytes | None]] = {
            marked: self.coalesced(partial(self._read_values, marked=marked))
            for marked in (False, True)
        }
        """Coalesced single-key reads, without and with the generation marker."""
        self._closers: list[Closer] = []
        self._closed = False
        self.description = mask_url(url) if url is not None else "injected client"

    def __repr__(self) -> str:
        return f"RedisClient({self.description})"

    # -- lifecycle -------------------------------------------------------------------------

    def coalesced(self, send: Callable[[Sequence[K]], Awaitable[Sequence[V]]]) -> Coalesced[K, V]:
        """Concurrent single-item calls merged into calls of ``send`` on this client
        (:mod:`backends.coalesce`); :meth:`close` sends what is queued and waits for them."""
        coalesced = Coalesced(send)
        self._coalescers.append(coalesced)
        return coalesced

    def ready(self) -> AutoPipeline:
        """The autopipeline, building the client on first use (no I/O until a command)."""
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
        self._pipe = AutoPipeline(self._client, timeout=self.timeout, enabled=self.autopipeline)
        return self._pipe

    async def close(self) -> None:
        """Send the coalesced calls queued, wait for those and the pipelines already sent;
        close the client if this object made it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for coalesced in self._coalescers:
            await coalesced.aclose()
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
            except DRIVER_ERRORS as exc:
                raise self.unavailable("close", exc) from exc

    async def ping(self) -> None:
        """Build the client if needed and check the server answers, under a deadline of
        ``socket_connect_timeout`` plus ``socket_timeout``: the first call connects (to
        every node of a cluster, after reading its topology)."""
        pipe = self.ready()
        budget = self._settings.socket_connect_timeout + self.timeout
        await self.idempotent("ping", lambda: pipe.client.ping(), seconds=budget)

    @property
    def cluster(self) -> bool:
        """Whether the client is a Redis Cluster client."""
        pipe = self._pipe
        return pipe.cluster if pipe is not None else isinstance(self._client, RedisCluster)

    # -- one policy per call: deadline, retries, errors ------------------------------------

    def unavailable(self, op: str, exc: BaseException) -> BackendUnavailableError:
        """The error to raise for driver error ``exc`` in operation ``op``."""
        if isinstance(exc, NewIncarnationError):
            return CacheLostError(f"Redis {op}: {exc}")
        detail = str(exc) or "no answer in time"
        return BackendUnavailableError(
            f"Redis {op} failed on {self.description}: {type(exc).__name__}: {detail}"
        )

    async def idempotent(
        self, op: str, make: Callable[[], Awaitable[T]], *, seconds: float | None = None
    ) -> T:
        """Run ``make()`` under the deadline (``seconds``, by default ``socket_timeout``),
        retried with backoff on connection errors."""
        try:
            async with self.deadline(seconds):
                return await self._retry.call_with_retry(make, _ignore)
        except DRIVER_ERRORS as exc:
            raise self.unavailable(op, exc) from exc

    async def once(self, op: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` under the deadline, never retried (not idempotent)."""
        try:
            async with self.deadline():
                return await make()
        except DRIVER_ERRORS as exc:
            raise self.unavailable(op, exc) from exc

    def deadline(self, seconds: float | None = None) -> deadline:
        """``seconds`` (by default ``socket_timeout``) for one operation, not used up while
        the caller's loop stalls or while the server answers other calls (see
        :mod:`backends.deadline`)."""
        return deadline(seconds or self.timeout, progress=self.ready().replies)

    def checked(self, op: str, results: list[Any]) -> list[Any]:
        """``results`` of a batch, raising the first error among them."""
        for result in results:
            if isinstance(result, Exception):
                raise self.unavailable(op, result) from result
        return results

    # -- the incarnation every new connection must meet ------------------------------------

    def use_generation(self, incarnation: str, generation: int) -> None:
        """Keep keys under ``generation`` of the server's ``incarnation`` from now on; a
        connection to any other incarnation fails with :class:`CacheLostError` (on a
        Cluster: a connection to a node whose ``run_id`` is not the one in ``incarnation``,
        or to a node not in it)."""
        self.incarnation_in_use = self.seen_incarnation = incarnation
        if self.cluster:
            pairs = (pair.partition("=") for pair in incarnation.split(","))
            self._node_runs = {name: run_id for name, _, run_id in pairs}
        self.layout = Layout(f"{self.prefix}{generation}:")

    async def _check_incarnation(self, connection: AbstractConnection) -> None:
        """redis-py's connect hook: the usual handshake, then, once a generation is in
        use (on a Cluster, always), the server's ``run_id``; a new one fails the connection
        (nothing is sent on it) until the tiered store has moved to a new generation. On a
        Cluster each node is checked against its own ``run_id`` in the incarnation in use;
        a node not in it (a replica promoted by a failover) counts as new too."""
        await connection.on_connect()
        cluster = self.cluster
        if self.incarnation_in_use is None and not cluster:
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
            self.seen_runs[name] = run_id
            if self.incarnation_in_use is not None and self._node_runs.get(name) != run_id:
                self.seen_incarnation = None  # every primary is asked again
                raise NewIncarnationError(f"the Redis Cluster node {name} is a new incarnation")
        elif run_id != self.incarnation_in_use:
            self.seen_incarnation = run_id
            raise NewIncarnationError(f"the Redis server is a new incarnation ({run_id})")

    # -- the key space both roles read and erase -------------------------------------------

    async def read_values(self, keys: Sequence[Key], *, marked: bool = False) -> list[bytes | None]:
        """The raw values of ``keys``. ``marked``: also check the generation marker (a cache
        on a standalone server) and raise :class:`CacheLostError` if it is gone, or if the
        generation changed while the read was in flight (a retry may then have read the old
        generation's keys from a new server incarnation).

        Single-key reads of concurrent tasks are coalesced into one read (:mod:`backends.coalesce`)
        unless autopipelining is off."""
        if len(keys) == 1 and self.autopipeline:
            return [await self._coalesced[marked].call(keys[0])]
        return await self._read_values(keys, marked=marked)

    async def _read_values(self, keys: Sequence[Key], *, marked: bool) -> list[bytes | None]:
        layout = self.layout
        names = [layout.record(key) for key in keys]
        pipe = self.ready()
        if not self.cluster:
            if marked:
                names.append(layout.marker)  # a Cluster keeps no marker
            values: list[bytes | None] = await self.idempotent(
                "get_many", lambda: pipe.call("MGET", *names)
            )
            if marked and (values.pop() is None or self.layout is not layout):
                raise CacheLostError("Redis lookup: the generation marker is gone")
            return values
        slots: dict[str, list[int]] = {}  # one MGET per owner: one hash slot each
        for position, key in enumerate(keys):
            slots.setdefault(key.owner, []).append(position)
        groups = list(slots.values())
        commands = [("MGET", *(names[i] for i in group)) for group in groups]
        results = self.checked(
            "get_many", await self.idempotent("get_many", lambda: pipe.batch(commands))
        )
        if marked and self.layout is not layout:
            raise CacheLostError("Redis lookup: the cache generation changed meanwhile")
        out: list[bytes | None] = [None] * len(keys)
        for group, found in zip(groups, results, strict=True):
            for position, data in zip(group, found, strict=True):
                out[position] = data
        return out

    async def erase(self, owner: str, op: str) -> int:
        """Erase every key of ``owner`` found through its index, in one script that first
        checks the index is unchanged (else read again); count the live records removed."""
        ns_set = self.layout.namespaces(owner)
        counter = self.layout.revision_counter(owner)
        epoch = self.layout.erase_epoch(owner)
        lifetime = int(MAX_LEASE_TTL * 1000)
        # nothing indexed: leases may still be out, and a new epoch fences them
        bare: list[tuple[EncodableT, ...]] = [
            ("UNLINK", counter),
            ("INCR", epoch),
            ("PEXPIRE", epoch, lifetime),
        ]
        pipe = self.ready()
        for _ in range(_ERASE_ATTEMPTS):
            found: list[bytes] = await self.idempotent(op, lambda: pipe.call("SMEMBERS", ns_set))
            if not found:
                self.checked(op, await self.idempotent(op, lambda: pipe.batch(bare)))
                return 0
            namespaces = sorted(ns.decode() for ns in found)
            indexes = [self.layout.index(owner, ns) for ns in namespaces]
            ranges = [("ZRANGE", index, 0, -1) for index in indexes]
            listed = self.checked(
                op,
                await self.idempotent(
                    op,
                    lambda ranges=ranges: pipe.batch(ranges),  # type: ignore[misc]
                ),
            )
            records = [
                self.layout.record(member_key(owner, ns, item))
                for ns, items in zip(namespaces, listed, strict=True)
                for item in items
            ]
            leases = (self.layout.lease(name) for name in records)
            keys = [ns_set, *indexes, *records, *leases, counter, epoch]
            args: list[EncodableT] = [len(indexes), len(records), lifetime]
            args += [len(items) for items in listed]
            args += [item for items in listed for item in items]
            removed = await self.idempotent(
                op,
                lambda keys=keys, args=args: pipe.script(lua.ERASE, keys, args),  # type: ignore[misc]
            )
            if removed >= 0:
                return int(removed)
        raise BackendUnavailableError(
            f"Redis {op} gave up: the keys of one owner kept changing during {_ERASE_ATTEMPTS} "
            "attempts"
        )
