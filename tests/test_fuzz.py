"""A fuzz harness over the public API (Hypothesis), on every backend of the conformance suite.

Random ids (every Unicode plane, surrogates, control characters, empty, over the length
limit), values (floats of every magnitude and the non-finite ones, integers past 64 bits,
text of every plane, nesting, sizes past the limit), TTLs (NaN, infinities, negative,
zero, huge, ``timedelta``) go through ``save_state`` / ``get_state`` / ``delete_state``.
The invariants:

* only :class:`KVStoreError` subclasses escape the store (a record pydantic refuses never
  reaches it), and never :class:`BackendUnavailableError` on healthy servers: bad input is
  refused before any I/O;
* a refused call changed nothing;
* an accepted value reads back equal, with the same types, and on a tiered store the same
  from the cache and from the system of record.

Records go through a collection of the caller's own (``db.collection``, the public generic
API, which takes a per-save ``ttl``) whose ``data`` is any pydantic-accepted value, so the
serializer, not only pydantic, is what refuses (NaN, lone surrogates, huge integers).

Each example uses a fresh user, so examples never see each other's records.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from backends.tiered import TieredBackend
from kvstore import (
    BackendUnavailableError,
    Database,
    DatabaseType,
    KVStoreError,
    Record,
    create_database,
)
from kvstore.collection import Collection
from kvstore.models.base import Id
from kvstore.store import Store
from tests.conftest import MakeDb

T = TypeVar("T")


class Item(Record):
    """A record of the caller's own, holding anything pydantic accepts."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "item_id")
    user_id: Id
    item_id: Id
    data: Any = None


EXAMPLES = 60
"""Examples per backend and test (the figure the README's "Bad input" section reports)."""
MAX_VALUE_BYTES = 4096
"""A small value limit, so that values over it are drawn often."""

TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
"""Any code point: every plane, lone surrogates, control characters."""
IDS = st.one_of(
    TEXT,
    st.text(st.characters(codec=None), min_size=250, max_size=300),
    st.sampled_from(["u", "a:b", "{x}", "*", "[/b]", "é", "😀", "\x1f", "%s", "../x"]),
)
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from([1e16, 1e20, 1e308, 5e-324, -0.0, 2.0**53 + 1, 0.1]),
)
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=16,
)
DATA = st.one_of(
    VALUES,
    st.dictionaries(TEXT, VALUES, max_size=6),
    st.builds(lambda n: {"blob": "x" * n}, st.integers(min_value=3000, max_value=6000)),
)
TTLS = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-9, 3600.0, 1e12, 10**20, True]),
    st.floats(min_value=60, max_value=10**9),
    st.timedeltas(min_value=timedelta(days=-2), max_value=timedelta(days=365 * 200)),
)
LONG_ENOUGH = 60.0
"""Seconds of TTL after which an accepted record must still be there when read back."""


