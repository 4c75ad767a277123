"""The JSON serializer: pydantic-core writes, orjson reads, nothing lossy gets through.

Writing goes through the model's own compiled serializer (``__pydantic_serializer__``), the
fastest exact JSON encoder for a pydantic model. Reading uses ``orjson.loads``, which is
faster than pydantic's JSON validation. What JSON cannot carry faithfully is refused with
:class:`~kvstore.errors.SerializationError`:

* NaN and infinities (pydantic would write ``null``; our models write the ``NaN`` literal,
  which the check below then catches),
* integers outside ``[-2**63, 2**64)`` (``orjson.loads`` would turn them into floats),
* lone surrogates (not encodable as UTF-8).

The check costs one regex scan of the output; only a suspicious output is parsed again.
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

_SUSPECT = re.compile(rb"NaN|Infinity|\d{19}")
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
        if _SUSPECT.search(data):
            _check_faithful(data, type(record).__name__)
        return data

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode a JSON object."""
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise SerializationError("stored value is not a JSON object")
        return value


def _check_faithful(data: bytes, what: str) -> None:
    """Parse ``data`` strictly; raise if it holds NaN, infinities or out-of-range integers."""

    def refuse_constant(name: str) -> Any:
        raise SerializationError(f"cannot encode {what}: {name} is not valid JSON")

    def check_int(text: str) -> int:
        number = int(text)
        if not _INT_MIN <= number <= _INT_MAX:
            raise SerializationError(
                f"cannot encode {what}: integer {text[:24]}... is outside [-2**63, 2**64)"
            )
        return number

    json.loads(data, parse_constant=refuse_constant, parse_int=check_int)
