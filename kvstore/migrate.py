"""Record migration: rewrite stored records of an older schema version in the current one.

Reading old records works without migrating (upgrades run on read); migrating makes the
stored data current so batch jobs reading SQL see one shape. Each record is rewritten with
``expected_version`` set to the version read, so a concurrent save is never overwritten (it
already wrote the current shape). Records already current are skipped, so an interrupted
migration resumes by running it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from backends.base import utcnow
from kvstore.errors import ConfigurationError, ConflictError
from kvstore.models import Record

if TYPE_CHECKING:
    from collections.abc import Callable

    from backends.base import Entry
    from kvstore.collection import Collection

R = TypeVar("R", bound=Record)


@dataclass
class MigrationReport:
    """What a migration of one collection did."""

    scanned: int = 0
    migrated: int = 0
    conflicts: int = 0


async def migrate_collection(
    collection: Collection[R],
    *,
    batch_size: int = 500,
    concurrency: int = 32,
    progress: Callable[[int], None] | None = None,
) -> MigrationReport:
    """Rewrite every record of ``collection`` stored under an older schema version, with up
    to ``concurrency`` saves in flight (on PostgreSQL, group commit sends them together);
    ``progress`` is called with the number of records each scanned batch held."""
    store = collection.store
    backend = await store.backend_ready()
    if not backend.capabilities.bulk:
        raise ConfigurationError(f"{type(backend).__name__} cannot scan records to migrate")
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1")
    current = collection.model.SCHEMA_VERSION
    report = MigrationReport()
    limit = asyncio.Semaphore(concurrency)

    async def rewrite(entry: Entry) -> None:
        record = collection.decode(entry)
        ttl = None
        if entry.expires_at is not None:
            ttl = (entry.expires_at - utcnow()).total_seconds()
            if ttl <= 0:
                return
        async with limit:
            try:
                await collection.save(record, expected_version=entry.version, ttl=ttl)
            except ConflictError:
                report.conflicts += 1
            else:
                report.migrated += 1

    pending: list[Entry] = []

    async def flush() -> None:
        await asyncio.gather(*(rewrite(entry) for entry in pending))
        if progress is not None:
            progress(len(pending))
        pending.clear()

    async for _key, entry in backend.scan(namespace=collection.namespace, batch_size=batch_size):
        report.scanned += 1
        stored = store.serializer.schema_version(entry.value)
        if stored is None or stored < current:
            pending.append(entry)
        elif progress is not None:
            progress(1)
        if len(pending) >= batch_size:
            await flush()
    await flush()
    return report