def same(left: object, right: object) -> bool:
    """Equal, with the same types all the way down (``1`` is not ``1.0``)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        assert isinstance(right, list)
        return len(left) == len(right) and all(map(same, left, right))
    return left == right


def seconds_of(ttl: object) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        return ttl.total_seconds()
    assert isinstance(ttl, int | float)
    return float(ttl)


class Harness:
    """One database and one event loop for every example of a test."""

    def __init__(self, make_db: MakeDb) -> None:
        self.loop = asyncio.new_event_loop()
        self.db: Database = make_db(max_value_bytes=MAX_VALUE_BYTES)
        self.items: Collection[Item] = self.db.collection(Item, "fuzz")
        self.tried = self.refused = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        try:
            self.run(self.db.close())
        finally:
            self.loop.close()

    async def from_the_record(self, user: str, item: str) -> Item | None:
        """On a tiered store, the record as the system of record holds it (else ``None``)."""
        assert isinstance(self.db, Store)
        backend = self.db.backend
        if not isinstance(backend, TieredBackend):
            return None
        entry = await backend.record.get(self.items.key(user, item))
        return None if entry is None else self.items.decode(entry)

    async def save_and_read(self, user: str, item: str, data: Any, ttl: object) -> None:
        self.tried += 1
        try:
            record = Item(user_id=user, item_id=item, data=data)
        except ValidationError:
            self.refused += 1
            return  # pydantic refused it: it never reaches the store
        try:
            saved = await self.items.save(record, ttl=ttl)  # type: ignore[arg-type]
        except BackendUnavailableError as error:
            pytest.fail(f"a healthy server failed on this input: {error}")
        except KVStoreError:
            self.refused += 1
            await self.nothing_there(user, item)
            return
        ttl_seconds = seconds_of(ttl)
        if ttl_seconds is not None and ttl_seconds < LONG_ENOUGH:
            return  # accepted, and may be gone by now: expiry has its own tests
        read = await self.items.get(user, item)
        assert read is not None
        assert same(read.data, saved.data), (read.data, saved.data)
        assert same(saved.data, record.data)
        assert read.version == saved.version == 1
        stored = await self.from_the_record(user, item)
        if stored is not None:
            assert same(stored.data, read.data), (stored.data, read.data)
        assert await self.items.delete(user, item)
        assert await self.items.get(user, item) is None

    async def nothing_there(self, user: str, item: str) -> None:
        """A refused save left nothing (or the key itself is invalid, refused alike)."""
        try:
            found = await self.items.get(user, item)
        except BackendUnavailableError as error:
            pytest.fail(f"a healthy server failed on this input: {error}")
        except KVStoreError:
            return
        assert found is None


@pytest.fixture
def harness(make_db: MakeDb, request: pytest.FixtureRequest) -> Any:
    """The harness of one test; afterwards it must have seen both accepted and refused
    cases (each branch of the invariants ran), and it prints the counts (``-s``)."""
    made = Harness(make_db)
    try:
        yield made
    finally:
        made.close()
    accepted = made.tried - made.refused
    print(f"\n{request.node.name}: {made.tried} cases, {made.refused} refused, {accepted} stored")
    assert made.refused, "no case was refused"
    assert accepted, "no case was stored"


FUZZ = settings(
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@FUZZ
@given(data=DATA, ttl=TTLS)
def test_values_and_ttls_are_stored_exactly_or_refused_typed(
    harness: Harness, data: Any, ttl: object
) -> None:
    user = f"fuzz-{uuid.uuid4().hex[:12]}"
    harness.run(harness.save_and_read(user, "s1", data, ttl))


@FUZZ
@given(user_tail=IDS, item=IDS)
def test_ids_are_stored_exactly_or_refused_typed(
    harness: Harness, user_tail: str, item: str
) -> None:
    user = f"fuzz-{uuid.uuid4().hex[:8]}-{user_tail}"
    harness.run(harness.save_and_read(user, item, {"n": 1}, None))


# -- URLs: typed errors, and no secret in any output -------------------------------------

SECRET_CHARS = st.characters(codec="ascii", categories=["L", "N"], include_characters="/@:%=;!$")
"""What a password may hold as typed into a URL (``?``, ``#`` and ``&`` split URLs and
query strings and must be percent-encoded; ``/`` is the common mistake kvstore masks)."""
SECRETS = st.builds(lambda tail: "Pw9" + tail, st.text(SECRET_CHARS, min_size=6, max_size=16))
KINDS = {
    "postgresql": DatabaseType.SQL,
    "postgresql+asyncpg": DatabaseType.SQL,
    "sqlite": DatabaseType.SQL,
    "mysql": DatabaseType.SQL,
    "redis": DatabaseType.REDIS,
    "rediss": DatabaseType.REDIS,
    "redis+sentinel": DatabaseType.REDIS,
    "redis+cluster": DatabaseType.REDIS,
    "memory": DatabaseType.REDIS,
}
PORTS = st.one_of(
    st.sampled_from(["", ":1", ":1", ":0", ":65536", ":99999", ":-1", ":x"]),
    st.integers(min_value=-5, max_value=10**6).map(lambda port: f":{port}"),
    st.text(st.characters(codec="ascii"), max_size=4).map(lambda port: f":{port}"),
)
EXTRAS = st.sampled_from(
    ["", "sslmode=disable", "poolsize=5", "db=x", "ssl=require", "socket_timeout=nan"]
)


class Recorder(logging.Handler):
    """Every log record of every logger, formatted with its exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception chained to it."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(
    scheme=st.sampled_from(sorted(KINDS)),
    secret=SECRETS,
    where=st.sampled_from(["userinfo", "query", "sentinel"]),
    port=PORTS,
    extra=EXTRAS,
)
def test_urls_are_refused_typed_and_never_show_a_secret(
    scheme: str, secret: str, where: str, port: str, extra: str
) -> None:
    """Built (no I/O) or refused with a ``KVStoreError``; the password shows in no
    message, ``repr``, chained exception or log line at any level; a store that builds
    and points at a closed port fails its first call typed, without the password."""
    query = [extra] if extra else []
    userinfo = ""
    if where == "userinfo":
        userinfo = f"coach:{secret}@"
    else:
        name = "password" if where == "query" else "sentinel_password"
        query.append(f"{name}={quote(secret, safe='')}")
    url = f"{scheme}://{userinfo}127.0.0.1{port}/0" + ("?" + "&".join(query) if query else "")
    recorder = Recorder()
    root = logging.getLogger()
    root.addHandler(recorder)
    level, root.level = root.level, logging.DEBUG
    outputs: list[str] = []
    try:
        db = create_database(KINDS[scheme], url)
        outputs += [repr(db), str(db)]
        if port == ":1":
            with pytest.raises(KVStoreError) as failed:
                asyncio.run(_first_call(db))
            outputs += [text for e in chain(failed.value) for text in (str(e), repr(e))]
    except KVStoreError as error:
        outputs += [text for e in chain(error) for text in (str(e), repr(e))]
    finally:
        root.removeHandler(recorder)
        root.level = level
    outputs += recorder.lines
    for encoded in {secret, quote(secret, safe=""), quote(secret)}:
        assert not any(encoded in text for text in outputs), (url, outputs)


async def _first_call(db: Database) -> None:
    try:
        async with asyncio.timeout(30):
            await db.get_state("u1", "s1")
    finally:
        await db.close()
