"""The conversation state machine's state, per user and session."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from kvstore.models.base import Id, JsonObject, Record


class StateRecord(Record):
    """Where a session's state machine stands (``state``) plus its working ``data``."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "session_id")

    user_id: Id
    session_id: Id
    state: str = Field(min_length=1, max_length=128)
    data: JsonObject = Field(default_factory=dict)
