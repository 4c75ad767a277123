"""The JSON serializer: exact round trips, refusals of what JSON cannot carry."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue, ValidationError

from backends.base import Entry
from kvstore import (
    ContextRecord,
    DatabaseType,
    Id,
    IdentityRecord,
    Record,
    SerializationError,
    StateRecord,
    UserRecord,
    create_database,
)
from kvstore.models.base import METADATA_FIELDS, stamp
from kvstore.store import Store
from serializers import JSONSerializer, Serializer

plain_text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | plain_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def test_json_serializer_is_a_serializer() -> None:
    assert isinstance(JSONSerializer(), Serializer)
    assert JSONSerializer().format == "json"


@given(st.dictionaries(plain_text, json_values, max_size=5))
def test_round_trip_is_exact(data: dict[str, JsonValue]) -> None:
    serializer = JSONSerializer()
    record = StateRecord(user_id="u", session_id="s", state="A", data=data)
    encoded = serializer.dumps(record, exclude=METADATA_FIELDS)
    decoded = serializer.loads(encoded)
    assert decoded.pop("schema_version") == 1
    assert StateRecord.model_validate(decoded) == record


def test_output_is_plain_json_without_store_metadata() -> None:
    record = StateRecord(user_id="u", session_id="s", state="A", data={"n": 1})
    parsed = orjson.loads(JSONSerializer().dumps(record, exclude=METADATA_FIELDS))
    assert parsed == {
        "user_id": "u",
        "session_id": "s",
        "state": "A",
        "data": {"n": 1},
        "schema_version": 1,
    }


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, "\udfff", 2**64, -(2**63) - 1, "nul\x00"]
)
def test_unfaithful_values_are_refused(bad: object) -> None:
    record = StateRecord(user_id="u", session_id="s", state="A")
    record.data["x"] = {"deep": [bad]}  # type: ignore[list-item]
    with pytest.raises(SerializationError):
        JSONSerializer().dumps(record)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1234567890123456789012"])
def test_lookalike_strings_are_fine(text: str) -> None:
    record = StateRecord(user_id="u", session_id="s", state=text, data={text: text})
    decoded = JSONSerializer().loads(JSONSerializer().dumps(record))
    assert decoded["data"] == {text: text}


@pytest.mark.parametrize("stored", [b"not json", b"[1, 2]", b"\xff"])
def test_corrupt_stored_values_raise_serialization_error(stored: bytes) -> None:
    with pytest.raises(SerializationError):
        JSONSerializer().loads(stored)


async def test_decoding_survives_reordered_keys_and_nested_schema_versions() -> None:
    """PostgreSQL's JSONB reorders keys and adds spaces; a nested "schema_version" key must
    not fool the fast path."""
    db = create_database(DatabaseType.MEMORY)
    assert isinstance(db, Store)
    now = datetime.now(UTC)
    stored = (
        b'{"data": {"z": {"schema_version": 7}}, "state": "A", "user_id": "u", '
        b'"session_id": "s", "schema_version": 1}'
    )
    nested_last = (
        b'{"user_id":"u","session_id":"s","state":"A","schema_version":1,'
        b'"data":{"schema_version":7}}'
    )
    for value in (stored, nested_last):
        record = db.states.decode(Entry(value, 3, now, now))
        assert (record.user_id, record.state, record.version) == ("u", "A", 3)
        assert record.data["z" if value is stored else "schema_version"] is not None
    await db.close()


class Words(Record):
    """Version 2 of a note whose version 1 had no word count: version 1 data validates as
    version 2 too (``words`` has a default), so only the version tells them apart."""

    SCHEMA_VERSION: ClassVar[int] = 2
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "note_id")
    user_id: Id
    note_id: Id
    body: str
    words: int = 0
    meta: JsonValue = None


@Words.upgrade(from_version=1)
def _count_words(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "words": len(str(data["body"]).split())}


@pytest.mark.parametrize(
    "value",
    [
        b'{"user_id": "u", "note_id": "n", "body": "two words"}',
        b'{"user_id":"u","note_id":"n","body":"two words","meta":{"schema_version":2}}',
        b'{"user_id":"u","note_id":"n","body":"two words","schema_version":1,'
        b'"meta":{"schema_version":2}}',
    ],
    ids=["no version (a batch job's row)", "only a nested version", "nested after v1"],
)
async def test_data_without_a_top_level_current_version_is_upgraded_on_every_path(
    value: bytes,
) -> None:
    """Stored data without ``schema_version`` is version 1 on the fast path as in
    ``from_stored``; a nested ``"schema_version"`` that looks current does not make it so."""
    db = create_database(DatabaseType.MEMORY)
    now = datetime.now(UTC)
    record = db.collection(Words, "words").decode(Entry(value, 1, now, now))
    assert (record.body, record.words) == ("two words", 2)
    assert Words.from_stored(orjson.loads(value)).words == 2
    await db.close()


RECORDS = [
    StateRecord(user_id="u", session_id="s", state="A", data={"x": [1.5, 1e20, "y"]}),
    ContextRecord(user_id="u", session_id="s", context={"turns": [{"who": "coach"}]}),
    IdentityRecord(user_id="u", identity_id="i", name="Reader", category="self"),
    UserRecord(user_id="u", email="u@example.com", preferences={"tz": "UTC"}),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_a_records_own_pydantic_dump_validates_back(record: Record) -> None:
    """What an HTTP endpoint returns and reads back: dump and validate, as Python and as
    JSON, give the same record (``schema_version`` in the dump is the class's own)."""
    stamped = record.model_copy()
    stamp(stamped, 3, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), 42)
    cls = type(record)
    for subject in (record, stamped):
        assert cls.model_validate(subject.model_dump()) == subject
        assert cls.model_validate_json(subject.model_dump_json()) == subject
        assert cls.model_validate(subject.model_dump(mode="json")) == subject


def test_a_dump_of_another_schema_version_is_refused_by_validation() -> None:
    dumped = RECORDS[0].model_dump()
    dumped["schema_version"] = 0
    with pytest.raises(ValidationError, match="from_stored"):
        StateRecord.model_validate(dumped)
