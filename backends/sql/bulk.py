"""The SQL backend's reads of many rows and its bulk operations: batched reads, listings,
streams in key order, restores, purges of expired rows, listings by recency and counts.
Each is one or a few
SQLAlchemy Core statements (:mod:`.queries`) run through the backend's ``_query``; none
holds a connection while the caller works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from backends.base import check_listing
from backends.sql import core, queries
from backends.sql.schema import key_columns, key_parts, stored_key
from kvstore.errors import InvalidRecordError
from kvstore.keys import DEFAULT_PAGE_SIZE, check_component, check_namespace

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Sequence
    from datetime import datetime

    import sqlalchemy as sa

    from backends.base import Entry
    from kvstore.clock import Clock
    from kvstore.keys import Key

GET_MANY_CHUNK: Final = 500
"""Keys per statement of a batched read."""
DEFAULT_STREAM_BATCH: Final = 1000
TOMBSTONE_RETENTION: Final = 7 * 86400.0
"""Seconds ``purge_expired`` keeps the tombstone of a deletion: change-feed followers read
only the last moments, batch jobs a week's watermark."""


class BulkOperations:
    """Bulk operations of :class:`~backends.sql.store.SQLBackend` (mixed into it)."""

    clock: Clock
    _postgres: bool

    async def _query(
        self,
        action: str,
        statement: sa.Executable,
        *,
        write: bool = False,
        parameters: builtins.list[dict[str, Any]] | None = None,
    ) -> Any:
        raise NotImplementedError

    async def _read(self, action: str, statement: sa.Executable) -> Any:
        raise NotImplementedError

    async def _write(self, action: str, statement: sa.Executable) -> Any:
        return await self._query(action, statement, write=True)

    async def get(self, key: Key) -> Entry | None:
        raise NotImplementedError

    async def _list_owner(
        self, namespace: str, owner: str, after: tuple[str, ...] | None, limit: int
    ) -> builtins.list[tuple[Key, Entry]] | None:
        raise NotImplementedError

    async def _get_batch(
        self, keys: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Entry]:
        raise NotImplementedError

    async def get_many(self, keys: Sequence[Key]) -> builtins.list[Entry | None]:
        if not keys:
            return []
        if len(keys) == 1:  # the tiered store's single misses: take the hot path
            return [await self.get(keys[0])]
        found: dict[tuple[str, str, str], Entry] = {}
        wanted = [key_columns(k) for k in keys]
        unique = list(dict.fromkeys(wanted))
        for start in range(0, len(unique), GET_MANY_CHUNK):
            found.update(await self._get_batch(unique[start : start + GET_MANY_CHUNK]))
        return [found.get(k) for k in wanted]

    async def list(
        self,
        namespace: str,
        prefix: tuple[str, ...],
        *,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> builtins.list[tuple[Key, Entry]]:
        """One owner's page is the hot statement ``list`` unless a replica answers
        listings; a longer prefix is a Core statement."""
        check_listing(namespace, prefix, after, limit)
        if len(prefix) == 1:
            page = await self._list_owner(namespace, prefix[0], after, limit)
            if page is not None:
                return page
        statement = queries.select_listing(namespace, prefix, after, limit, self.clock.now())
        if statement is None:
            return []
        owner = prefix[0]
        return [
            (stored_key(namespace, (owner, *key_parts(row[0]))), queries.entry_of(row))
            for row in await self._read("list", statement)
        ]

    async def purge_expired(
        self, batch_size: int = 1000, *, tombstones_older_than: float = TOMBSTONE_RETENTION
    ) -> int:
        """Delete expired rows, ``batch_size`` per transaction, and the tombstones of
        deletions older than ``tombstones_older_than`` seconds (the change feed reads only
        recent ones); return how many rows were deleted."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        tables: builtins.list[sa.TableClause] = [queries.t]
        if self._postgres:  # a partitioned table is purged partition by partition
            names = await self._query("purge_expired", queries.partition_names())
            tables = [queries.partition_table(str(row[0])) for row in names] or tables
        return await core.purge(
            self._write,
            self.clock,
            batch_size,
            tombstones_older_than,
            tables,
            postgres=self._postgres,
        )

    async def recent(
        self, namespace: str, *, owner: str | None = None, limit: int = DEFAULT_PAGE_SIZE
    ) -> builtins.list[tuple[Key, Entry]]:
        """Live entries of ``namespace`` (of ``owner`` if given), newest ``updated_at``
        first, at most ``limit``: served by the (namespace, updated_at) index (cache warm-up,
        "sessions updated lately")."""
        if limit <= 0:
            raise InvalidRecordError("limit must be positive")
        check_namespace(namespace)
        if owner is not None:
            check_component(owner, "owner")
        statement = queries.select_recent(namespace, owner, limit, self.clock.now())
        return [
            (stored_key(row[0], (row[1], *key_parts(row[2]))), queries.entry_of(row))
            for row in await self._read("recent", statement)
        ]

    async def count(self) -> dict[str, int]:
        """Live records per namespace: one ``GROUP BY namespace`` query counted in the
        database (no value leaves it; what ``kvstore stats`` shows)."""
        rows = await self._read("count", queries.count_live(self.clock.now()))
        return {str(name): int(number) for name, number in rows}

    def scan(
        self,
        *,
        namespace: str | None = None,
        owner: str | None = None,
        batch_size: int = DEFAULT_STREAM_BATCH,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        return self.stream(namespace, owner, batch_size=batch_size)

    async def restore(self, items: Sequence[tuple[Key, Entry]]) -> int:
        """Write ``items`` where they are newer than (or the row has expired) what is
        stored; the JSON text is cast on the server, never re-encoded."""
        if not items:
            return 0
        statement = queries.restore(self._postgres, self.clock.now())
        rows = queries.restore_rows(items, self._postgres)
        return len(await self._query("restore", statement, write=True, parameters=rows))

    async def stream(
        self,
        namespace: str | None = None,
        owner: str | None = None,
        *,
        updated_since: datetime | None = None,
        updated_before: datetime | None = None,
        batch_size: int = DEFAULT_STREAM_BATCH,
    ) -> AsyncIterator[tuple[Key, Entry]]:
        """Every live entry (of ``namespace``, of ``owner``, updated in
        ``[updated_since, updated_before)``), in key order, for batch jobs.

        Keyset pagination over the primary key: each batch is one short query on a pooled
        connection (none is held while the caller works), so memory stays flat however many
        rows there are. Rows saved while the stream runs may or may not be seen.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if namespace is not None:
            check_namespace(namespace)
        if owner is not None:
            check_component(owner, "owner")
        pages = queries.StreamPages(namespace, owner, updated_since, updated_before)
        async for item in core.stream_pages(self._read, pages, batch_size, self.clock):
            yield item
