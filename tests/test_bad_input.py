"""The bad-input catalogue: everything a service will eventually send, on every backend.

Each case must raise the typed error in its row and change nothing. The README's table
("Bad input") is generated from ``CASES`` (``python -m tests.test_bad_input``) and a test
checks that it is up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import ValidationError

from kvstore import (
    BackendUnavailableError,
    ContextRecord,
    Database,
    DatabaseClosedError,
    IdentityRecord,
    InvalidKeyError,
    InvalidRecordError,
    KVStoreError,
    Record,
    SerializationError,
    StateRecord,
    UserRecord,
)
from kvstore.models.base import Id
from tests.conftest import MakeDb

Action = Callable[[Database], Awaitable[object]]


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"x": value}
    return value


def tampered(**data: object) -> StateRecord:
    """A valid record whose data was changed after validation (as buggy callers do)."""
    record = StateRecord(user_id="victim", session_id="s1", state="A")
    record.data.update(data)  # type: ignore[arg-type]
    return record


class Deep(Record):
    """A caller's record addressed by three ids."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "a", "b")
    user_id: Id
    a: Id
    b: Id


WIDE = "".join(chr(0x20000 + 7 * i) for i in range(255))
"""255 four-byte characters (CJK Extension B), all different: 1,020 bytes, incompressible."""


@dataclass(frozen=True)
class Case:
    """One bad input: what it is, what the caller does, which error it must get."""

    name: str
    action: Action
    error: type[KVStoreError] | None
    """``None``: the call must succeed and find nothing (no cross-user access)."""


CASES = [
    Case("empty user id", lambda db: db.get_state("", "s1"), InvalidKeyError),
    Case("empty session id", lambda db: db.get_state("victim", ""), InvalidKeyError),
    Case("id of 256 characters", lambda db: db.get_state("x" * 256, "s1"), InvalidKeyError),
    Case("NUL byte in an id", lambda db: db.get_state("vic\x00tim", "s1"), InvalidKeyError),
    Case("newline in an id", lambda db: db.delete_state("victim\n", "s1"), InvalidKeyError),
    Case("lone surrogate in an id", lambda db: db.get_identities("\udc80"), InvalidKeyError),
    Case(
        "three ids of 255 four-byte characters (3,066 bytes)",
        lambda db: db.collection(Deep, "deep").save(Deep(user_id=WIDE, a=WIDE, b=WIDE)),
        InvalidKeyError,
    ),
    Case("id that is not a string", lambda db: db.get_state(42, "s1"), InvalidKeyError),  # type: ignore[arg-type]
    Case("NaN in data", lambda db: db.save_state(tampered(x=float("nan"))), SerializationError),
    Case(
        "infinity in data", lambda db: db.save_state(tampered(x=float("-inf"))), SerializationError
    ),
    Case(
        "lone surrogate in data", lambda db: db.save_state(tampered(x="\ud800")), SerializationError
    ),
    Case(
        "NUL character in data", lambda db: db.save_state(tampered(x=["a\x00"])), SerializationError
    ),
    Case("integer 2**64 in data", lambda db: db.save_state(tampered(x=2**64)), SerializationError),
    Case(
        "an object JSON cannot represent",
        lambda db: db.save_state(tampered(x=object())),
        SerializationError,
    ),
    Case("nesting 300 deep", lambda db: db.save_state(tampered(x=nested(300))), SerializationError),
    Case(
        "value over the 1 MiB limit",
        lambda db: db.save_state(tampered(x="y" * (1024 * 1024))),
        InvalidRecordError,
    ),
    Case(
        "record of the wrong kind",
        lambda db: db.save_state(ContextRecord(user_id="victim", session_id="s1")),  # type: ignore[arg-type]
        InvalidRecordError,
    ),
    Case(
        "a dict instead of a record",
        lambda db: db.save_user({"user_id": "victim"}),  # type: ignore[arg-type]
        InvalidRecordError,
    ),
    Case(
        "negative expected_version",
        lambda db: db.save_user(UserRecord(user_id="victim"), expected_version=-1),
        InvalidRecordError,
    ),
    Case(
        "id that looks like another user's key",
        lambda db: db.get_state("victim}:state:s1", "s1"),
        None,
    ),
]

