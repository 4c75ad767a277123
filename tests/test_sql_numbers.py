"""jsonb keeps floats floats: the rewrite of exponent-notation numbers, checked against a
real PostgreSQL with Hypothesis-generated JSON."""

from __future__ import annotations

import math
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.sql.numbers import jsonb_exact
from tests.postgres import ADMIN_URL

pytestmark = pytest.mark.postgres

FLOATS = st.floats(allow_nan=False, allow_infinity=False)
INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
"""jsonb holds no NUL character (the store refuses one in any value: SerializationError)."""
JSON = st.recursive(
    st.none() | st.booleans() | FLOATS | INTS | TEXT,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (1.0 is not 1; -0.0 is 0.0's twin)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e20", "100000000000000000000.0"),
        ("-1.5e16", "-15000000000000000.0"),
        ("1e-7", "0.0000001"),
        ('{"a": "1e20", "b": [1e2, 10, 1.5]}', '{"a": "1e20", "b": [100.0, 10, 1.5]}'),
        ('"say \\"1e5\\""', '"say \\"1e5\\""'),
        ("12345", "12345"),
    ],
)
def test_exponent_numbers_become_positional_floats_and_strings_stay(
    text: str, expected: str
) -> None:
    assert jsonb_exact(text.encode()) == expected
    assert same(orjson.loads(jsonb_exact(text.encode())), orjson.loads(text))


@settings(max_examples=300, deadline=None)
@given(value=JSON)
async def test_every_json_value_reads_back_from_jsonb_with_its_types(value: Any) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        text = orjson.dumps(value).decode()
        stored = await conn.fetchval("SELECT $1::jsonb::text", jsonb_exact(text.encode()))
    finally:
        await conn.close()
    assert same(orjson.loads(stored), value), (text, stored)
