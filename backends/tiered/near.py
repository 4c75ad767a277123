"""The near cache (opt-in): a bounded dict of entries in the process, in front of the shared
cache, kept coherent by revisions and the change feed.

What it holds only moves forward: an entry replaces another only with a higher revision;
the process's own writes put their committed entry in; every change the change feed brings
(from any process, or a batch job's plain SQL) drops an older entry. A read offers what it
found (in the shared cache or the system of record) once it returns; the offer is refused
if a change of that key newer than the entry was seen meanwhile. Changes are remembered for
that purpose over two windows of :data:`NOTE_WINDOW` seconds; a read that took longer than
one window offers nothing.

Entries are served only while the change feed is current: it has read everything committed
up to a moment at most ``max_lag`` seconds ago. So a near-cache hit is never older than
what was acknowledged ``max_lag`` seconds (plus the feed's recheck interval, for PostgreSQL
transactions that commit out of revision order) before the read; in the process itself, a
read sees every write the process made (read-your-writes) and never an older version than
an earlier read (monotonic reads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from backends.base import with_memo

if TYPE_CHECKING:
    from collections.abc import Iterable

    from backends.base import Change, Entry
    from kvstore.clock import Clock
    from kvstore.keys import Key

NOTE_WINDOW: Final = 1.0
"""Seconds of changes one window of notes covers (two are kept)."""
DEFAULT_MAX_LAG: Final = 0.5
"""Seconds since the change feed was last current after which the near cache stops serving
(until it is current again)."""
_FORGOTTEN: Final = 1 << 62
"""The note of a key whose newest revision is unknown (a write of unknown outcome)."""


class NearCache:
    """At most ``max_entries`` entries, least recently used dropped first."""

    def __init__(self, max_entries: int, clock: Clock, *, max_lag: float = DEFAULT_MAX_LAG):
        self.max_entries = max_entries
        self.max_lag = max_lag
        self._clock = clock
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._notes: dict[Key, int] = {}
        self._old_notes: dict[Key, int] = {}
        self._wiped: dict[str, float] = {}
        self._old_wiped: dict[str, float] = {}
        self._window_start = clock.monotonic()
        self._old_start = self._window_start
        self._current_until = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    # -- serving --------------------------------------------------------------------------

    def get(self, key: Key) -> Entry | None:
        """The entry of ``key`` if held, live, and the change feed is current."""
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            return None
        if self._clock.monotonic() >= self._current_until:
            return None
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= self._clock.now():
            del entries[key]
            return None
        entries.move_to_end(key)
        return entry

    @property
    def serving(self) -> bool:
        """Whether entries are served now (the change feed is current)."""
        return self._clock.monotonic() < self._current_until

    def feed_current(self) -> None:
        """The change feed has just read everything committed so far and applied it here."""
        self._current_until = self._clock.monotonic() + self.max_lag

    # -- what reads found --------------------------------------------------------------------

    def stamp(self) -> float:
        """Taken by a read before it asks anything; passed to :meth:`offer`."""
        return self._clock.monotonic()

    def offer(self, key: Key, entry: Entry, stamp: float) -> None:
        """A read that began at ``stamp`` found ``entry``: keep it unless a newer change of
        the key (or an erasure of its owner) was seen since, or the read took too long to
        tell."""
        self._rotate()
        if stamp < self._old_start:
            return
        note = max(self._notes.get(key, 0), self._old_notes.get(key, 0))
        if entry.revision < note:
            return
        wiped = max(self._wiped.get(key.owner, -1.0), self._old_wiped.get(key.owner, -1.0))
        if wiped >= stamp:
            return
        self._put(key, entry)

    # -- changes -----------------------------------------------------------------------------

    def wrote(self, key: Key, entry: Entry) -> None:
        """This process committed ``entry`` for ``key``."""
        self._note(key, entry.revision)
        self._put(key, entry)

    def changed(self, changes: Iterable[Change]) -> None:
        """Committed changes (from the feed, or this process's deletes): drop older entries."""
        entries = self._entries
        for change in changes:
            key, revision = change.key, change.revision
            self._note(key, revision)
            held = entries.get(key)
            if held is not None and held.revision < revision:
                del entries[key]

    def forget(self, key: Key) -> None:
        """A write of ``key`` whose outcome is unknown: drop it, and refuse what reads in
        flight offer for it."""
        self._note(key, _FORGOTTEN)
        self._entries.pop(key, None)

    def forget_owner(self, owner: str) -> None:
        """Every key of ``owner`` is being erased: drop them, and refuse what reads in
        flight offer for them."""
        self._rotate()
        self._wiped[owner] = self._clock.monotonic()
        for key in [key for key in self._entries if key.owner == owner]:
            del self._entries[key]

    # -- internals -----------------------------------------------------------------------------

    def _put(self, key: Key, entry: Entry) -> None:
        entries = self._entries
        held = entries.get(key)
        if held is not None and held.revision >= entry.revision:
            return
        entries[key] = with_memo(entry)
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def _note(self, key: Key, revision: int) -> None:
        self._rotate()
        notes = self._notes
        if notes.get(key, -1) < revision:
            notes[key] = revision

    def _rotate(self) -> None:
        now = self._clock.monotonic()
        if now - self._window_start < NOTE_WINDOW:
            return
        # the notes since the window began become the old window: every note taken after
        # a stamp at or past its start is still here
        self._old_notes, self._old_wiped = self._notes, self._wiped
        self._old_start = self._window_start
        self._notes, self._wiped = {}, {}
        self._window_start = now
