"""The coach service over HTTP (examples/coach/app.py), in process: turns, replays of a
message id, one turn at a time per session, a worker that died mid-turn, a worker fenced
off, and the answers to bad input."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from examples.coach import turns as turns_module
from examples.coach.app import create_app
from examples.coach.service import CoachService
from examples.coach.state_machine import State
from examples.coach.step import Step, step
from kvstore import BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from kvstore import Database
    from tests.conftest import MakeDb

SESSION = "/users/u1/sessions/s1"


@pytest.fixture(params=["memory", "sqlite"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[CoachService]:
    make: MakeDb = request.getfixturevalue(f"make_db_{request.param}")
    async with CoachService(make(), lock_ttl=5, lock_timeout=10) as running:
        yield running


@pytest.fixture
async def client(service: CoachService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://coach") as http:
        yield http


async def send(
    client: httpx.AsyncClient, message_id: str, text: str, session: str = SESSION
) -> httpx.Response:
    return await client.post(f"{session}/messages", json={"message_id": message_id, "text": text})


async def transcript(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(f"{SESSION}/transcript", params=params)
    assert response.status_code == 200
    turns: list[dict[str, Any]] = response.json()["turns"]
    return turns


async def test_a_conversation_over_http(client: httpx.AsyncClient) -> None:
    script = [
        ("Call me Sam.", State.GOAL_SETTING),
        ("Feel rested.", State.IDENTITY_BRAINSTORMING),
        ("A calm leader", State.IDENTITY_BRAINSTORMING),
        ("done", State.IDENTITY_REFINEMENT),
    ]
    for number, (text, expected) in enumerate(script, start=1):
        response = await send(client, f"m{number}", text)
        assert response.status_code == 200
        assert response.json()["seq"] == number
        assert response.json()["state"] == expected
        assert response.json()["replayed"] is False
    turns = await transcript(client)
    assert [(t["seq"], t["message"], t["state"]) for t in turns] == [
        (n, text, state.value) for n, (text, state) in enumerate(script, start=1)
    ]
    page = (await client.get(f"{SESSION}/transcript", params={"after": 1, "limit": 2})).json()
    assert [t["seq"] for t in page["turns"]] == [2, 3]
    assert page["next_after"] == 3
    state = (await client.get(f"{SESSION}/state")).json()
    assert (state["state"], state["version"], state["data"]["turns"]) == (
        "IDENTITY_REFINEMENT",
        4,
        4,
    )
    context = (await client.get(f"{SESSION}/context")).json()
    assert context["context"]["turn"] == 4
    assert context["context"]["messages"][-2] == {"role": "user", "text": "done"}
    assert (await client.get("/users/u1/sessions/nobody/state")).status_code == 404
    health = (await client.get("/health")).json()
    assert health["status"] == "ok"
    assert health["backend"] in ("memory", "sql")


async def test_a_message_sent_twice_is_one_turn_with_one_answer(client: httpx.AsyncClient) -> None:
    assert (await send(client, "m1", "Call me Sam.")).status_code == 200
    first, second = await asyncio.gather(
        send(client, "m2", "Feel rested."), send(client, "m2", "Feel rested.")
    )
    assert first.status_code == second.status_code == 200
    answers = [first.json(), second.json()]
    assert sorted(a["replayed"] for a in answers) == [False, True]
    assert {(a["seq"], a["reply"]) for a in answers} == {(2, answers[0]["reply"])}
    again = await send(client, "m1", "Call me Sam.")  # an older turn, sent once more
    assert (again.json()["seq"], again.json()["replayed"]) == (1, True)
    assert [t["message_id"] for t in await transcript(client)] == ["m1", "m2"]
    reused = await send(client, "m1", "another text")
    assert reused.status_code == 409


async def test_messages_sent_at_once_take_turns_one_at_a_time(
    client: httpx.AsyncClient, service: CoachService
) -> None:
    responses = await asyncio.gather(*(send(client, f"m{n}", f"text {n}") for n in range(6)))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(r.json()["seq"] for r in responses) == [1, 2, 3, 4, 5, 6]
    turns = await transcript(client)
    assert [t["seq"] for t in turns] == [1, 2, 3, 4, 5, 6]
    for before, after in itertools.pairwise(turns):
        assert after["from_state"] == before["state"]  # no step skipped or repeated
    state = await service.db.get_state("u1", "s1")
    assert state is not None
    assert (state.version, state.data["turns"]) == (6, 6)


async def test_a_turn_committed_by_a_worker_that_died_is_finished_by_the_next(
    client: httpx.AsyncClient, service: CoachService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state record is the commit point: a worker that dies after it and before the
    transcript and context writes leaves them to the next turn of the session."""
    original = turns_module.Turns._record
    died = asyncio.Event()

    async def dies_once(self: turns_module.Turns, *args: Any, **kwargs: Any) -> Any:
        if not died.is_set():
            died.set()
            raise BackendUnavailableError("the worker died")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(turns_module.Turns, "_record", dies_once)
    assert (await send(client, "m1", "Call me Sam.")).status_code == 503
    assert await service.db.get_context("u1", "s1") is None
    # the transcript shows the committed turn already (from the state record)
    assert [t["message_id"] for t in await transcript(client)] == ["m1"]
    retried = await send(client, "m1", "Call me Sam.")
    assert (retried.status_code, retried.json()["seq"], retried.json()["replayed"]) == (
        200,
        1,
        True,
    )
    assert (await send(client, "m2", "Feel rested.")).json()["seq"] == 2
    assert [t["message_id"] for t in await transcript(client, limit=10)] == ["m1", "m2"]
    context = await service.db.get_context("u1", "s1")
    assert context is not None
    assert context.context["turn"] == 2
    assert [
        m["text"] for m in (await client.get(f"{SESSION}/context")).json()["context"]["messages"]
    ] == [
        "Call me Sam.",
        (await transcript(client))[0]["reply"],
        "Feel rested.",
        (await transcript(client))[1]["reply"],
    ]  # each exchange once


