"""Typed records of one model in one namespace: the public generic collection API.

The coach's four record kinds are collections too; anything a caller defines gets the same
operations and guarantees::

    class Note(Record):
        KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
        user_id: Id
        note_id: Id
        text: str

    notes = db.collection(Note, "notes")
    saved = await notes.save(Note(user_id="u1", note_id="n1", text="hello"))
    same = await notes.get("u1", "n1")
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Generic, TypeVar, cast

from pydantic import ValidationError

from kvstore.errors import InvalidRecordError
from kvstore.keys import DEFAULT_PAGE_SIZE, Fence, Key, check_namespace, key_of
from kvstore.models.base import METADATA_FIELDS, STORED, Record, stamp
from kvstore.models.copies import copier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from backends.base import Entry
    from kvstore.store import Store

R = TypeVar("R", bound=Record)

MAX_TTL: Final = timedelta(days=36525).total_seconds()
"""The longest expiry a save takes: 100 years (a datetime cannot go past year 9999)."""
_UNCOPYABLE: Final = -1
"""In an entry's memo: the record has no copier; it is validated on every read."""


def check_ttl(ttl: float | timedelta | None) -> float | None:
    """``ttl`` as seconds: positive, finite, at most :data:`MAX_TTL`; a ``timedelta`` is
    taken as its length (as litestar's and aiocache's stores take it); ``None`` means no
    expiry. Anything else raises :class:`InvalidRecordError`."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds: float = ttl.total_seconds()
    elif isinstance(ttl, int | float) and not isinstance(ttl, bool):
        seconds = ttl
    else:
        raise InvalidRecordError(
            f"ttl must be seconds (int or float) or a timedelta, not {type(ttl).__name__}"
        )
    if not 0 < seconds <= MAX_TTL:  # also false for nan
        raise InvalidRecordError(
            f"ttl must be positive seconds up to {MAX_TTL:.0f} (100 years), or None; got {ttl!r}"
        )
    return float(seconds)


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    """One page of a listing; pass ``next_after`` as ``after`` to get the next page."""

    records: list[R]
    next_after: tuple[str, ...] | None


class Collection(Generic[R]):
    """get / get_many / save / delete / list for ``model`` records in ``namespace``."""

    def __init__(
        self,
        store: Store,
        model: type[R],
        namespace: str,
        *,
        ttl: float | timedelta | None = None,
    ) -> None:
        if not (isinstance(model, type) and issubclass(model, Record)) or not model.KEY_FIELDS:
            raise InvalidRecordError(f"{model!r} must be a Record subclass with KEY_FIELDS")
        self.ttl = check_ttl(ttl)
        self.store = store
        self.model = model
        self.namespace = check_namespace(namespace)

    def __repr__(self) -> str:
        return f"Collection({self.model.__name__}, {self.namespace!r})"

    def key(self, *components: str) -> Key:
        """The key of the record with these components (owner first)."""
        if len(components) != len(self.model.KEY_FIELDS):
            raise InvalidRecordError(
                f"{self.model.__name__} is addressed by {', '.join(self.model.KEY_FIELDS)}"
            )
        return key_of(self.namespace, components)

    async def get(self, *components: str) -> R | None:
        """The record with these key components, or ``None``."""
        key = self.key(*components)
        recent = self.store.recent
        since = recent.epoch
        entry = await (await self.store.backend_ready()).get(key)
        return None if entry is None else self.decode(recent.held(key, entry, since))

    async def get_many(self, keys: Sequence[tuple[str, ...]]) -> list[R | None]:
        """Records for many keys in one backend call, in order, ``None`` where absent."""
        encoded = [self.key(*components) for components in keys]
        if not encoded:
            return []
        recent = self.store.recent
        since = recent.epoch
        entries = await (await self.store.backend_ready()).get_many(encoded)
        held = recent.held
        return [
            None if entry is None else self.decode(held(key, entry, since))
            for key, entry in zip(encoded, entries, strict=True)
        ]

    async def save(
        self,
        record: R,
        *,
        expected_version: int | None = None,
        ttl: float | timedelta | None = None,
        fence: Fence | None = None,
    ) -> R:
        """Store ``record``; return a copy with the stored version and timestamps.

        ``ttl`` (seconds or a ``timedelta``) overrides the collection's default expiry for
        this save. ``fence`` (from ``db.lock``): refused with ``FencedError`` once a newer
        lock of that session was granted.
        """
        if not isinstance(record, self.model):
            raise InvalidRecordError(
                f"{self!r} stores {self.model.__name__}, not {type(record).__name__}"
            )
        if expected_version is not None and expected_version < 0:
            raise InvalidRecordError("expected_version must be >= 0")
        seconds = self.ttl if ttl is None else check_ttl(ttl)
        value = self.store.serializer.dumps(record, exclude=METADATA_FIELDS)
        if len(value) > self.store.max_value_bytes:
            raise InvalidRecordError(
                f"{self.model.__name__} is {len(value)} bytes serialized, over the "
                f"{self.store.max_value_bytes} byte limit"
            )
        key = key_of(self.namespace, record.key_components())
        backend = await self.store.backend_ready()
        entry = await backend.put(
            key, value, expected_version=expected_version, ttl=seconds, fence=fence
        )
        saved = record.model_copy()
        stamp(saved, entry.version, entry.created_at, entry.updated_at, entry.revision)
        return saved

    async def delete(
        self, *components: str, expected_version: int | None = None, fence: Fence | None = None
    ) -> bool:
        """Delete the record; ``True`` if it existed. ``fence`` as for :meth:`save`."""
        key = self.key(*components)
        backend = await self.store.backend_ready()
        deleted = await backend.delete(key, expected_version=expected_version, fence=fence)
        self.store.recent.forget(key)
        return bool(deleted)

    async def page(
        self,
        *prefix: str,
        after: tuple[str, ...] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> Page[R]:
        """One page of records whose key starts with ``prefix`` (at least the owner)."""
        if not prefix:
            raise InvalidRecordError("a listing needs at least the owner")
        if limit <= 0:
            raise InvalidRecordError("limit must be positive")
        backend = await self.store.backend_ready()
        rows = await backend.list(self.namespace, tuple(prefix), after=after, limit=limit)
        records = [self.decode(entry) for _, entry in rows]
        next_after = rows[-1][0].components if len(rows) == limit else None
        return Page(records, next_after)

    async def iterate(self, *prefix: str, page_size: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[R]:
        """Every record under ``prefix``, in key order, fetched a page at a time."""
        after: tuple[str, ...] | None = None
        while True:
            page = await self.page(*prefix, after=after, limit=page_size)
            for record in page.records:
                yield record
            if page.next_after is None:
                return
            after = page.next_after

    async def list(self, *prefix: str) -> list[R]:
        """Every record under ``prefix`` (at least the owner), in key order."""
        return [record async for record in self.iterate(*prefix)]

    def decode(self, entry: Entry) -> R:
        """Turn a stored entry back into a record, upgrading older schema versions.

        An entry with a memo (one the near cache holds) that is read a second time keeps a
        :func:`~kvstore.models.copies.copier` of the record; later reads of it get a copy
        from that instead of validating anew. Each read gets a record of its own, so a
        caller's changes never reach another's."""
        memo = entry.memo
        if memo is None:
            return self._decode(entry)
        model = self.model
        seen = memo.get(model, 0)
        if not isinstance(seen, int):
            return cast("Callable[[], R]", seen)()
        record = self._decode(entry)
        if seen == 1:  # read again: worth a copier, if the record can have one
            memo[model] = copier(record) or _UNCOPYABLE
        elif seen == 0:
            memo[model] = 1
        return record

    def _decode(self, entry: Entry) -> R:
        serializer, model = self.store.serializer, self.model
        version = serializer.schema_version(entry.value)  # a hint; the validator checks it
        if version == model.SCHEMA_VERSION or (version is None and model.SCHEMA_VERSION == 1):
            try:
                record = serializer.load_model(entry.value, model, context=STORED)
            except ValidationError:
                record = self._decode_upgrading(entry)  # an older shape, or a fooled hint
        else:
            record = self._decode_upgrading(entry)
        stamp(record, entry.version, entry.created_at, entry.updated_at, entry.revision)
        return record

    def _decode_upgrading(self, entry: Entry) -> R:
        return self.model.from_stored(self.store.serializer.loads(entry.value))
