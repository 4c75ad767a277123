"""The checks after a run, from SQL and from what the client was answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg
import orjson

from examples.coach.actions import identity_id
from examples.coach.state_machine import State, next_state
from examples.coach.transcript import NAMESPACE

if TYPE_CHECKING:
    from benchmarks.service.client import Conversation


@dataclass
class Findings:
    """What the checks counted; every field but ``unanswered`` must be 0."""

    lost: int = 0
    """Answered messages missing from their transcript."""
    duplicated: int = 0
    """Extra copies of a message in a transcript."""
    out_of_order: int = 0
    """Answered messages whose place in the transcript is not the order they were sent in
    (or turn numbers not 1, 2, 3...)."""
    steps_wrong: int = 0
    """Turns whose step does not follow from the one before (skipped or repeated), and
    sessions whose state record disagrees with their transcript."""
    unsent: int = 0
    """Transcript entries the client never sent (or sent but gave up on, not last)."""
    answers_differ: int = 0
    """Messages answered differently (turn or reply) to two sends, or taken twice (two
    answers not ``replayed``)."""
    unanswered: int = 0
    """Messages still unanswered when the client gave up (allowed: never acknowledged)."""

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.out_of_order
            or self.steps_wrong
            or self.unsent
            or self.answers_differ
        )


async def check(url: str, conversations: list[Conversation]) -> Findings:
    """Read every transcript and state record from SQL and compare."""
    connection = await asyncpg.connect(url, timeout=30)
    try:
        turns = await connection.fetch(
            "SELECT owner, value::text AS value FROM kv_records WHERE namespace = $1", NAMESPACE
        )
        states = await connection.fetch(
            "SELECT owner, key, value::text AS value, version FROM kv_records "
            "WHERE namespace = 'state'"
        )
    finally:
        await connection.close()
    transcripts: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in turns:
        value = orjson.loads(row["value"])
        transcripts.setdefault((row["owner"], value["session_id"]), []).append(value)
    state_of = {(r["owner"], r["key"]): (orjson.loads(r["value"]), r["version"]) for r in states}
    found = Findings()
    for talk in conversations:
        key = (talk.user_id, talk.session_id)
        entries = sorted(transcripts.get(key, []), key=lambda t: int(str(t["seq"])))
        _check_one(found, talk, entries, state_of.get(key))
    return found


def _check_one(
    found: Findings,
    talk: Conversation,
    entries: list[dict[str, object]],
    state: tuple[dict[str, object], int] | None,
) -> None:
    ids = [str(t["message_id"]) for t in entries]
    acked = set(talk.acked)
    found.unanswered += talk.unanswered is not None
    found.lost += len(acked - set(ids))
    found.duplicated += len(ids) - len(set(ids))
    in_transcript = [i for i in ids if i in acked]
    found.out_of_order += sum(a != b for a, b in zip(talk.acked, in_transcript, strict=False))
    found.out_of_order += [int(str(t["seq"])) for t in entries] != list(range(1, len(ids) + 1))
    found.unsent += sum(i not in acked and i != talk.unanswered for i in ids)
    found.steps_wrong += _replay(entries)
    if entries or state is not None:
        found.steps_wrong += _state_agrees(talk, entries, state)
    for answers in talk.answers.values():
        taken = sum(not replayed for _, _, replayed, _ in answers)
        found.answers_differ += len({(s, r) for s, r, _, _ in answers}) > 1 or taken > 1


def _replay(entries: list[dict[str, object]]) -> int:
    """Run the state machine over the transcript's messages: turns that disagree."""
    state, identities, wrong = State.INTRODUCTION, set[str](), 0
    for entry in entries:
        message = str(entry["message"])
        brainstorming = state is State.IDENTITY_BRAINSTORMING
        if brainstorming and message.strip().lower() not in ("", "done"):
            identities.add(identity_id(message))
        count = len(identities) if brainstorming else 0
        following = next_state(state, message, count)
        wrong += (entry["from_state"], entry["to_state"], entry["identities"]) != (
            state.value,
            following.value,
            count,
        )
        state = following
    return wrong


def _state_agrees(
    talk: Conversation,
    entries: list[dict[str, object]],
    state: tuple[dict[str, object], int] | None,
) -> int:
    """The state record holds the last turn (or one more, never answered, whose transcript
    write was cut), and was saved once per turn."""
    if state is None:
        return 1
    value, version = state
    data = value["data"]
    assert isinstance(data, dict)
    turns, last = data.get("turns"), data.get("last") or {}
    assert isinstance(last, dict)
    if turns == len(entries):
        expected = entries[-1]["to_state"] if entries else State.INTRODUCTION.value
    elif turns == len(entries) + 1 and last.get("message_id") == talk.unanswered:
        expected = last.get("to_state")
    else:
        return 1
    return int(value["state"] != expected or version != turns)
