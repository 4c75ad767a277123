"""The JSON serializer: pydantic-core writes, orjson reads, nothing lossy gets through.

Writing goes through the model's own compiled serializer (``__pydantic_serializer__``), the
fastest exact JSON encoder for a pydantic model. Reading a record of the current schema
validates the bytes straight into the model with pydantic-core's JSON parser (2x faster here
than ``orjson.loads`` + ``model_validate`` for ``JsonValue`` fields); older schemas go through
``orjson.loads`` and the upgrade functions. What JSON cannot carry faithfully is refused with
:class:`~kvstore.errors.SerializationError`:

* NaN and infinities (pydantic would write ``null``; our models write the ``NaN`` literal,
  which the check below then catches),
* integers outside ``[-2**63, 2**64)`` (``orjson.loads`` would turn them into floats),
* lone surrogates (not encodable as UTF-8),
* NUL characters in strings (PostgreSQL's jsonb cannot store them, so no backend does).

The check costs three substring searches of the output (~3 µs for a 1.3 KB record); only a
suspicious output is parsed again.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

import orjson
from pydantic_core import PydanticSerializationError

from kvstore.errors import SerializationError

if TYPE_CHECKING:
    from collections.abc import Set

    from pydantic import BaseModel

    from serializers.base import M


# Digits become b"0" and everything else b"x", so a run of 19+ digits (a number that may be
# outside 64 bits) is a plain substring search: ~1 µs where a regex scan costs ~20 µs.
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))
_LONG_NUMBER: Final = b"0" * 19
_NUMBER: Final = re.compile(rb"\s*(\d{1,9})")
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


class JSONSerializer:
    """Records as UTF-8 JSON objects (format tag ``"json"``)."""

    format: str = "json"

    def dumps(self, record: BaseModel, *, exclude: Set[str] = frozenset()) -> bytes:
        """Encode ``record`` as compact JSON, refusing values JSON cannot carry."""
        try:
            data = type(record).__pydantic_serializer__.to_json(record, exclude=set(exclude))
        except PydanticSerializationError as exc:
            raise SerializationError(f"cannot encode {type(record).__name__}: {exc}") from exc
        if _suspicious(data):  # the message is built only when it may be needed
            _check_faithful(data, f"cannot encode {type(record).__name__}")
        return data

    def check(self, data: bytes, what: str) -> None:
        """Raise :class:`SerializationError` (its message starting with ``what``) if the
        JSON bytes ``data`` hold what the stored format cannot carry faithfully: NaN,
        infinities, integers outside ``[-2**63, 2**64)`` (a parser would make floats of
        them), NUL characters: the check :meth:`dumps` runs on what it wrote, for JSON
        from elsewhere (an import file) before it is parsed."""
        if _suspicious(data):
            _check_faithful(data, what)

    def schema_version(self, data: bytes) -> int | None:
        """Read the top-level ``"schema_version": N`` without parsing the document.

        The record's computed field is written last, and PostgreSQL's JSONB also puts it
        after the shorter top-level keys, so the last occurrence is the top-level one in
        practice. It is a hint for choosing the fast path: the record's validator checks the
        real top-level version, and where a nested key fools the search, validation fails and
        the caller falls back to the full parse.
        """
        start = data.rfind(b'"schema_version":')
        if start < 0:
            return None
        match = _NUMBER.match(data, start + len(b'"schema_version":'))
        return int(match.group(1)) if match else None

    def load_model(
        self, data: bytes, model: type[M], *, context: dict[str, Any] | None = None
    ) -> M:
        """Validate JSON bytes straight into ``model`` (pydantic-core's JSON parser: faster
        than ``orjson.loads`` + ``model_validate`` for models with ``JsonValue`` fields)."""
        return model.model_validate_json(data, extra="ignore", context=context)

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode a JSON object."""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise SerializationError("stored value is not a JSON object")
        return value


def _suspicious(data: bytes) -> bool:
    """Whether JSON bytes may hold NaN, infinities, an integer outside 64 bits or a NUL
    character (~3 µs for a 1.3 KB record; only then is it parsed strictly)."""
    return (
        b"NaN" in data
        or b"Infinity" in data
        or b"\\u0000" in data
        or _LONG_NUMBER in data.translate(_DIGITS_ONLY)
    )


def _check_faithful(data: bytes, what: str) -> None:
    """Parse ``data`` strictly; raise if it holds NaN, infinities, out-of-range integers or
    NUL characters (which PostgreSQL's jsonb cannot store, so no backend takes them)."""

    def refuse_constant(name: str) -> Any:
        raise SerializationError(f"{what}: {name} is not valid JSON")

    def check_int(text: str) -> int:
        number = int(text)
        if not _INT_MIN <= number <= _INT_MAX:
            raise SerializationError(f"{what}: integer {text[:24]}... is outside [-2**63, 2**64)")
        return number

    try:
        parsed = json.loads(data, parse_constant=refuse_constant, parse_int=check_int)
    except ValueError as exc:  # not JSON at all: the caller's parser says where
        raise SerializationError(f"{what}: not valid JSON ({exc})") from None
    if _holds_nul(parsed):
        raise SerializationError(f"{what}: strings must not contain NUL")


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False
