"""The user's own record."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kvstore.models.base import Id, JsonObject, Record


class UserRecord(Record):
    """A user: display name, email (kept out of ``repr``), preferences and free ``data``."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id",)

    user_id: Id
    display_name: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=320, repr=False)
    preferences: JsonObject = Field(default_factory=dict)
    data: JsonObject = Field(default_factory=dict)