async def test_a_worker_that_paused_past_its_lease_is_fenced_off(
    make_db_sqlite: MakeDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first message's handler pauses (until the second is answered) past its 0.3 s
    lease; the second message takes the lock and its turn; the first one's commit is
    refused by the store (503, so its client sends it again and it becomes turn 2)."""
    paused, quick_answered = asyncio.Event(), asyncio.Event()

    async def slow_step(db: Database, user_id: str, state: State, message: str) -> Step:
        if message == "slow" and not paused.is_set():
            paused.set()
            await quick_answered.wait()
        return await step(db, user_id, state, message)

    monkeypatch.setattr(turns_module, "step", slow_step)
    async with CoachService(make_db_sqlite(), lock_ttl=0.3, lock_timeout=30) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://coach") as client:
            slow = asyncio.ensure_future(send(client, "m-slow", "slow"))
            await paused.wait()
            quick = await send(client, "m-quick", "quick")  # granted once the lease ran out
            quick_answered.set()
            assert (quick.status_code, quick.json()["seq"]) == (200, 1)
            fenced = await slow
            assert (fenced.status_code, fenced.json()["error"]) == (503, "FencedError")
            again = await send(client, "m-slow", "slow")
            assert (again.status_code, again.json()["seq"]) == (200, 2)
            assert [t["message_id"] for t in await transcript(client)] == ["m-quick", "m-slow"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{SESSION}/messages", {"message_id": "m1"}),
        (f"{SESSION}/messages", {"message_id": "", "text": "hi"}),
        (f"{SESSION}/messages", {"message_id": "m1", "text": "x" * 4001}),
        (f"{SESSION}/messages", {"message_id": "m1", "text": "hi", "extra": 1}),
        ("/users/u%01/sessions/s1/messages", {"message_id": "m1", "text": "hi"}),
    ],
)
async def test_bad_input_is_refused_with_422(
    client: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == 422
    assert (await client.post(f"{SESSION}/messages", content=b"not json")).status_code == 422
    assert (await client.get(f"{SESSION}/transcript", params={"limit": 0})).status_code == 422


async def test_metrics_for_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With KVSTORE_COACH_METRICS=1 the service serves kvstore's OpenTelemetry metrics at
    /metrics in Prometheus's format: tier counters and the per-tier duration histogram."""
    monkeypatch.setenv("KVSTORE_COACH_METRICS", "1")
    monkeypatch.setenv("KVSTORE_URL", f"sqlite:///{tmp_path / 'coach.db'}")
    monkeypatch.setenv("KVSTORE_CACHE_URL", "memory://")
    async with CoachService.from_environment() as running:
        transport = httpx.ASGITransport(app=create_app(running))
        async with httpx.AsyncClient(transport=transport, base_url="http://coach") as http:
            assert (await send(http, "m1", "Call me Sam.")).status_code == 200
            assert (await http.get(f"{SESSION}/state")).status_code == 200
            scraped = (await http.get("/metrics/")).text
    assert "kvstore_cache_hits_total" in scraped
    assert "db_client_operation_duration_seconds_bucket{" in scraped
    assert 'kvstore_tier="cache"' in scraped
    assert "Sam" not in scraped
