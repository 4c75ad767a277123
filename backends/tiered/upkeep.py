"""Upkeep of the tiered store's cache: warm it, verify it against the system of record.

Both read the cache through leases like any read, so neither ever serves or writes anything
older than the system of record holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends.reports import VerifyReport, WarmReport
from backends.tiered.guard import FAILED
from kvstore.errors import BackendUnavailableError, ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from backends.base import Backend, Entry
    from backends.cache_base import VersionedCache
    from backends.tiered.guard import CacheGuard
    from kvstore.keys import Key

VERIFY_LEASE_TTL = 0.001
"""``verify`` reads the cache with leases that expire at once: it never fills."""
CHUNK = 500
"""Keys per cache call of ``warm`` and ``verify``: each chunk is one call under the cache
deadline, however many records there are."""


async def warm(
    record: Backend,
    fill_keys: Callable[[Sequence[Key]], Awaitable[int]],
    namespace: str,
    owner: str | None,
    limit: int,
    progress: Callable[[int], None] | None = None,
) -> WarmReport:
    """Load the ``limit`` most recently updated records of ``namespace`` (of ``owner`` if
    given) into the cache, :data:`CHUNK` keys per cache call. Fills go through leases like
    any read after a miss, so warming never overwrites a newer entry or resurrects a deleted
    one (``fill_keys``: :meth:`~backends.tiered.reads.ReadThrough.fill_keys`). Raises
    :class:`BackendUnavailableError` if the cache does not answer."""
    keys = [key for key, _ in await recent(record, namespace, owner, limit)]
    landed = 0
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        landed += await fill_keys(chunk)
        if progress is not None:
            progress(len(chunk))
    return WarmReport(read=len(keys), landed=landed)


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
    """Compare the cache with the system of record for ``namespace`` (or one owner's
    records in it), at most ``limit`` records, :data:`CHUNK` keys per cache call; report
    stale and extra cache entries and, with ``repair``, invalidate them (chunk by chunk).
    Extra entries are only found if the cache can list its keys (``lists_keys``).
    Raises :class:`BackendUnavailableError` if the cache does not answer a call: a report
    is never made of part of the keys."""
    truth: dict[Key, Entry | None] = dict(await recent(record, namespace, owner, limit))
    if cache.lists_keys:
        scanned = await guard.call(cache.cached_keys(namespace, owner))
        if scanned is FAILED:
            raise BackendUnavailableError("the cache did not answer; nothing was verified")
        others = [key for key in scanned if key not in truth]
        truth.update(zip(others, await record.get_many(others), strict=True))
    keys = [*truth]
    stale: list[Key] = []
    extra: list[Key] = []
    missing = 0
    for start in range(0, len(keys), CHUNK):
        chunk = keys[start : start + CHUNK]
        lookups = await guard.call(cache.lookup(chunk, lease_ttl=VERIFY_LEASE_TTL))
        if lookups is FAILED:
            raise BackendUnavailableError(
                f"the cache did not answer after {start} of {len(keys)} keys were verified"
            )
        wrong: list[Key] = []
        for key, answer in zip(chunk, lookups, strict=True):
            cached, stored = answer.entry, truth[key]
            if cached is None:
                missing += stored is not None
            elif stored is None:
                extra.append(key)
                wrong.append(key)
            elif cached.revision != stored.revision:
                stale.append(key)
                wrong.append(key)
        if repair and wrong and await guard.call(cache.invalidate(wrong)) is FAILED:
            raise BackendUnavailableError(
                f"the cache did not answer; {start} of {len(keys)} keys were verified"
            )
        if progress is not None:
            progress(len(chunk))
    return VerifyReport(
        checked=len(keys), stale=stale, extra=extra, missing=missing, repaired=repair
    )


async def recent(
    record: Backend, namespace: str, owner: str | None, limit: int
) -> Sequence[tuple[Key, Entry]]:
    """The ``limit`` most recently updated live entries of the system of record."""
    if not record.capabilities.bulk:
        raise ConfigurationError(f"{type(record).__name__} cannot list by recency")
    return await record.recent(namespace, owner=owner, limit=limit)
