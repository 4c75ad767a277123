"""Following the system of record's change feed, missing nothing.

:class:`FeedFollower` turns :meth:`Backend.read_changes` into a stream of every committed
change, each delivered once, in the order reads find them. The difficulty is PostgreSQL:
revisions come from a sequence, so a transaction can commit revision 10 after revision 11
was already read. The follower keeps two numbers:

* ``cursor``: the highest revision delivered. A plain poll reads ``revision > cursor``.
* ``watermark``: every revision at or below it has been delivered or never will be. While
  ``watermark < cursor``, polls now and then read ``revision > watermark`` again and deliver
  what they had not (a late commit).

Revisions are drawn only by transactions that already have a transaction id (the revision
triggers force one first). So when a read saw ``cursor = C`` in a snapshot whose ``xmax``
was ``X``, every revision up to ``C`` belongs to a transaction with an id below ``X``; once
a later read's snapshot has ``xmin >= X`` all of those have ended, and that read of
``revision > watermark`` is final up to ``C``: the watermark moves to ``C``. Where changes
commit in revision order (SQLite: one writer at a time) reads carry no snapshot and the
watermark is the cursor.

On start the follower cannot know which revisions below the head are still in flight; it
re-reads the last :data:`START_LOOKBACK` revisions until they are final. A transaction that
holds a revision older than that for the whole start-up is the one case it can miss (its
change then reaches caches by their TTL); the tiered store documents it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from backends.base import Backend, Change, Snapshot
    from kvstore.clock import Clock

START_LOOKBACK: Final = 10_000
"""Revisions below the head re-read on start, until final."""
MAX_WINDOW: Final = 200_000
"""Revisions the watermark may trail the cursor by before it is moved up regardless (a
transaction held open that long; its later commit is then only seen if re-saved)."""


class FeedFollower:
    """Delivers every committed change of ``source`` once (see the module docstring)."""

    def __init__(
        self,
        source: Backend,
        clock: Clock,
        *,
        batch: int = 1000,
        recheck_interval: float = 1.0,
    ) -> None:
        self.source = source
        self.batch = batch
        self.recheck_interval = recheck_interval
        self.watermark = 0
        self.cursor = 0
        self.delivered = 0
        self.abandoned = 0
        """Revisions given up on by :data:`MAX_WINDOW`."""
        self._clock = clock
        self._pending: list[tuple[int, int]] = []
        """``(cursor, xmax)``: the watermark may move to ``cursor`` once ``xmin >= xmax``."""
        self._seen: set[int] = set()
        """Revisions above the watermark already delivered."""
        self._xmin = 0
        self._last_full = 0.0
        self._started = False
        self.caught_up = False
        """Whether the last poll read everything committed up to its start (fewer changes
        than ``batch``)."""

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run."""
        return self._started

    async def start(self) -> None:
        """Begin at the source's head. Where commits can come out of order, the last
        :data:`START_LOOKBACK` revisions are read now (what is visible is taken as known)
        and again until final: what was in flight then is delivered when it commits."""
        head, snapshot = await self.source.head()
        self.cursor = self.watermark = head
        if snapshot is not None:
            self.watermark = max(0, head - START_LOOKBACK)
            window, snapshot = await self.source.read_changes(
                self.watermark, START_LOOKBACK + self.batch
            )
            assert snapshot is not None
            self._seen.update(change.revision for change in window)
            if window:
                self.cursor = max(head, window[-1].revision)
            self._pending.append((self.cursor, snapshot.xmax))
            self._xmin = snapshot.xmin
        self._last_full = self._clock.monotonic()
        self._started = True

    async def poll(self) -> list[Change]:
        """Changes not delivered yet, at most ``batch`` read per call; call again at once
        while it returns ``batch`` of them."""
        now = self._clock.monotonic()
        full = bool(self._pending) and (
            self._xmin >= self._pending[0][1] or now - self._last_full >= self.recheck_interval
        )
        after = self.watermark if full else self.cursor
        changes, snapshot = await self.source.read_changes(after, self.batch)
        self.caught_up = len(changes) < self.batch
        fresh = [change for change in changes if change.revision not in self._seen]
        if snapshot is None:
            if changes:
                self.cursor = self.watermark = max(self.cursor, changes[-1].revision)
            self.delivered += len(fresh)
            return fresh
        self._seen.update(change.revision for change in fresh)
        self._xmin = snapshot.xmin
        last = changes[-1].revision if changes else self.cursor
        if full:
            self._last_full = now
            self._resolve(snapshot, last if len(changes) == self.batch else None)
        if changes and last > self.cursor:
            self.cursor = last
            self._pending.append((last, snapshot.xmax))
        if self.cursor - self.watermark > MAX_WINDOW:
            self.abandoned += self.cursor - MAX_WINDOW - self.watermark
            self._advance(self.cursor - MAX_WINDOW)
        self.delivered += len(fresh)
        return fresh

    def _resolve(self, snapshot: Snapshot, read_up_to: int | None) -> None:
        """After a full read in ``snapshot``: move the watermark over what is final (not
        past ``read_up_to`` when the read stopped at its batch size)."""
        final = [cursor for cursor, xmax in self._pending if xmax <= snapshot.xmin]
        if not final:
            return
        upto = max(final)
        if read_up_to is not None:
            upto = min(upto, read_up_to)
        self._advance(upto)

    def _advance(self, watermark: int) -> None:
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        self._pending = [(c, x) for c, x in self._pending if c > watermark]
        self._seen = {revision for revision in self._seen if revision > watermark}
