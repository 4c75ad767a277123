"""The Serializer protocol: records in, bytes out, and back to plain data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Set


M = TypeVar("M", bound=BaseModel)


@runtime_checkable
class Serializer(Protocol):
    """Turns a record into bytes and bytes back into the record's plain data.

    ``format`` is a short tag stored with (or implied by) every value so that the format can
    change while old data still reads. ``dumps`` raises
    :class:`kvstore.SerializationError` for anything it cannot carry faithfully, before
    anything is written. Reading has a fast path and a general one: ``load_model`` validates
    bytes of the model's current schema straight into the model, ``loads`` returns plain data
    for the record layer to upgrade from an older schema and then validate.
    """

    format: str

    def dumps(self, record: BaseModel, *, exclude: Set[str] = frozenset()) -> bytes:
        """Encode ``record`` without the fields in ``exclude``."""
        ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Decode bytes written by :meth:`dumps` into plain data."""
        ...

    def schema_version(self, data: bytes) -> int | None:
        """The ``schema_version`` that :meth:`dumps` stored in ``data`` (cheaply, without a
        full parse), or ``None`` if it cannot tell."""
        ...

    def load_model(
        self, data: bytes, model: type[M], *, context: dict[str, Any] | None = None
    ) -> M:
        """Validate ``data`` into ``model`` (``context``: pydantic's validation context, for
        the model's validators to check ``schema_version``); raises pydantic's
        ``ValidationError`` if the data does not fit the model."""
        ...
