"""The Serializer protocol: records in, bytes out, and back to plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Set

    from pydantic import BaseModel


@runtime_checkable
class Serializer(Protocol):
    """Turns a record into bytes and bytes back into the record's plain data.

    ``format`` is a short tag stored with (or implied by) every value so that the format can
    change while old data still reads. ``dumps`` raises
    :class:`kvstore.SerializationError` for anything it cannot carry faithfully, before
    anything is written; ``loads`` returns a dict for the record layer to upgrade and
    validate.
    """

    format: str

    def dumps(self, record: BaseModel, *, exclude: Set[str] = frozenset()) -> bytes:
        """Encode ``record`` without the fields in ``exclude``."""
        ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode bytes written by :meth:`dumps` into plain data."""
        ...
