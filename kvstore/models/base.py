"""The base of every stored record: store-managed metadata and schema versions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    computed_field,
    model_validator,
)

from kvstore.errors import SerializationError
from kvstore.keys import MAX_COMPONENT_LENGTH, check_component

if TYPE_CHECKING:
    from datetime import datetime


STORED: Final[dict[str, Any]] = {"kvstore_stored": True}
"""The validation context for stored data: there a missing ``schema_version`` means 1."""


def _valid_id(value: str) -> str:
    return check_component(value)


Id = Annotated[
    str,
    Field(min_length=1, max_length=MAX_COMPONENT_LENGTH),
    AfterValidator(_valid_id),
]
"""A record id: 1-255 characters, no control characters or lone surrogates."""

JsonObject = dict[str, JsonValue]
"""A JSON object: what ``data``, ``context`` and ``preferences`` hold."""

Upgrade = Callable[[dict[str, Any]], dict[str, Any]]

METADATA_FIELDS = frozenset({"version", "created_at", "updated_at", "revision"})
"""Fields the store sets; they live beside the serialized value, not inside it."""


class Record(BaseModel):
    """A stored record. Subclasses add fields and say which of them form the key.

    ``version``, ``created_at``, ``updated_at`` and ``revision`` are set by the store on every
    save: the version is 1 on the first save and grows by one on every save; the revision
    orders the save among all changes of the store (see the README, "Revisions").
    ``SCHEMA_VERSION`` is the shape of the class's data; values stored under an older schema
    version are upgraded on read by the functions registered with :meth:`upgrade`.
    """

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        ser_json_inf_nan="constants",
        validate_assignment=True,
    )

    SCHEMA_VERSION: ClassVar[int] = 1
    KEY_FIELDS: ClassVar[tuple[str, ...]] = ()
    _upgrades: ClassVar[dict[int, Upgrade]]

    version: int = Field(default=0, ge=0, description="Set by the store; 0 = never saved.")
    created_at: AwareDatetime | None = Field(default=None, description="Set by the store.")
    updated_at: AwareDatetime | None = Field(default=None, description="Set by the store.")
    revision: int = Field(
        default=0,
        ge=0,
        description="Set by the store: where this save stands in the store's order of "
        "changes (SQL: of all records; a batch job's watermark). 0 = never saved.",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._upgrades = {}

    @model_validator(mode="before")
    @classmethod
    def _own_schema_version(cls, data: Any, info: ValidationInfo) -> Any:
        """A record's own dump carries ``schema_version`` (a computed field): take it back
        when it is this class's, so ``model_validate(record.model_dump())`` and the JSON
        round trip work. Another version is refused: data of an older shape is read with
        :meth:`from_stored`, which upgrades it. In the :data:`STORED` context, data
        without a top-level ``schema_version`` is version 1, as :meth:`from_stored` reads
        it: refused here unless that is this class's version."""
        if not isinstance(data, dict):
            return data
        if "schema_version" in data:
            data = dict(data)
            version = data.pop("schema_version")
        elif info.context is STORED:
            version = 1
        else:
            return data
        if version != cls.SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {version!r} is not {cls.__name__}'s "
                f"({cls.SCHEMA_VERSION}); read data of an older shape with from_stored()"
            )
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def schema_version(self) -> int:
        """The shape of this record's data; stored with it to drive upgrades on read."""
        return self.SCHEMA_VERSION

    def key_components(self) -> tuple[str, ...]:
        """The record's key components, owner first, from ``KEY_FIELDS``."""
        return tuple(getattr(self, name) for name in self.KEY_FIELDS)

    @classmethod
    def upgrade(cls, from_version: int) -> Callable[[Upgrade], Upgrade]:
        """Register a function that turns data of ``from_version`` into ``from_version + 1``.

        >>> @StateRecord.upgrade(from_version=1)  # doctest: +SKIP
        ... def add_locale(data): return {**data, "locale": "en"}
        """

        def register(function: Upgrade) -> Upgrade:
            cls._upgrades[from_version] = function
            return function

        return register

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Self:
        """Validate stored plain data (as :meth:`model_dump` wrote it, ``schema_version``
        included) into this model, upgrading older schema versions first. Consumes ``data``.
        Raises :class:`SerializationError` for a newer or unreadable schema version and for
        data that does not validate."""
        schema_version = data.pop("schema_version", 1)
        if not isinstance(schema_version, int) or schema_version > cls.SCHEMA_VERSION:
            raise SerializationError(
                f"stored {cls.__name__} has schema version {schema_version!r}; this code "
                f"reads up to {cls.SCHEMA_VERSION}"
            )
        for name in METADATA_FIELDS:
            data.pop(name, None)
        try:
            if schema_version < cls.SCHEMA_VERSION:
                data = cls.upgrade_data(data, schema_version)
            return cls.model_validate(data)
        except (ValidationError, LookupError) as exc:
            raise SerializationError(f"stored {cls.__name__} does not validate: {exc}") from exc

    @classmethod
    def upgrade_data(cls, data: dict[str, Any], schema_version: int) -> dict[str, Any]:
        """Run the registered upgrades from ``schema_version`` up to ``SCHEMA_VERSION``."""
        for version in range(schema_version, cls.SCHEMA_VERSION):
            try:
                step = cls._upgrades[version]
            except KeyError:
                raise LookupError(
                    f"{cls.__name__}: no upgrade registered from schema version {version}"
                ) from None
            data = step(data)
        return data


def stamp(
    record: Record, version: int, created_at: datetime, updated_at: datetime, revision: int
) -> None:
    """Set the store-managed fields in place, without validation (the store's values)."""
    record.__dict__.update(
        version=version, created_at=created_at, updated_at=updated_at, revision=revision
    )
