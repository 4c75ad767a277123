"""The example coach service, end to end on every backend."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from examples.coach import CoachService
from examples.coach.context import messages
from examples.coach.state_machine import State
from kvstore import ConflictError, Database, DatabaseType, create_database
from kvstore.clock import ManualClock
from tests import postgres
from tests.redis_servers import RedisServer

CONVERSATION = [
    ("Call me Sam.", State.GOAL_SETTING),
    ("Feel confident at work.", State.IDENTITY_BRAINSTORMING),
    ("A calm leader", State.IDENTITY_BRAINSTORMING),
    ("A curious learner", State.IDENTITY_BRAINSTORMING),
    ("done", State.IDENTITY_REFINEMENT),
    ("Breathes, listens, then decides.", State.WRAP_UP),
    ("Pause before answering.", State.WRAP_UP),
]


async def test_a_conversation_flows_through_the_store(db: Database) -> None:
    service = CoachService(db, context_window=6)
    for turn, (message, expected) in enumerate(CONVERSATION, start=1):
        reply = await service.handle("user:1", "session/1", message)
        assert (reply.state, reply.state_version) == (expected, turn)
    state = await db.get_state("user:1", "session/1")
    assert state is not None
    assert (state.state, state.data["turns"]) == ("WRAP_UP", len(CONVERSATION))
    context = await db.get_context("user:1", "session/1")
    assert context is not None
    recent = messages(context)
    assert len(recent) == 6
    assert recent[-2] == {"role": "user", "text": "Pause before answering."}
    identities = await db.get_identities("user:1")
    assert [(i.identity_id, i.state) for i in identities] == [
        ("a-calm-leader", "refined"),
        ("a-curious-learner", "proposed"),
    ]
    user = await db.get_user("user:1")
    assert user is not None
    assert user.display_name == "Sam"


async def test_sessions_of_one_user_are_independent(db: Database) -> None:
    service = CoachService(db)
    await service.handle("u1", "morning", "Call me Sam.")
    await service.handle("u1", "evening", "Call me Sam.")
    await service.handle("u1", "evening", "Sleep better.")
    sessions = {s.session_id: s.state for s in await db.list_sessions("u1")}
    assert sessions == {"morning": "GOAL_SETTING", "evening": "IDENTITY_BRAINSTORMING"}


async def test_concurrent_messages_on_one_session_never_lose_a_turn(db: Database) -> None:
    service = CoachService(db)
    await service.handle("u1", "s1", "Call me Sam.")
    results = await asyncio.gather(
        *(service.handle("u1", "s1", f"goal {n}") for n in range(4)), return_exceptions=True
    )
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    state = await db.get_state("u1", "s1")
    assert state is not None
    assert state.version == 1 + len(succeeded)
    assert state.data["turns"] == 1 + len(succeeded)


@pytest.mark.parametrize("message", ["", " ", "x" * 5000, "NaN", "'; DROP TABLE kv; --"])
async def test_odd_messages_are_handled(db: Database, message: str) -> None:
    service = CoachService(db)
    await service.handle("u1", "s1", "Call me Sam.")
    await service.handle("u1", "s1", "goal")
    reply = await service.handle("u1", "s1", message)
    assert reply.state in (State.IDENTITY_BRAINSTORMING, State.IDENTITY_REFINEMENT)


@pytest.mark.postgres
@pytest.mark.redis
async def test_sessions_continue_across_a_restart_and_a_cache_outage(
    postgres_url: str, tmp_path: Path
) -> None:
    """A conversation on tiered(PostgreSQL + Redis) survives a service restart and the
    cache process dying mid-conversation, with no turn lost or repeated."""
    await postgres.execute(postgres_url, "DELETE FROM kv_records")
    redis = RedisServer(tmp_path / "redis").start()
    clock = ManualClock(datetime.now(UTC))  # the breaker's: its reset is a step, not a wait

    def service() -> CoachService:
        return CoachService(
            create_database(
                DatabaseType.TIERED,
                postgres_url,
                cache_url=redis.url,
                cache_timeout=0.05,
                breaker_threshold=2,
                breaker_reset_after=0.2,
                clock=clock,
            )
        )

    try:
        async with service() as first:
            for message, expected in CONVERSATION[:2]:
                assert (await first.handle("u1", "s1", message)).state == expected
        async with service() as second:  # a restart: a new process would do the same
            reply = await second.handle("u1", "s1", CONVERSATION[2][0])
            assert (reply.state, reply.state_version) == (CONVERSATION[2][1], 3)
            redis.stop()  # the cache dies mid-conversation
            for turn, (message, expected) in enumerate(CONVERSATION[3:5], start=4):
                reply = await second.handle("u1", "s1", message)
                assert (reply.state, reply.state_version) == (expected, turn)
            redis.start()
            clock.advance(0.3)  # past breaker_reset_after: the next call probes
            for turn, (message, expected) in enumerate(CONVERSATION[5:], start=6):
                reply = await second.handle("u1", "s1", message)
                assert (reply.state, reply.state_version) == (expected, turn)
            context = await second.db.get_context("u1", "s1")
            assert context is not None
            assert context.version == len(CONVERSATION)
            assert [i.identity_id for i in await second.db.get_identities("u1")] == [
                "a-calm-leader",
                "a-curious-learner",
            ]
    finally:
        redis.stop()
