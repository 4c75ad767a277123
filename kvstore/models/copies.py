"""Independent copies of a validated record, for a fraction of what validating it costs.

The near cache serves one entry to many reads, and each read must return a record of its
own (the caller may change it). :func:`copier` looks at a record once: values of immutable
types (strings, numbers, times, ``None``) are shared by every copy; every other value is
kept serialized and read back anew for each copy: plain JSON (the objects in ``data``,
``context``, ``preferences``: dicts with string keys, lists, strings, 64-bit integers,
finite floats, booleans, ``None``, and nothing else, not even a subclass) with orjson,
anything else with pickle (which keeps types that JSON would turn into others). A copy of
the benchmarks' 1.3 KB session record takes ~4 µs (pickle alone: ~6); validating its JSON
again, ~9.

Pickle here only reads back what this process pickled itself a moment before.
"""

from __future__ import annotations

import math
import pickle
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final, TypeVar
from uuid import UUID

import orjson

if TYPE_CHECKING:
    from collections.abc import Callable

    from kvstore.models.base import Record

R = TypeVar("R", bound="Record")

SHARED_TYPES: Final = frozenset(
    (str, int, float, bool, type(None), bytes, Decimal, UUID, datetime, date, time, timedelta)
)
"""Types whose values never change, so copies may share them (exact types only: a
subclass may add state that changes)."""


_INT64: Final = range(-(2**63), 2**63)
"""The integers orjson writes."""


def plain_json(value: object) -> bool:
    """Whether ``value`` is plain JSON that orjson reads back as it is: exactly dicts with
    string keys, lists, strings, 64-bit integers, finite floats, booleans and ``None``."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if isinstance(value, int):
        return kind is int and value in _INT64
    if isinstance(value, float):
        return kind is float and math.isfinite(value)
    if isinstance(value, list):
        return kind is list and all(plain_json(item) for item in value)
    if isinstance(value, dict):
        return kind is dict and all(
            type(name) is str and plain_json(item) for name, item in value.items()
        )
    return False


def copier(record: R) -> Callable[[], R] | None:
    """A function that returns a new copy of ``record`` as it is now, at every call. ``None``
    if it cannot be copied this way: it has private attributes or extra fields, or a value
    that neither orjson nor pickle reads back equal to itself."""
    if record.__pydantic_private__ or record.model_extra:
        return None
    serialized: dict[str, tuple[Callable[[bytes], object], bytes]] = {}
    for name, value in record.__dict__.items():
        if type(value) in SHARED_TYPES:
            continue
        kept = _kept(value)
        if kept is None:
            return None
        serialized[name] = kept
    original = record.model_copy()  # later changes to ``record`` do not reach the copies
    original.__dict__.update(dict.fromkeys(serialized))  # nor does it keep the caller's values
    fields = tuple(serialized.items())

    def copy() -> R:
        fresh = original.model_copy()
        fresh.__dict__.update({name: loads(data) for name, (loads, data) in fields})
        return fresh

    return copy


def _kept(value: object) -> tuple[Callable[[bytes], object], bytes] | None:
    """``value`` serialized, and the function that reads it back equal (orjson for plain
    JSON, else pickle); ``None`` if neither reads it back equal."""
    try:
        plain = plain_json(value)
    except RecursionError:
        plain = False
    for loads, dumps in _SERIALIZERS if plain else _SERIALIZERS[1:]:  # orjson first, if JSON
        try:
            data = dumps(value)
            if loads(data) == value:
                return loads, data
        except Exception:  # noqa: BLE001, S112 - whatever this serializer raises: try the next
            continue
    return None


def _json(value: object) -> bytes:
    # copied to a bytes object of its own size: orjson's keeps the capacity it grew to (4 KB
    # for the benchmarks' 1.2 KB of ``data``), for as long as the copier lives
    return memoryview(orjson.dumps(value)).tobytes()


def _pickle(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


_SERIALIZERS: Final[tuple[tuple[Callable[[bytes], object], Callable[[object], bytes]], ...]] = (
    (orjson.loads, _json),
    (pickle.loads, _pickle),  # reads back only what this process pickled a moment before
)
