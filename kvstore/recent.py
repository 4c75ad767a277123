"""What this process read lately, so that a record read again unchanged is copied rather
than validated again.

Validating a record's JSON is most of what a cache hit costs in the process (~9 µs for a
1.3 KB session record). :class:`RecentReads` keeps, per key, the last entry a ``get`` read.
When a later read returns an equal entry (the same bytes, version, times and revision,
compared in full: nothing is trusted that the backend did not just return), the held one
is used instead, with a memo (:attr:`backends.base.Entry.memo`) where the record layer
keeps a copier (:func:`kvstore.models.copies.copier`) once the memo was read twice: from
the fourth read on, records are copied. A record saved anew has new bytes and starts
over; holding an entry read once costs a dict entry (~0.5 µs a read). A deleted record,
or an erased user's, is dropped here too, so that its data does not stay in the process;
reads under way at the time hold nothing (:attr:`RecentReads.epoch`).

Bounded by entries and by the bytes of the values held (a held record's copier takes
about twice as much again: ~3 KB beside the session record's 1.4 KB). Least recently
used goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

# the module, not the name: backends.base imports kvstore.errors, whose package imports this
from backends import base
from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from backends.base import Entry
    from kvstore.keys import Key

DEFAULT_ENTRIES: Final = 1024
"""Entries held by default."""
DEFAULT_BYTES: Final = 4 * 1024 * 1024
"""Bytes of values held by default (a value larger than this is never held)."""


class RecentReads:
    """The last entry read per key: at most ``max_entries`` of them and ``max_bytes`` of
    their values; ``max_entries=0`` holds nothing."""

    def __init__(self, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_BYTES):
        for name, bound in [("recent_reads", max_entries), ("recent_reads_bytes", max_bytes)]:
            if type(bound) is not int or bound < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, not {bound!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.epoch = 0
        """Counts the forgets: a read that began before one does not hold what it read
        (it may be the data of a record deleted meanwhile)."""
        self._entries: OrderedDict[Key, Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def held(self, key: Key, entry: Entry, since: int | None = None) -> Entry:
        """``entry``, just read for ``key`` (and now held), or the equal entry held from an
        earlier read, given a memo for what is derived from it. An entry that already has a
        memo (the near cache's) is returned as it is, and so is one read by a read that
        began at :attr:`epoch` ``since`` if something was forgotten meanwhile."""
        if entry.memo is not None or not self.max_entries:
            return entry
        if since is not None and since != self.epoch:
            return entry
        entries = self._entries
        held = entries.get(key)
        if held is not None:
            if held == entry:
                entries.move_to_end(key)
                return base.give_memo(held)
            del entries[key]
            self.bytes -= len(held.value)
        size = len(entry.value)
        if size > self.max_bytes:
            return entry
        entries[key] = entry
        self.bytes += size
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            _, dropped = entries.popitem(last=False)
            self.bytes -= len(dropped.value)
        return entry

    def forget(self, key: Key) -> None:
        """Drop what is held for ``key`` (deleted: its data should not stay in memory), and
        what reads already under way would hold."""
        self.epoch += 1
        held = self._entries.pop(key, None)
        if held is not None:
            self.bytes -= len(held.value)

    def forget_owner(self, owner: str) -> None:
        """Drop what is held for every key of ``owner`` (erased), and what reads already
        under way would hold."""
        self.epoch += 1
        for key in [key for key in self._entries if key.owner == owner]:
            self.forget(key)

    def clear(self) -> None:
        """Hold nothing, not even what reads already under way would."""
        self.epoch += 1
        self._entries.clear()
        self.bytes = 0
