"""Copies of a validated record (``kvstore.models.copies``): independent of the original
and of each other, sharing only immutable values; none where a copy could be unfaithful."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import ConfigDict, PrivateAttr

from kvstore import StateRecord
from kvstore.models.base import Id, Record, stamp
from kvstore.models.copies import copier


def saved_state() -> StateRecord:
    record = StateRecord(
        user_id="u1", session_id="s1", state="A", data={"turns": [{"text": "hi"}], "n": 1}
    )
    now = datetime.now(UTC)
    stamp(record, 3, now, now, 42)
    return record


def test_copies_equal_the_record_and_share_nothing_that_changes() -> None:
    record = saved_state()
    copy = copier(record)
    assert copy is not None
    first, second = copy(), copy()
    assert first == second == record
    assert first.data is not record.data
    assert first.data["turns"] is not second.data["turns"]
    assert first.updated_at is record.updated_at  # immutable: shared
    turns = first.data["turns"]
    assert isinstance(turns, list)
    assert isinstance(turns[0], dict)
    turns[0]["text"] = "changed"
    first.state = "B"
    assert copy() == record


def test_changes_to_the_record_after_the_copier_was_made_do_not_reach_copies() -> None:
    record = saved_state()
    copy = copier(record)
    assert copy is not None
    record.state = "B"
    record.data["n"] = 2
    assert (copy().state, copy().data["n"]) == ("A", 1)


class Opaque:
    """Equal only to itself: a pickled copy would not be equal."""


class Holder(Record):
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id",)
    model_config = ConfigDict(arbitrary_types_allowed=True)
    user_id: Id
    thing: Any = None


class WithPrivate(Record):
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id",)
    user_id: Id
    _drafts: list[str] = PrivateAttr(default_factory=list)


def test_no_copier_where_a_copy_could_differ() -> None:
    assert copier(Holder(user_id="u1", thing=Opaque())) is None
    assert copier(Holder(user_id="u1", thing=lambda: None)) is None  # pickle refuses it
    assert copier(WithPrivate(user_id="u1")) is None
    assert copier(Holder(user_id="u1", thing={"a": [1]})) is not None
