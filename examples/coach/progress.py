"""A session's progress, kept in its state record: the commit point of every turn.

``StateRecord.data`` holds ``turns`` (the last committed turn's number), ``last`` (that
turn, whole, so it can be written to the transcript and the context after a worker died
between the commit and those writes) and ``recent`` (the client message ids of the last
:data:`RECENT` turns with their numbers: a message sent again is recognized by its id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from examples.coach.transcript import Turn

if TYPE_CHECKING:
    from kvstore import JsonObject, StateRecord

METADATA: Final = frozenset({"version", "created_at", "updated_at", "revision"})
"""Fields the store sets; not part of a turn as the state record keeps it."""
RECENT: Final = 64
"""Turns whose client message ids a session remembers: a message id sent again after more
than this many later turns is taken as a new message."""


@dataclass(frozen=True, slots=True)
class Progress:
    """What a session's state record says about its turns."""

    turns: int = 0
    last: Turn | None = None
    recent: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stored: StateRecord | None) -> Progress:
        """Read from a state record (``None``, or one without turns: nothing yet)."""
        if stored is None:
            return cls()
        data = stored.data
        turns = data.get("turns", 0)
        last = data.get("last")
        recent = data.get("recent", [])
        return cls(
            turns if isinstance(turns, int) else 0,
            Turn.model_validate(last) if isinstance(last, dict) else None,
            {
                str(pair[0]): int(str(pair[1]))
                for pair in (recent if isinstance(recent, list) else [])
                if isinstance(pair, list) and len(pair) == 2
            },
        )

    def after(self, turn: Turn) -> JsonObject:
        """The state data once ``turn`` is committed."""
        recent = [*self.recent.items(), (turn.message_id, turn.number)][-RECENT:]
        return {
            "turns": turn.number,
            "last": turn.model_dump(mode="json", exclude=set(METADATA)),
            "recent": [[message_id, number] for message_id, number in recent],
        }
