"""Copies of a validated record (``kvstore.models.copies``): independent of the original
and of each other, sharing only immutable values; none where a copy could be unfaithful."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

import pytest
from pydantic import ConfigDict, PrivateAttr

from kvstore import StateRecord
from kvstore.models.base import Id, Record, stamp
from kvstore.models.copies import copier, plain_json


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


class Colour(StrEnum):
    RED = "red"


class Key(str):
    """A string of a subclass: JSON would read it back as a plain ``str``."""


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ({"a": [1, 2.5, "x", True, None, {"b": []}]}, True),
        (-(2**63), True),
        (2**63, False),  # orjson writes 64-bit integers only
        (float("nan"), False),
        (float("inf"), False),
        ((1, 2), False),  # a tuple reads back as a list
        ({1: "a"}, False),
        ({Key("a"): 1}, False),
        ([Colour.RED], False),  # equal to "red", but not a str
        ({"a": Key("b")}, False),
        (b"bytes", False),
    ],
)
def test_plain_json_is_exactly_what_orjson_reads_back_as_it_was(value: Any, plain: bool) -> None:
    assert plain_json(value) is plain


def test_values_that_are_not_plain_json_keep_their_types_in_copies() -> None:
    """A list of enum members equals the list of their strings; copied through JSON it
    would come back as strings, so it goes through pickle and comes back as members."""
    copy = copier(Holder(user_id="u1", thing={"colours": [Colour.RED], "pair": (1, 2)}))
    assert copy is not None
    thing = copy().thing
    assert type(thing["colours"][0]) is Colour
    assert type(thing["pair"]) is tuple


def test_plain_json_values_are_copied_with_their_exact_values() -> None:
    value = {"big": 2**62, "small": -0.0, "float": 0.1 + 0.2, "text": "ünï\u0000", "none": None}
    copy = copier(Holder(user_id="u1", thing=value))
    assert copy is not None
    thing = copy().thing
    assert thing == value
    assert thing is not value
    assert repr(thing["small"]) == "-0.0"
