"""The benchmark's HTTP client: conversations that talk to the service the way a mobile
client does, send some turns twice at once, and send a turn again until it is answered.

Every answer, latency and error is recorded for the checks and the report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

SCRIPT = (
    "Call me Sam.",
    "Sleep better and feel rested.",
    "An early riser",
    "A calm parent",
    "done",
    "Lights out at ten, phone outside the bedroom.",
)
"""A conversation; after it the user keeps chatting in WRAP_UP ("ok, turn N")."""

WORKER = "X-Coach-Worker"
LANE = 25
"""Conversations per connection pool (two connections each, for sends at once)."""


def text_of(turn: int) -> str:
    """What the user says at ``turn`` (from 0)."""
    return SCRIPT[turn] if turn < len(SCRIPT) else f"ok, turn {turn + 1}"


@dataclass
class Conversation:
    """What one conversation sent and was answered."""

    user_id: str
    session_id: str
    lane: int = 0
    """Which of the client's connection pools it uses."""
    acked: list[str] = field(default_factory=list)
    """Message ids, in the order their answers came (each sent after the last answer)."""
    texts: dict[str, str] = field(default_factory=dict)
    answers: dict[str, list[tuple[int, str, bool, str]]] = field(default_factory=dict)
    """Per message id, every ``200`` answer: (seq, reply, replayed, worker)."""
    doubled: list[str] = field(default_factory=list)
    """Message ids whose first send went twice at once."""
    unanswered: str | None = None
    """The message id still unanswered when the client gave up (end of the run)."""


@dataclass
class Traffic:
    """Latencies per endpoint and errors per kind, over every request."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)

    def table(self) -> list[str]:
        rows = [
            "| endpoint | requests | p50 ms | p95 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, values in sorted(self.latencies.items()):
            cuts = (
                statistics.quantiles(values, n=100, method="inclusive")
                if len(values) > 1
                else values * 99
            )
            rows.append(
                f"| {name} | {len(values):,} | {cuts[49] * 1e3:.1f} | {cuts[94] * 1e3:.1f} "
                f"| {cuts[98] * 1e3:.1f} | {max(values) * 1e3:.1f} |"
            )
        return rows


class Client:
    """Drives conversations against the service at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        think: float,
        double_ratio: float,
        give_up_after: float,
        timeout: float,
        lanes: int = 1,
    ) -> None:
        """``timeout``: seconds a send waits for its answer before it is sent again (a
        client that gives up on a stuck connection and reconnects). ``lanes``: connection
        pools, each for :data:`LANE` conversations: httpx's pool costs CPU in the number of
        requests waiting in it, and one pool for 1,000 conversations made the client, not
        the service, the bottleneck."""
        limits = httpx.Limits(max_connections=2 * LANE, max_keepalive_connections=2 * LANE)
        self.lanes = [
            httpx.AsyncClient(
                base_url=url, timeout=httpx.Timeout(timeout, pool=120.0), limits=limits
            )
            for _ in range(lanes)
        ]
        self.think = think
        self.double_ratio = double_ratio
        self.give_up_after = give_up_after
        self.traffic = Traffic()

    async def close(self) -> None:
        for lane in self.lanes:
            await lane.aclose()

    async def _request(
        self, talk: Conversation, name: str, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        start = time.perf_counter()
        try:
            response = await self.lanes[talk.lane].request(method, path, **kwargs)
        except httpx.HTTPError as error:
            self.traffic.errors[f"{name}: {type(error).__name__}"] += 1
            raise
        self.traffic.latencies.setdefault(name, []).append(time.perf_counter() - start)
        if response.status_code != 200 and not (name.startswith("GET") and response.is_success):
            kind = response.json().get("error", "") if response.status_code == 503 else ""
            self.traffic.errors[f"{name}: {response.status_code} {kind}".strip()] += 1
        return response

    async def _send(self, talk: Conversation, message_id: str) -> bool:
        """One send; records a ``200`` answer. ``True`` if answered."""
        path = f"/users/{talk.user_id}/sessions/{talk.session_id}/messages"
        body = {"message_id": message_id, "text": talk.texts[message_id]}
        try:
            response = await self._request(talk, "POST messages", "POST", path, json=body)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        answer = response.json()
        talk.answers.setdefault(message_id, []).append(
            (answer["seq"], answer["reply"], answer["replayed"], response.headers[WORKER])
        )
        return True

    async def deliver(self, talk: Conversation, message_id: str, give_up: float) -> bool:
        """Send until answered (the same message id each time), or until ``give_up``."""
        double = random.random() < self.double_ratio
        if double:
            talk.doubled.append(message_id)
            sends = await asyncio.gather(self._send(talk, message_id), self._send(talk, message_id))
            answered = any(sends)
        else:
            answered = await self._send(talk, message_id)
        pause = 0.05
        while not answered and time.monotonic() < give_up:
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, 1.0)
            answered = await self._send(talk, message_id)
        if answered:
            talk.acked.append(message_id)
        return answered

    async def _reads(self, talk: Conversation) -> None:
        """Now and then the app shows the session: state, context, transcript, health."""
        session = f"/users/{talk.user_id}/sessions/{talk.session_id}"
        for name, path, chance in (
            ("GET state", f"{session}/state", 0.3),
            ("GET context", f"{session}/context", 0.15),
            ("GET transcript", f"{session}/transcript", 0.1),
            ("GET health", "/health", 0.02),
        ):
            if random.random() < chance:
                with contextlib.suppress(httpx.HTTPError):  # counted; reads are not retried
                    await self._request(talk, name, "GET", path)

    async def converse(self, talk: Conversation, deadline: float) -> None:
        """Turns until ``deadline``; the turn in flight then is still sent until answered
        (at most ``give_up_after`` seconds more)."""
        await asyncio.sleep(random.random() * max(self.think, 0.5))  # spread the start
        turn = 0
        while time.monotonic() < deadline:
            message_id = f"m{turn + 1}"
            talk.texts[message_id] = text_of(turn)
            if not await self.deliver(talk, message_id, deadline + self.give_up_after):
                talk.unanswered = message_id
                return
            turn += 1
            await self._reads(talk)
            await asyncio.sleep(random.uniform(0, 2 * self.think))  # the user reads and types
