"""One step of the conversation: act on a message, pick the next state, word the reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from examples.coach import actions
from examples.coach.state_machine import PROMPTS, State, next_state

if TYPE_CHECKING:
    from kvstore import Database


@dataclass(frozen=True, slots=True)
class Step:
    """What a message did: the next state, the reply, and the identities count it used."""

    following: State
    text: str
    identities: int


async def step(db: Database, user_id: str, state: State, message: str) -> Step:
    """Run the action of ``state`` for ``message`` (idempotent upserts: a step tried again
    with the same message changes nothing more), then pick the next state."""
    note = await actions.execute(db, user_id, state, message)
    identities = (
        len(await db.get_identities(user_id)) if state is State.IDENTITY_BRAINSTORMING else 0
    )
    following = next_state(state, message, identities)
    text = " ".join(part for part in (note, PROMPTS[following]) if part)
    return Step(following, text, identities)
