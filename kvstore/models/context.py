"""The conversation context, per user and session (e.g. the recent messages)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kvstore.models.base import Id, JsonObject, Record


class ContextRecord(Record):
    """A session's conversation context: any JSON object, such as ``{"messages": [...]}``."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "session_id")

    user_id: Id
    session_id: Id
    context: JsonObject = Field(default_factory=dict)
