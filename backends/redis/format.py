"""How the Redis backend lays out keys and values; pure functions, no I/O.

Keys (``P`` is the key prefix, ``{o}`` the escaped owner: the cluster hash tag)::

    P{o}:ns:c2:...     a record: packed value (below), Redis PX expiry = the entry's TTL
    P{o}:ns:c2:...*l   the record's fill lease (versioned cache only): a random token and
                       the erase epoch it was taken in (leases are not indexed)
    P{o}*i:ns          index of the owner's keys in ``ns``: sorted set, score 0, member =
                       the components after the owner, each UTF-8 + NUL (ZRANGEBYLEX order
                       is component order)
    P{o}*n             the namespaces the owner has keys in: a set
    P{o}*r             the owner's revision counter (store mode)
    P{o}*w             the owner's erase epoch, bumped by every erase (fences old leases)
    P*live             the generation marker (cache mode, standalone servers)

:func:`kvstore.keys.redis_key` percent-escapes ``*`` (and ``% : { } ? [ ] \\`` and space) in
every component and namespaces are ``[a-z0-9_.-]``, so after the hash tag a record key never
contains ``*``: lease, index and namespace-set keys can never equal a record key.

Values are one string, ``TAG:revision:version:created_us:updated_us:expires_us:`` then the
serialized bytes, so one GET returns everything. ``TAG`` is ``e2`` for an entry (format 2)
and ``t2`` for a versioned-cache tombstone (no bytes; version and times 0). Times are
integer microseconds since the epoch (0: never expires). Format 1 (``e1``/``t1``: no
revision) is still read, as revision 0.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from backends.base import Entry
from kvstore.errors import ConfigurationError, SerializationError
from kvstore.keys import Key, redis_component, redis_key, redis_owner_tag

ENTRY_TAG: Final = b"e2"
TOMBSTONE_TAG: Final = b"t2"
_OLD_ENTRY_TAG: Final = b"e1"
_OLD_TOMBSTONE_TAG: Final = b"t1"
LEASE_SUFFIX: Final = "*l"
DEFAULT_KEY_PREFIX: Final = "kv:"

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_NAME_CACHE_SIZE: Final = 8192
_PREFIX: Final = re.compile(r"[A-Za-z0-9_.:-]{0,64}")


def check_prefix(prefix: str) -> str:
    """A key prefix must not contain hash-tag braces or glob characters."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigurationError("key_prefix must match [A-Za-z0-9_.:-]{0,64}")
    return prefix


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(micros: int) -> datetime:
    """Inverse of :func:`to_us` (exact)."""
    return _EPOCH + timedelta(microseconds=micros)


class Layout:
    """Key names for one key prefix. Record key names of recently used keys are kept in
    a bounded dict: escaping is pure, and hot keys are asked for again and again."""

    __slots__ = ("_indexes", "_names", "prefix")

    def __init__(self, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.prefix = check_prefix(prefix)
        self._names: dict[Key, str] = {}
        self._indexes: dict[tuple[str, str], tuple[str, str]] = {}

    def record(self, key: Key) -> str:
        """The record key of ``key``."""
        name = self._names.get(key)
        if name is None:
            if len(self._names) >= _NAME_CACHE_SIZE:
                self._names.clear()
            name = self._names[key] = redis_key(key, self.prefix)
        return name

    def owner_keys(self, owner: str, namespace: str) -> tuple[str, str]:
        """``(index, namespaces)`` of ``owner`` and ``namespace``, as kept beside records."""
        names = self._indexes.get((owner, namespace))
        if names is None:
            if len(self._indexes) >= _NAME_CACHE_SIZE:
                self._indexes.clear()
            names = (self.index(owner, namespace), self.namespaces(owner))
            self._indexes[owner, namespace] = names
        return names

    def lease(self, record: str) -> str:
        """The lease key beside a record key."""
        return record + LEASE_SUFFIX

    def owner_tag(self, owner: str) -> str:
        """``P{owner}``: the start of every key of ``owner``."""
        return redis_owner_tag(owner, self.prefix)

    def index(self, owner: str, namespace: str) -> str:
        """The sorted set of ``owner``'s keys in ``namespace``."""
        return f"{self.owner_tag(owner)}*i:{namespace}"

    def namespaces(self, owner: str) -> str:
        """The set of namespaces ``owner`` has keys in."""
        return f"{self.owner_tag(owner)}*n"

    def erase_epoch(self, owner: str) -> str:
        """The counter bumped by every erase of ``owner``; a lease names the value it was
        taken under, so one taken before an erase cannot fill after it."""
        return f"{self.owner_tag(owner)}*w"

    def revision_counter(self, owner: str) -> str:
        """The counter that gives ``owner``'s changes their revisions (store mode)."""
        return f"{self.owner_tag(owner)}*r"

    def lock(self, owner: str, name: str) -> tuple[str, str, str]:
        """``(queue, expiries, fence)`` of lock ``name`` of ``owner``: the sorted set of its
        tickets, the hash of when each expires, and its newest fencing token."""
        base = f"{self.owner_tag(owner)}*L:{redis_component(name)}"
        return f"{base}:q", f"{base}:x", f"{base}:f"

    def lock_counter(self, owner: str) -> str:
        """The counter ``owner``'s lock tickets are drawn from (never erased, so tokens
        only grow)."""
        return f"{self.owner_tag(owner)}*k"

    @property
    def marker(self) -> str:
        """The generation marker: its absence tells a cache that lost keys (flushed)."""
        return f"{self.prefix}*live"


def member(components: tuple[str, ...]) -> bytes:
    """Index member for the components after the owner: ordered like the tuples."""
    return b"".join(component.encode() + b"\x00" for component in components)


def member_key(owner: str, namespace: str, data: bytes) -> Key:
    """Inverse of :func:`member`, as a full key."""
    parts = data.split(b"\x00")
    return Key(namespace, (owner, *(part.decode() for part in parts[:-1])))


def pack(entry: Entry) -> bytes:
    """One string holding ``entry`` and its metadata."""
    expires = to_us(entry.expires_at) if entry.expires_at is not None else 0
    header = b"e2:%d:%d:%d:%d:%d:" % (
        entry.revision,
        entry.version,
        to_us(entry.created_at),
        to_us(entry.updated_at),
        expires,
    )
    return header + entry.value


def pack_tombstone(revision: int) -> bytes:
    """A tombstone of ``revision`` (no value)."""
    return b"t2:%d:0:0:0:0:" % revision


def unpack(data: bytes) -> Entry | None:
    """The entry in a packed string; ``None`` for a tombstone."""
    tag = data[:2]
    try:
        if tag == ENTRY_TAG:
            _, revision, version, created, updated, expires, value = data.split(b":", 6)
        elif tag == _OLD_ENTRY_TAG:
            _, version, created, updated, expires, value = data.split(b":", 5)
            revision = b"0"
        elif tag in (TOMBSTONE_TAG, _OLD_TOMBSTONE_TAG):
            return None
        else:
            raise ValueError(tag)
        created_at = from_us(int(created))
        return Entry(
            value,
            int(version),
            created_at,
            created_at if updated == created else from_us(int(updated)),
            None if expires == b"0" else from_us(int(expires)),
            int(revision),
        )
    except ValueError:
        raise SerializationError(
            "a Redis value is not in a format this version of kvstore reads"
        ) from None
