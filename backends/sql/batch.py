"""Group commit: concurrent saves go to PostgreSQL as one statement per round.

A save that finds no other save in flight runs alone, at once: a lone caller waits for
nothing. The others queue. One grouped round runs at a time (beside the save running
alone, if any): it takes everything queued (one row per key: a key saved twice waits for
the following round, so one key's saves keep their order) and sends it as one statement
(``put_batch`` in :mod:`backends.sql.statements`) with one commit; what queues meanwhile
goes in the next. Each row keeps its own version check and gets its own result: a conflict
fails only that caller.

Saves do not run side by side on several connections even when turns are free: measured
in one process against that policy (tiered ``save_state``, interleaved), queuing behind
the one round in flight gave 1.03x the saves a second at 2 tasks, 1.18x at 4, 1.45x at
8, 1.11-1.14x at 32 and 1.12x at 128, with a lower p99: one statement of many rows costs
PostgreSQL less than many statements of one, and the callers of a round resume together,
so their cache writes share a pipeline.

A round runs in a task of its own, so a caller cancelled while its row is being written
does not cut the others off (its save's outcome is then unknown, as for a statement
cancelled mid-way); a caller cancelled while queued is taken out and nothing is written
for it. A round the server refuses as a whole for a value (a data error) is run again one
save at a time, so only the save at fault fails; any other failure (connection lost,
timeout) fails every save of the round, as it would have failed each alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kvstore.errors import (
    BackendUnavailableError,
    DatabaseClosedError,
    KVStoreError,
    SerializationError,
)

if TYPE_CHECKING:
    from datetime import datetime

    from backends.sql.hot_path import HotPath

MAX_ROWS: Final = 256
"""Saves one round carries at most."""

Saved = tuple[int, "datetime", int]
"""What a save returns: version, created_at, revision (``None``: its check failed)."""


@dataclass(slots=True)
class _Save:
    args: tuple[Any, ...]
    """namespace, owner, key text, value text, now, expires_at."""
    expected: int | None
    future: asyncio.Future[Saved | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommit:
    """The saves of one SQL backend on PostgreSQL, grouped into rounds."""

    def __init__(self, hot: HotPath, turns: int, *, together: bool = True) -> None:
        """At most ``turns`` statements (saves alone and the grouped round) are sent at
        once; with ``together`` false (SQLite, or ``group_commit=False``) every save runs
        alone, as it comes."""
        self._hot = hot
        self._turns = max(1, turns)
        self._together_ok = together
        self._in_flight = 0
        self._grouped = 0
        """Rounds of queued saves in flight (0 or 1)."""
        self._queue: list[_Save] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.statements = 0
        """Statements sent for saves (a round of one save counts one)."""
        self.saves = 0
        """Saves sent (a save run again alone after a data error counts again)."""

    async def save(self, args: tuple[Any, ...], expected: int | None) -> Saved | None:
        """Save one row (``args`` as :class:`_Save` has them) with ``expected`` as its
        version check: ``None`` none, ``0`` must not exist, ``N`` must be at version N.
        Returns the row's version, ``created_at`` and revision, or ``None`` if the check
        failed."""
        if self._closed:
            raise DatabaseClosedError("the SQL backend is closed")
        if not self._together_ok or (self._in_flight == 0 and not self._queue):
            self._in_flight += 1
            try:
                return await self._alone(args, expected)
            finally:
                self._in_flight -= 1
                self._start_rounds()
        item = _Save(args, expected)
        self._queue.append(item)
        self._start_rounds()
        # queued as long as a statement may wait for its turn, then given up (a round that
        # took it is bounded by the statement timeout); a timer, not a timeout around the
        # wait, which would cost a shield and a cancellation scope per save
        give_up = asyncio.get_running_loop().call_later(self._hot.turn_timeout, self._give_up, item)
        try:
            return await item.future  # a round sets it, or skips it once cancelled
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._queue.remove(item)  # not sent yet: nothing is written for it
            raise
        finally:
            give_up.cancel()

    def _give_up(self, item: _Save) -> None:
        """``item`` waited its turn out: still queued, it fails with nothing written."""
        if item in self._queue:
            self._queue.remove(item)
            _fail(item, self._hot.no_turn("save"))

    async def close(self) -> None:
        """Fail what is queued and wait for the rounds in flight."""
        self._closed = True
        queued, self._queue = self._queue, []
        for item in queued:
            if not item.future.done():
                item.future.set_exception(DatabaseClosedError("the SQL backend is closed"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- rounds ------------------------------------------------------------------------------

    def _start_rounds(self) -> None:
        if self._queue and self._in_flight < self._turns and not self._grouped:
            batch = self._take()
            self._in_flight += 1
            self._grouped += 1
            task = asyncio.get_running_loop().create_task(self._round(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Save]:
        """The next round: queued saves in order, one per key, at most :data:`MAX_ROWS`."""
        batch: list[_Save] = []
        left: list[_Save] = []
        keys: set[tuple[str, str, str]] = set()
        for item in self._queue:
            if item.future.done():
                continue  # its caller was cancelled: nothing is written for it
            key = item.args[:3]
            if len(batch) < MAX_ROWS and key not in keys:
                keys.add(key)
                batch.append(item)
            else:
                left.append(item)
        self._queue = left
        return batch

    async def _round(self, batch: list[_Save]) -> None:
        try:
            if len(batch) > 1:
                try:
                    results = await self._together(batch)
                except SerializationError:
                    pass  # one value was refused: find it by running each save alone
                except Exception as exc:  # noqa: BLE001 - handed to every caller
                    for item in batch:
                        _fail(item, exc)
                    return
                else:
                    for item in batch:
                        _succeed(item, results.get(item.args[:3]))
                    return
            for item in batch:
                try:
                    result = await self._alone(item.args, item.expected)
                except Exception as exc:  # noqa: BLE001 - handed to its caller
                    _fail(item, exc)
                else:
                    _succeed(item, result)
        finally:
            for item in batch:  # the round was cut off (cancelled): nobody is left waiting
                _fail(item, BackendUnavailableError("the save's round was cut off"))
            self._in_flight -= 1
            self._grouped -= 1
            if not self._closed:
                self._start_rounds()

    async def _alone(self, args: tuple[Any, ...], expected: int | None) -> Saved | None:
        if expected is None:
            name, run_args = "put", args
        elif expected == 0:
            name, run_args = "put_new", args
        else:
            name, run_args = "put_if", (*args, expected)
        self.statements += 1
        self.saves += 1
        rows = await self._hot.run("save", name, run_args, idempotent=False)
        if not rows:
            return None
        version, created_at, revision = rows[0]
        return version, created_at, revision

    async def _together(self, batch: list[_Save]) -> dict[tuple[str, str, str], Saved]:
        columns: list[list[Any]] = [[] for _ in range(7)]
        for item in sorted(batch, key=lambda item: item.args[:3]):  # one lock order
            for column, value in zip(columns, (*item.args, item.expected), strict=True):
                column.append(value)
        self.statements += 1
        self.saves += len(batch)
        rows = await self._hot.run("save", "put_batch", tuple(columns), idempotent=False)
        return {
            (namespace, owner, key): (version, created_at, revision)
            for namespace, owner, key, version, created_at, revision in rows
        }


def _succeed(item: _Save, result: Saved | None) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _fail(item: _Save, exc: BaseException) -> None:
    """Give ``item``'s caller an exception of its own (one object raised in many tasks would
    gather every task's traceback)."""
    if item.future.done():
        return
    if isinstance(exc, KVStoreError):
        own = type(exc)(*exc.args)
        own.__cause__ = exc.__cause__
        exc = own
    item.future.set_exception(exc)