VALIDATION_CASES: list[tuple[str, Callable[[], object]]] = [
    ("empty id in a record", lambda: StateRecord(user_id="", session_id="s", state="A")),
    ("control character in a record id", lambda: UserRecord(user_id="a\tb")),
    (
        "NaN in a new record",
        lambda: StateRecord(user_id="u", session_id="s", state="A", data={"x": float("nan")}),
    ),
    (
        "a set in a new record",
        lambda: StateRecord(user_id="u", session_id="s", state="A", data={"x": {1}}),
    ),
    (
        "nesting 300 deep in a new record",
        lambda: StateRecord(user_id="u", session_id="s", state="A", data=nested(300)),
    ),
    ("unknown field", lambda: UserRecord(user_id="u", nickname="x")),  # type: ignore[call-arg]
    ("wrong type", lambda: IdentityRecord(user_id="u", identity_id="i", category=1, name="n")),
    ("naive created_at", lambda: UserRecord(user_id="u", created_at="2026-01-01T00:00:00")),
]


async def snapshot(db: Database) -> tuple[object, ...]:
    return (
        await db.get_state("victim", "s1"),
        await db.get_user("victim"),
        await db.list_sessions("victim"),
        await db.get_identities("victim"),
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_bad_input_gets_a_typed_error_and_changes_nothing(db: Database, case: Case) -> None:
    await db.save_state(StateRecord(user_id="victim", session_id="s1", state="ORIGINAL"))
    await db.save_user(UserRecord(user_id="victim", display_name="V"))
    before = await snapshot(db)
    if case.error is None:
        assert await case.action(db) is None
    else:
        with pytest.raises(case.error):
            await case.action(db)
    assert await snapshot(db) == before


@pytest.mark.parametrize(
    "build", [build for _, build in VALIDATION_CASES], ids=[name for name, _ in VALIDATION_CASES]
)
def test_invalid_records_are_rejected_by_pydantic(build: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        build()


async def test_a_closed_database_refuses_everything(make_db: MakeDb) -> None:
    db = make_db()
    try:
        await db.save_state(StateRecord(user_id="victim", session_id="s1", state="A"))
    finally:
        await db.close()
    for operation in (
        db.get_state("victim", "s1"),
        db.save_state(StateRecord(user_id="victim", session_id="s1", state="B")),
        db.delete_user("victim"),
        db.initialize(),
    ):
        with pytest.raises(DatabaseClosedError):
            await operation


async def test_close_during_operations_gives_typed_errors_or_results(make_db: MakeDb) -> None:
    db = make_db()

    async def save(n: int) -> object:
        await asyncio.sleep(0)
        return await db.save_state(StateRecord(user_id="victim", session_id=f"s{n}", state="A"))

    try:
        await db.initialize()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(save(n) for n in range(50)), db.close(), return_exceptions=True),
            timeout=30,
        )
    finally:
        await db.close()  # idempotent; closes it if the gather never got to
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, DatabaseClosedError | BackendUnavailableError), outcome


async def test_a_cancelled_save_is_all_or_nothing_and_the_store_stays_healthy(
    db: Database,
) -> None:
    for attempt in range(20):
        record = StateRecord(
            user_id="victim", session_id=f"s{attempt}", state="A", data={"n": attempt}
        )
        task = asyncio.create_task(db.save_state(record))
        for _ in range(attempt % 5):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stored = await db.get_state("victim", f"s{attempt}")
        assert stored is None or (stored.version, stored.data) == (1, {"n": attempt})
    saved = await db.save_state(StateRecord(user_id="victim", session_id="after", state="OK"))
    assert await db.get_state("victim", "after") == saved


def catalogue_table() -> str:
    """The README's table of bad-input cases and their outcomes."""
    rows = ["| bad input | outcome |", "|---|---|"]
    rows += [
        f"| {case.name} | "
        + ("succeeds, finds nothing |" if case.error is None else f"`{case.error.__name__}` |")
        for case in CASES
    ]
    rows += [
        f"| {name} | pydantic `ValidationError` at construction |" for name, _ in VALIDATION_CASES
    ]
    rows += [
        "| any operation on a closed database | `DatabaseClosedError` |",
        "| `close()` during 50 concurrent saves | each save succeeds or raises "
        "`DatabaseClosedError` / `BackendUnavailableError` |",
        "| a save cancelled mid-flight (20 times) | fully saved or not at all; the store "
        "keeps working |",
    ]
    return "\n".join(rows)


def test_readme_table_is_current() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert catalogue_table() in readme, "run: python -m tests.test_bad_input"


if __name__ == "__main__":
    print(catalogue_table())
