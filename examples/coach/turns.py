"""One message of a session at a time, across worker processes, exactly once per client
message id.

:meth:`Turns.take` runs one turn under the session's lock (``db.lock``) and passes the
fence to every write, so a worker that paused past its lease is refused by the store
(``FencedError``) once another took the session over. A turn:

1. reads the session's state (its :class:`~examples.coach.progress.Progress`) and context;
2. if the last committed turn is missing from the transcript or the context (the worker
   that committed it died before writing them), writes them now;
3. if the message id is one of the session's recent turns, answers that turn again
   (``replayed``): a message sent twice, or retried after a lost answer, is taken once;
4. otherwise runs one step of the state machine and commits it by saving the state record
   (with ``expected_version``: the commit point), then writes the transcript record and the
   context. The answer goes out only after all three are written.

A read served stale by the cache after a fault makes the commit's version check fail: the
turn is then read and tried again (:data:`ATTEMPTS` times, still under the lock).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from examples.coach import context
from examples.coach.progress import Progress
from examples.coach.state_machine import State
from examples.coach.step import step
from examples.coach.transcript import NAMESPACE, Turn, seq_id
from kvstore import ConflictError, ContextRecord, FencedError, StateRecord

if TYPE_CHECKING:
    from examples.coach.service import CoachService
    from kvstore import Collection, Fence

ATTEMPTS: Final = 5
"""Tries of a turn whose reads turned out stale (a version conflict), under one lock."""

log = logging.getLogger(__name__)


class MessageIdReusedError(Exception):
    """A client message id came again with another text than its turn had."""


class StaleReadError(Exception):
    """The transcript does not show a turn the state record says was committed (a stale
    read after a cache fault); the turn is tried again."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A turn, and whether it was taken before (a message id sent again)."""

    turn: Turn
    replayed: bool


class Turns:
    """Takes turns of any session for one process's :class:`CoachService`."""

    def __init__(self, service: CoachService) -> None:
        self.service = service
        self.transcript: Collection[Turn] = service.db.collection(Turn, NAMESPACE)

    async def take(self, user_id: str, session_id: str, message_id: str, text: str) -> Answer:
        """Take the turn of ``message_id`` (once: the same id again gets the same answer,
        ``replayed``). Raises ``LockTimeoutError`` (the session is busy), ``FencedError``
        (this worker lost the lock mid-turn), ``BackendUnavailableError``, ``ConflictError``
        (still stale after :data:`ATTEMPTS`), :class:`MessageIdReusedError`. On any of them
        the turn may or may not have been committed: send the same message id again."""
        service = self.service
        async with service.db.lock(
            user_id, session_id, ttl=service.lock_ttl, timeout=service.lock_timeout
        ) as fence:
            for attempt in range(ATTEMPTS):
                try:
                    return await self._attempt(user_id, session_id, message_id, text, fence)
                except FencedError:
                    log.warning(
                        "coach turn fenced off: session %r lost its lock mid-turn", session_id
                    )
                    raise
                except (ConflictError, StaleReadError):
                    if attempt == ATTEMPTS - 1:
                        raise
                    await asyncio.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, user_id: str, session_id: str, message_id: str, text: str, fence: Fence
    ) -> Answer:
        db = self.service.db
        stored = await db.get_state(user_id, session_id)
        ctx = await db.get_context(user_id, session_id) or ContextRecord(
            user_id=user_id, session_id=session_id
        )
        done = Progress.of(stored)
        if done.last is not None and context.turn_of(ctx) < done.turns:
            ctx = await self._record(done.last, ctx, fence)  # the committer died: finish it
        seen = done.recent.get(message_id)
        if seen is not None:
            return Answer(await self._taken(done, user_id, session_id, seen, text), True)
        state = State(stored.state) if stored is not None else State.INTRODUCTION
        result = await step(db, user_id, state, text)
        turn = Turn(
            user_id=user_id,
            session_id=session_id,
            seq=seq_id(done.turns + 1),
            message_id=message_id,
            message=text,
            reply=result.text,
            from_state=state,
            to_state=result.following,
            identities=result.identities,
        )
        await db.save_state(
            StateRecord(
                user_id=user_id, session_id=session_id, state=turn.to_state, data=done.after(turn)
            ),
            expected_version=stored.version if stored is not None else 0,
            fence=fence,
        )
        await self._record(turn, ctx, fence)
        return Answer(turn, False)

    async def _record(self, turn: Turn, ctx: ContextRecord, fence: Fence) -> ContextRecord:
        """Write a committed turn to the transcript (once: it may be there already) and the
        context; the context as saved."""
        try:
            await self.transcript.save(turn, expected_version=0, fence=fence)
        except FencedError:
            raise
        except ConflictError:
            pass  # written by the attempt that committed it, before its answer was lost
        return await self.service.db.save_context(
            context.with_turn(
                ctx, turn.number, turn.message, turn.reply, window=self.service.context_window
            ),
            expected_version=ctx.version,
            fence=fence,
        )

    async def _taken(
        self, done: Progress, user_id: str, session_id: str, number: int, text: str
    ) -> Turn:
        """Turn ``number``, taken before, for a message id sent again."""
        if done.last is not None and number == done.last.number:
            turn: Turn | None = done.last
        else:
            turn = await self.transcript.get(user_id, session_id, seq_id(number))
        if turn is None:
            raise StaleReadError(f"turn {number} of session {session_id!r} is not readable yet")
        if turn.message != text:
            raise MessageIdReusedError(f"message id {turn.message_id!r} was sent with another text")
        return turn
