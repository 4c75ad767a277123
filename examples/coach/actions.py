"""The action executor: what a message changes besides state and context."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kvstore import IdentityRecord, UserRecord

if TYPE_CHECKING:
    from kvstore import Database

from examples.coach.state_machine import State


def identity_id(name: str) -> str:
    """A stable id for an identity name: ``"A Calm Leader!"`` -> ``"a-calm-leader"``."""
    slug = re.sub(r"[^\w]+", "-", name.strip().lower()).strip("-")
    return slug[:64] or "identity"


async def execute(db: Database, user_id: str, state: State, message: str) -> str | None:
    """Run the action of ``state`` for ``message``; return a note for the reply, if any."""
    match state:
        case State.INTRODUCTION:
            user = await db.get_user(user_id) or UserRecord(user_id=user_id)
            name = message.removeprefix("Call me").strip(" .") or message
            await db.save_user(user.model_copy(update={"display_name": name[:256]}))
            return f"Nice to meet you, {name}."
        case State.IDENTITY_BRAINSTORMING if message.strip().lower() not in ("", "done"):
            await db.save_identity(
                IdentityRecord(
                    user_id=user_id,
                    identity_id=identity_id(message),
                    category="self",
                    name=message.strip()[:512],
                )
            )
            return f"Noted: {message.strip()}."
        case State.IDENTITY_REFINEMENT:
            identities = await db.get_identities(user_id)
            if identities:
                first = identities[0]
                await db.save_identity(
                    first.model_copy(update={"state": "refined", "description": message}),
                    expected_version=first.version,
                )
                return f"Refined {first.name}."
            return None
        case _:
            return None
