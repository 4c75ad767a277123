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


def turn_of(context: ContextRecord) -> int:
    """The number of the last turn this context holds (0: none, or written without turns)."""
    turn = context.context.get("turn", 0)
    return turn if isinstance(turn, int) else 0


def with_turn(
    context: ContextRecord, number: int, user: str, coach: str, *, window: int = DEFAULT_WINDOW
) -> ContextRecord:
    """:func:`with_exchange`, marked as holding turn ``number``."""
    updated = with_exchange(context, user, coach, window=window)
    return updated.model_copy(update={"context": {**updated.context, "turn": number}})
