"""The context manager: the recent messages of a session, bounded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import JsonValue

    from kvstore import ContextRecord

DEFAULT_WINDOW = 10


def messages(context: ContextRecord) -> list[JsonValue]:
    """The stored messages, oldest first."""
    stored = context.context.get("messages", [])
    return list(stored) if isinstance(stored, list) else []


def with_exchange(
    context: ContextRecord, user: str, coach: str, *, window: int = DEFAULT_WINDOW
) -> ContextRecord:
    """A copy of ``context`` with one exchange appended, keeping the last ``window``."""
    recent = [*messages(context), {"role": "user", "text": user}, {"role": "coach", "text": coach}]
    return context.model_copy(update={"context": {**context.context, "messages": recent[-window:]}})
