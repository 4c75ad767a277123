"""The conversation state machine: states, and the next state after a user message."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a coaching conversation stands."""

    INTRODUCTION = "INTRODUCTION"
    GOAL_SETTING = "GOAL_SETTING"
    IDENTITY_BRAINSTORMING = "IDENTITY_BRAINSTORMING"
    IDENTITY_REFINEMENT = "IDENTITY_REFINEMENT"
    WRAP_UP = "WRAP_UP"


PROMPTS: dict[State, str] = {
    State.INTRODUCTION: "Hi, I'm your coach. What should I call you?",
    State.GOAL_SETTING: "What would you like to work on?",
    State.IDENTITY_BRAINSTORMING: "Who are you at your best? Name one identity, or say 'done'.",
    State.IDENTITY_REFINEMENT: "Describe what your first identity does on a hard day.",
    State.WRAP_UP: "What will you try this week?",
}

BRAINSTORM_LIMIT = 3
"""After this many identities the coach moves on to refinement by itself."""


def next_state(state: State, message: str, identities: int) -> State:
    """The state after the user's ``message``; ``identities`` counts those proposed so far."""
    match state:
        case State.INTRODUCTION:
            return State.GOAL_SETTING
        case State.GOAL_SETTING:
            return State.IDENTITY_BRAINSTORMING
        case State.IDENTITY_BRAINSTORMING:
            done = message.strip().lower() == "done" and identities > 0
            if done or identities >= BRAINSTORM_LIMIT:
                return State.IDENTITY_REFINEMENT
            return State.IDENTITY_BRAINSTORMING
        case State.IDENTITY_REFINEMENT:
            return State.WRAP_UP
        case State.WRAP_UP:
            return State.WRAP_UP
