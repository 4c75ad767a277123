"""Upkeep of the tiered store's cache: warm it, verify it against the system of record.

Both read the cache through leases like any read, so neither ever serves or writes anything
older than the system of record holds.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from backends.reports import VerifyReport, WarmReport
from backends.tiered.guard import FAILED
from kvstore.errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from backends.base import Backend, Entry
    from backends.cache_base import CacheLookup, VersionedCache
    from backends.tiered.guard import CacheGuard
    from kvstore.keys import Key

T = TypeVar("T")

VERIFY_LEASE_TTL = 0.001
"""``verify`` reads the cache with leases that expire at once: it never fills."""
CHUNK = 500
"""Keys per cache call of ``warm`` and ``verify``: each chunk is one call under the cache
deadline, however many records there are."""
TRIES = 6
"""Calls ``warm`` and ``verify`` make for one chunk before they give up on the cache."""
RETRY_PAUSE = 0.1
"""Seconds before the second try of a chunk, doubling after each (3.1 s in all: past the
circuit breaker's default 2 s before its probe)."""
EVERY = sys.maxsize
"""The ``limit`` that means every record of the namespace (one streaming scan)."""
AT_ONCE = 10_000
"""Up to this ``limit``, the newest records come from one query and are held at once
(about 10 MB of session records); above it, two streaming scans hold one chunk."""


async def warm(
    record: Backend,
    fill_keys: Callable[[Sequence[Key]], Awaitable[int]],
    namespace: str,
    owner: str | None,
    limit: int,
    progress: Callable[[int], None] | None = None,
) -> WarmReport:
    """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner`` if
    given) into the cache, :data:`CHUNK` keys per cache call, holding one chunk at a time
    (see :func:`newest`). Fills go through leases like any read after a miss, so warming
    never overwrites a newer entry or resurrects a deleted one (``fill_keys``:
    :meth:`~backends.tiered.reads.ReadThrough.fill_keys`). Raises
    :class:`BackendUnavailableError` if the cache does not answer."""
    read = landed = 0
    async for chunk in newest(record, namespace, owner, limit):
        landed += await _patiently(functools.partial(fill_keys, [k for k, _ in chunk]), read)
        read += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return WarmReport(read=read, landed=landed)


async def verify(
    record: Backend,
    cache: VersionedCache,
    guard: CacheGuard,
    namespace: str,
    owner: str | None,
    *,
    repair: bool,
    limit: int,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Compare the cache with the system of record for the ``limit`` most recently updated
    records of ``namespace`` (or of one owner's records in it), :data:`CHUNK` keys per cache
    call, holding one chunk at a time (see :func:`newest`); report stale and extra cache
    entries and, with ``repair``, invalidate them chunk by chunk. Extra entries are only
    found if the cache can list its keys (``lists_keys``). Raises
    :class:`BackendUnavailableError` if the cache does not answer a call: a report is never
    made of part of the keys."""
    report = _Tally()
    async for chunk in newest(record, namespace, owner, limit):
        await _compare(record, cache, guard, chunk, report, repair=repair)
        if progress is not None:
            progress(len(chunk))
    if cache.lists_keys:
        scanned = await guard.call(cache.cached_keys(namespace, owner))
        if scanned is FAILED:
            raise BackendUnavailableError(
                f"the cache did not answer after {report.checked} keys were verified"
            )
        for start in range(0, len(scanned), CHUNK):  # cached, but not in the system of record
            some = scanned[start : start + CHUNK]
            held = await record.get_many(some)
            gone = [key for key, entry in zip(some, held, strict=True) if entry is None]
            await _compare(
                record, cache, guard, [(key, None) for key in gone], report, repair=repair
            )
    return VerifyReport(
        checked=report.checked,
        stale=report.stale,
        extra=report.extra,
        missing=report.missing,
        repaired=repair,
    )


@dataclass
class _Tally:
    checked: int = 0
    stale: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    missing: int = 0


async def _compare(
    record: Backend,
    cache: VersionedCache,
    guard: CacheGuard,
    chunk: Sequence[tuple[Key, Entry | None]],
    tally: _Tally,
    *,
    repair: bool,
) -> None:
    """Compare one chunk (at most :data:`CHUNK` keys, with what the system of record holds
    for each) with the cache in one call; with ``repair``, invalidate what differs. A cache
    entry newer than the chunk's (written after the chunk was read, or the chunk came from
    a lagging replica) is checked again against the system of record's ``get_many``."""
    if not chunk:
        return
    keys = [key for key, _ in chunk]

    async def lookup() -> list[CacheLookup]:
        found = await guard.call(cache.lookup(keys, lease_ttl=VERIFY_LEASE_TTL))
        if found is FAILED:
            raise BackendUnavailableError("the cache did not answer")
        return found

    lookups = await _patiently(lookup, tally.checked)
    wrong: list[Key] = []
    ahead: list[tuple[Key, int]] = []
    for (key, stored), answer in zip(chunk, lookups, strict=True):
        cached = answer.entry
        if cached is None:
            tally.missing += stored is not None
        elif stored is None:
            tally.extra.append(key)
            wrong.append(key)
        elif cached.revision > stored.revision:
            ahead.append((key, cached.revision))
        elif cached.revision != stored.revision:
            tally.stale.append(key)
            wrong.append(key)
    if ahead:
        now = await record.get_many([key for key, _ in ahead])
        for (key, revision), entry in zip(ahead, now, strict=True):
            if entry is None or entry.revision != revision:
                tally.stale.append(key)
                wrong.append(key)
    if repair and wrong:

        async def invalidate() -> None:
            if await guard.call(cache.invalidate(wrong)) is FAILED:
                raise BackendUnavailableError("the cache did not answer")

        await _patiently(invalidate, tally.checked)
    tally.checked += sum(stored is not None for _, stored in chunk)


async def _patiently(call: Callable[[], Awaitable[T]], done: int) -> T:
    """``call()``, tried again after :data:`RETRY_PAUSE` seconds (doubling) while the cache
    does not answer, :data:`TRIES` times in all: one slow answer on a busy machine must not
    end a warm-up or a verification of a million records. Raises
    :class:`BackendUnavailableError` saying how many records were done before."""
    pause = RETRY_PAUSE
    for attempt in range(1, TRIES + 1):
        try:
            return await call()
        except BackendUnavailableError as error:
            if attempt == TRIES:
                raise BackendUnavailableError(
                    f"{error} ({TRIES} tries); {done} records were done before"
                ) from error
        await asyncio.sleep(pause)
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def newest(
    record: Backend, namespace: str, owner: str | None, limit: int
) -> AsyncIterator[list[tuple[Key, Entry]]]:
    """The ``limit`` most recently updated live entries of the system of record, in chunks
    of :data:`CHUNK`. Up to :data:`AT_ONCE` of them come from one ``recent()`` query (an
    index by recency on SQL), newest first. A larger ``limit`` never holds more than a chunk
    of entries: a first scan keeps only the update times, to find the oldest one that
    makes the cut; a second streams the entries updated since then, in key order (ties at
    that time are taken in key order until ``limit`` is reached). ``limit`` of
    :data:`EVERY` (``sys.maxsize``) takes every record with the second scan alone."""
    if not record.capabilities.bulk:
        raise ConfigurationError(f"{type(record).__name__} cannot list by recency")
    if limit <= AT_ONCE:
        entries = await record.recent(namespace, owner=owner, limit=limit)
        for start in range(0, len(entries), CHUNK):
            yield entries[start : start + CHUNK]
        return
    if limit >= EVERY:
        async for chunk in _stream(record, namespace, owner, None, 0, limit):
            yield chunk
        return
    times: list[float] = []  # a min-heap of the newest ``limit`` update times
    async for _, entry in record.scan(namespace=namespace, owner=owner):
        stamp = entry.updated_at.timestamp()
        if len(times) < limit:
            heapq.heappush(times, stamp)
        elif stamp > times[0]:
            heapq.heapreplace(times, stamp)
    cutoff = times[0] if len(times) >= limit else None
    above = sum(stamp > times[0] for stamp in times) if cutoff is not None else 0
    ties_left = limit - above  # how many entries updated exactly at the cutoff make it
    del times
    async for chunk in _stream(record, namespace, owner, cutoff, ties_left, limit):
        yield chunk


async def _stream(
    record: Backend,
    namespace: str,
    owner: str | None,
    cutoff: float | None,
    ties: int,
    most: int,
) -> AsyncIterator[list[tuple[Key, Entry]]]:
    """Chunks of the live entries updated at ``cutoff`` or later (the first ``ties`` of
    those updated exactly then), every entry if ``cutoff`` is ``None``; in key order, at
    most ``most`` (records saved during the scans count once they are seen)."""
    ties_left, taken = ties, 0
    chunk: list[tuple[Key, Entry]] = []
    async for key, entry in record.scan(namespace=namespace, owner=owner):
        if taken >= most:
            continue  # to the scan's end, which closes its connection
        if cutoff is not None:
            stamp = entry.updated_at.timestamp()
            if stamp < cutoff:
                continue
            if stamp == cutoff:
                if ties_left <= 0:
                    continue
                ties_left -= 1
        chunk.append((key, entry))
        taken += 1
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
