"""The JSON serializer: exact round trips, refusals of what JSON cannot carry."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import JsonValue

from backends.base import Entry
from kvstore import DatabaseType, SerializationError, StateRecord, create_database
from kvstore.models.base import METADATA_FIELDS
from kvstore.store import Store
from serializers import JSONSerializer, Serializer

plain_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | plain_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(exclude_categories=["Cs"])), inner, max_size=4
        )
    ),
    max_leaves=20,
)


def test_json_serializer_is_a_serializer() -> None:
    assert isinstance(JSONSerializer(), Serializer)
    assert JSONSerializer().format == "json"


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
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


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "\udfff", 2**64, -(2**63) - 1])
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
