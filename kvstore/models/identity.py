"""Identities a user works on with the coach, per user."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kvstore.models.base import Id, JsonObject, Record


class IdentityRecord(Record):
    """One identity of a user, addressed by ``(user_id, identity_id)``."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "identity_id")

    user_id: Id
    identity_id: Id
    category: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=512)
    description: str = Field(default="", max_length=10_000)
    state: str = Field(default="proposed", min_length=1, max_length=128)
    data: JsonObject = Field(default_factory=dict)
