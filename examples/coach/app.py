"""The coach service over HTTP: an ASGI app (Starlette) with one :class:`CoachService` per
worker process, configured from the environment (``CoachService.from_environment``)::

    uvicorn --factory examples.coach.app:create_app               # the SQLite file ./kvstore.db
    KVSTORE_URL=postgresql://... KVSTORE_CACHE_URL=redis://... \\
        uvicorn --factory examples.coach.app:create_app --workers 4

``POST /users/{user_id}/sessions/{session_id}/messages`` with ``{"message_id": ...,
"text": ...}`` takes one turn (:class:`~examples.coach.turns.Turns`) and answers ``200
{"seq", "reply", "state", "replayed"}``. The message id is the client's: sending it again
(a double send, a retry after a lost answer) answers the same turn again with ``"replayed":
true``, and the turn is taken once. ``503`` (with ``Retry-After``) means the turn may or may
not have been taken (the session's lock was busy, this worker lost the lock mid-turn, a
backend failed): send the same message id again. ``409``: the message id was used before
with another text. ``422``: a bad id or body.

``GET .../state``, ``.../context``: the session's records (``404`` if none);
``GET .../transcript?after=N&limit=L``: its turns in order, after turn ``N``;
``GET /health``: the store's tiers and counters of this worker (``db.stats()``);
``GET /metrics`` (with ``KVSTORE_COACH_METRICS=1``): kvstore's metrics for Prometheus.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from examples.coach import metrics
from examples.coach.progress import Progress
from examples.coach.service import CoachService
from examples.coach.transcript import MAX_TEXT, Turn, seq_id
from examples.coach.turns import MessageIdReusedError, Turns
from kvstore import (
    BackendUnavailableError,
    ConflictError,
    Id,
    InvalidKeyError,
    InvalidRecordError,
    LockTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from starlette.requests import Request

MAX_PAGE: Final = 1000
RETRY_AFTER: Final = "1"
"""Seconds a client waits before sending a message again after a ``503``."""
WORKER: Final = "X-Coach-Worker"
"""The header naming the worker process (its pid) that answered."""


class Message(BaseModel):
    """The body of a ``POST .../messages``."""

    model_config = ConfigDict(extra="forbid")

    message_id: Id
    text: Annotated[str, Field(max_length=MAX_TEXT)]


def _answer(status: int, content: Any, **headers: str) -> JSONResponse:
    return JSONResponse(content, status, headers={WORKER: str(os.getpid()), **headers})


def _turn(turn: Turn) -> dict[str, Any]:
    return turn.model_dump(mode="json", include={"seq", "message_id", "message", "reply"}) | {
        "seq": turn.number,
        "from_state": turn.from_state.value,
        "state": turn.to_state.value,
    }


class CoachApi:
    """The request handlers, over one process's service."""

    def __init__(self, service: CoachService) -> None:
        self.service = service
        self.turns = Turns(service)

    async def message(self, request: Request) -> JSONResponse:
        user_id, session_id = request.path_params["user_id"], request.path_params["session_id"]
        try:
            body = Message.model_validate_json(await request.body())
        except ValidationError as error:
            return _answer(
                422,
                {
                    "error": "bad body",
                    "detail": error.errors(
                        include_url=False, include_input=False, include_context=False
                    ),
                },
            )
        try:
            answer = await self.turns.take(user_id, session_id, body.message_id, body.text)
        except MessageIdReusedError as error:
            return _answer(409, {"error": str(error)})
        except (LockTimeoutError, ConflictError, BackendUnavailableError) as error:
            # FencedError is a ConflictError: this worker lost the lock; not known to be done
            return _answer(
                503, {"error": type(error).__name__, "retry": True}, **{"Retry-After": RETRY_AFTER}
            )
        return _answer(
            200,
            {
                "seq": answer.turn.number,
                "reply": answer.turn.reply,
                "state": answer.turn.to_state.value,
                "replayed": answer.replayed,
            },
        )

    async def state(self, request: Request) -> JSONResponse:
        record = await self.service.db.get_state(
            request.path_params["user_id"], request.path_params["session_id"]
        )
        if record is None:
            return _answer(404, {"error": "no such session"})
        return _answer(200, record.model_dump(mode="json"))

    async def context(self, request: Request) -> JSONResponse:
        record = await self.service.db.get_context(
            request.path_params["user_id"], request.path_params["session_id"]
        )
        if record is None:
            return _answer(404, {"error": "no such session"})
        return _answer(200, record.model_dump(mode="json"))

    async def transcript(self, request: Request) -> JSONResponse:
        """Turns after ``after`` (default 0), at most ``limit`` (default 100); the last
        committed turn is included even before its transcript record is written."""
        user_id, session_id = request.path_params["user_id"], request.path_params["session_id"]
        try:
            after = int(request.query_params.get("after", "0"))
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return _answer(422, {"error": "after and limit are whole numbers"})
        if after < 0 or not 0 < limit <= MAX_PAGE:
            return _answer(422, {"error": f"after >= 0, 0 < limit <= {MAX_PAGE}"})
        page = await self.turns.transcript.page(
            user_id, session_id, after=(user_id, session_id, seq_id(after)), limit=limit
        )
        turns = page.records
        if page.next_after is None and len(turns) < limit:
            last = Progress.of(await self.service.db.get_state(user_id, session_id)).last
            newest = turns[-1].number if turns else after
            if last is not None and last.number > newest:
                turns = [*turns, last]
        following = turns[-1].number if page.next_after is not None else None
        return _answer(200, {"turns": [_turn(t) for t in turns], "next_after": following})

    async def health(self, request: Request) -> JSONResponse:
        stats = self.service.db.stats()
        return _answer(200, {"status": "ok", "pid": os.getpid(), **dataclasses.asdict(stats)})


def _bad_ids(
    handler: Callable[[Request], Awaitable[JSONResponse]],
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Answer ``422`` for ids the store refuses (``InvalidKeyError``, ``InvalidRecordError``)
    and ``503`` when a read finds a backend down."""

    async def guarded(request: Request) -> JSONResponse:
        try:
            return await handler(request)
        except (InvalidKeyError, InvalidRecordError) as error:
            return _answer(422, {"error": str(error)})
        except BackendUnavailableError as error:
            return _answer(503, {"error": type(error).__name__}, **{"Retry-After": RETRY_AFTER})

    return guarded


def create_app(service: CoachService | None = None) -> Starlette:
    """The ASGI app; ``service`` defaults to ``CoachService.from_environment()``, made in
    the app's lifespan. The lifespan initializes the store and closes it at the end (a
    given ``service`` serves at once: its store initializes on first use)."""
    holder = [CoachApi(service)] if service is not None else []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with service or CoachService.from_environment() as running:
            if not holder:
                holder.append(CoachApi(running))
            yield

    def route(path: str, name: str, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> JSONResponse:
            handler: Callable[[Request], Awaitable[JSONResponse]] = getattr(holder[0], name)
            return await handler(request)

        return Route(path, _bad_ids(endpoint), methods=methods)

    session = "/users/{user_id}/sessions/{session_id}"
    routes: list[BaseRoute] = [
        route(f"{session}/messages", "message", ["POST"]),
        route(f"{session}/state", "state", ["GET"]),
        route(f"{session}/context", "context", ["GET"]),
        route(f"{session}/transcript", "transcript", ["GET"]),
        route("/health", "health", ["GET"]),
    ]
    if metrics.enabled():
        routes.append(Mount("/metrics", app=metrics.endpoint()))
    return Starlette(routes=routes, lifespan=lifespan)
