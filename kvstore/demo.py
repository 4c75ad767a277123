"""``kvstore demo``: a short coaching conversation that persists and resumes.

Each run plays a few turns of a scripted conversation through the ``Database`` API, printing
what it stores and reads back, then stops. On a persistent store the next run resumes
where the last one stopped: that is session continuity across process restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.markup import escape

from kvstore.models import ContextRecord, IdentityRecord, StateRecord, UserRecord

if TYPE_CHECKING:
    from rich.console import Console

    from kvstore.interface import Database

USER_ID = "demo-user"
SESSION_ID = "demo-session"
TURNS_PER_RUN = 3
CONTEXT_WINDOW = 6


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: the state it happens in, what the coach and user say, what it adds."""

    state: str
    coach: str
    user: str
    identity: tuple[str, str] | None = None  # (identity_id, name) proposed in this turn
    refine: str | None = None  # identity_id refined in this turn


SCRIPT = (
    Turn("INTRODUCTION", "Hi, I'm your coach. What should I call you?", "Call me Sam."),
    Turn("GOAL_SETTING", "What would you like to work on, Sam?", "Feeling confident at work."),
    Turn(
        "IDENTITY_BRAINSTORMING",
        "Who are you at your best?",
        "A calm leader.",
        identity=("calm-leader", "Calm Leader"),
    ),
    Turn(
        "IDENTITY_BRAINSTORMING",
        "And outside work?",
        "A curious learner.",
        identity=("curious-learner", "Curious Learner"),
    ),
    Turn(
        "IDENTITY_REFINEMENT",
        "What does the Calm Leader do on a hard day?",
        "Breathes, listens, then decides.",
        refine="calm-leader",
    ),
    Turn("WRAP_UP", "What will you try this week?", "Pause before I answer in meetings."),
)
DONE = "COMPLETE"


async def play(db: Database, console: Console, *, turns: int = TURNS_PER_RUN) -> int:
    """Play up to ``turns`` turns from where the stored session stands; return the next
    turn's index (``len(SCRIPT)`` when the conversation is complete)."""
    state = await db.get_state(USER_ID, SESSION_ID)
    if state is None:
        console.print("[bold]New conversation[/] (nothing stored for this session yet)")
        await db.save_user(UserRecord(user_id=USER_ID, display_name="Sam"))
        position = 0
    else:
        position = int(str(state.data.get("turn", 0)))
        console.print(
            f"[bold]Resuming[/] at turn {position + 1}, state [cyan]{state.state}[/] "
            f"(stored version {state.version}, updated {state.updated_at:%H:%M:%S} UTC)"
        )
    context = await db.get_context(USER_ID, SESSION_ID) or ContextRecord(
        user_id=USER_ID, session_id=SESSION_ID, context={"messages": []}
    )
    stop = min(position + turns, len(SCRIPT))
    for index in range(position, stop):
        turn = SCRIPT[index]
        indent = " " * len(turn.state)
        console.print(f"\n[cyan]{turn.state}[/]  coach: {turn.coach}\n{indent}  user:  {turn.user}")
        await _apply_side_effects(db, turn, console)
        messages = [
            *_messages(context),
            {"role": "coach", "text": turn.coach},
            {"role": "user", "text": turn.user},
        ]
        context = await db.save_context(
            context.model_copy(update={"context": {"messages": messages[-CONTEXT_WINDOW:]}})
        )
        following = SCRIPT[index + 1].state if index + 1 < len(SCRIPT) else DONE
        saved = await db.save_state(
            StateRecord(
                user_id=USER_ID, session_id=SESSION_ID, state=following, data={"turn": index + 1}
            )
        )
        console.print(
            f"  stored state [cyan]{saved.state}[/] v{saved.version}, context v{context.version}"
        )
    await _show_read_back(db, console)
    if stop == len(SCRIPT):
        console.print("\n[green]Conversation complete.[/] `kvstore demo --reset` starts over.")
    else:
        console.print("\n[yellow]Stopping here.[/] Run `kvstore demo` again to resume.")
    return stop


async def reset(db: Database) -> int:
    """Erase the demo user's records; return how many were erased."""
    return await db.delete_user(USER_ID)


async def _apply_side_effects(db: Database, turn: Turn, console: Console) -> None:
    if turn.identity is not None:
        identity_id, name = turn.identity
        saved = await db.save_identity(
            IdentityRecord(user_id=USER_ID, identity_id=identity_id, category="self", name=name)
        )
        console.print(f"  stored identity [magenta]{saved.name}[/] v{saved.version}")
    if turn.refine is not None:
        identity = await db.get_identity(USER_ID, turn.refine)
        if identity is not None:
            refined = await db.save_identity(
                identity.model_copy(update={"state": "refined", "description": turn.user}),
                expected_version=identity.version,
            )
            console.print(f"  refined identity [magenta]{refined.name}[/] v{refined.version}")


def _messages(context: ContextRecord) -> list[object]:
    messages = context.context.get("messages", [])
    return list(messages) if isinstance(messages, list) else []


async def _show_read_back(db: Database, console: Console) -> None:
    state = await db.get_state(USER_ID, SESSION_ID)
    identities = await db.get_identities(USER_ID)
    context = await db.get_context(USER_ID, SESSION_ID)
    console.print("\n[bold]Read back from the store[/]")
    if state is not None:
        console.print(f"  state: {state.state} (v{state.version})")
    listed = ", ".join(f"{i.name} ({i.state})" for i in identities)
    console.print(f"  identities: {escape(listed) or '-'}")
    if context is not None:
        console.print(f"  context: {len(_messages(context))} recent messages (v{context.version})")
