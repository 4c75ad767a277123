"""Stateful property test: the Redis backend (on fakeredis) and the memory backend, driven
by the same random operations, always agree (versions, conflicts, listings, erasure, bulk
scans in key order)."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from backends.base import Backend, Entry
from backends.memory import MemoryBackend
from backends.redis import build_redis_backend
from kvstore.errors import ConflictError
from kvstore.keys import Key

OWNERS = st.sampled_from(["u1", "u10", "u:1", "u*", "}{", "{t}"])
IDS = st.sampled_from(["a", "a:b", "b", "[x]", "é", "a\\"])
NAMESPACES = st.sampled_from(["state", "notes"])
VERSIONS = st.none() | st.integers(min_value=0, max_value=3)


def _comparable(entry: Entry | None) -> tuple[bytes, int] | None:
    return None if entry is None else (entry.value, entry.version)


class RedisAgreesWithMemory(RuleBasedStateMachine):
    """Each rule runs on both backends and compares the outcomes."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        self.redis = build_redis_backend(None, {"redis_client": self.client})
        self.memory = MemoryBackend()

    def run(self, make: Any) -> tuple[Any, Any]:
        async def both() -> tuple[Any, Any]:
            return await _outcome(make(self.redis)), await _outcome(make(self.memory))

        return self.loop.run_until_complete(both())

    @rule(ns=NAMESPACES, owner=OWNERS, item=IDS, expected=VERSIONS, value=st.binary(max_size=8))
    def put(self, ns: str, owner: str, item: str, expected: int | None, value: bytes) -> None:
        key = Key(ns, (owner, item))
        got, want = self.run(lambda b: b.put(key, value, expected_version=expected))
        assert got == want

    @rule(ns=NAMESPACES, owner=OWNERS, item=IDS, expected=VERSIONS)
    def delete(self, ns: str, owner: str, item: str, expected: int | None) -> None:
        key = Key(ns, (owner, item))
        got, want = self.run(lambda b: b.delete(key, expected_version=expected))
        # the revision of a deletion is the store's own (per owner on Redis): compare whether
        assert (bool(got) if isinstance(got, int) else got) == (
            bool(want) if isinstance(want, int) else want
        )

    @rule(owner=OWNERS)
    def delete_owner(self, owner: str) -> None:
        got, want = self.run(lambda b: b.delete_owner(owner))
        assert got == want

    @rule(ns=NAMESPACES, owner=OWNERS, limit=st.integers(min_value=1, max_value=4))
    def list_pages(self, ns: str, owner: str, limit: int) -> None:
        async def pages(backend: Backend) -> list[tuple[tuple[str, ...], Any]]:
            seen: list[tuple[tuple[str, ...], Any]] = []
            after = None
            while True:
                page = await backend.list(ns, (owner,), after=after, limit=limit)
                seen += [(key.components, _comparable(entry)) for key, entry in page]
                if len(page) < limit:
                    return seen
                after = page[-1][0].components

        got, want = self.run(pages)
        assert got == want

    @rule(ns=st.none() | NAMESPACES, owner=st.none() | OWNERS, size=st.integers(1, 3))
    def scan(self, ns: str | None, owner: str | None, size: int) -> None:
        async def scanned(backend: Backend) -> list[tuple[Key, Any]]:
            items = backend.scan(namespace=ns, owner=owner, batch_size=size)
            return [(key, _comparable(entry)) async for key, entry in items]

        got, want = self.run(scanned)
        assert got == want

    @invariant()
    def same_entries(self) -> None:
        keys = [Key(ns, (o, i)) for ns in ("state", "notes") for o in OWNERS_ALL for i in IDS_ALL]
        got, want = self.run(lambda b: b.get_many(keys))
        assert got == want

    def teardown(self) -> None:
        try:
            self.loop.run_until_complete(self.redis.close())
        finally:
            try:
                self.loop.run_until_complete(self.client.aclose())
            finally:
                self.loop.close()


OWNERS_ALL = ["u1", "u10", "u:1", "u*", "}{", "{t}"]
IDS_ALL = ["a", "a:b", "b", "[x]", "é", "a\\"]


async def _outcome(call: Any) -> Any:
    """What a call returned (entries reduced to value and version), or its conflict."""
    try:
        result = await call
    except ConflictError as conflict:
        return ("conflict", conflict.expected, conflict.actual)
    if isinstance(result, Entry):
        return _comparable(result)
    if isinstance(result, list):
        return [_comparable(item) if isinstance(item, Entry | None) else item for item in result]
    return result


RedisAgreesWithMemory.TestCase.settings = settings(
    max_examples=40, stateful_step_count=25, deadline=None
)
test_redis_agrees_with_memory = RedisAgreesWithMemory.TestCase
