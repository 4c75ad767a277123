"""The transcript: one record per turn of a session, keyed by its sequence number.

A turn is numbered 1, 2, 3... within its session; the key ``(user_id, session_id, seq)``
holds the number zero-padded (:func:`seq_id`), so a listing is in turn order and batch jobs
read a session's transcript from SQL in order::

    SELECT value FROM kv_records WHERE namespace = 'coach_transcript' AND owner = :user
      AND value->>'session_id' = :session ORDER BY (value->>'seq')::bigint
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final

from pydantic import Field

from examples.coach.state_machine import State  # noqa: TC001 - pydantic needs it at run time
from kvstore import Id, Record

NAMESPACE: Final = "coach_transcript"
SEQ_DIGITS: Final = 12
MAX_TEXT: Final = 4000
"""The longest message a user may send, in characters."""


def seq_id(number: int) -> str:
    """The key component of turn ``number``: zero-padded, so key order is turn order."""
    return f"{number:0{SEQ_DIGITS}d}"


class Turn(Record):
    """One acknowledged turn: the user's message, the coach's reply, and the step taken
    (``from_state`` to ``to_state``, with the identities count the state machine saw)."""

    KEY_FIELDS: ClassVar[tuple[str, ...]] = ("user_id", "session_id", "seq")

    user_id: Id
    session_id: Id
    seq: Annotated[str, Field(pattern=rf"^\d{{{SEQ_DIGITS}}}$")]
    message_id: Id
    message: Annotated[str, Field(max_length=MAX_TEXT)]
    reply: str
    from_state: State
    to_state: State
    identities: int = 0

    @property
    def number(self) -> int:
        """The turn's number in its session, from 1."""
        return int(self.seq)
