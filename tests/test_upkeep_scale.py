"""Cache warm-up and verification over more records than fit one query: two streaming scans
hold one chunk at a time and pick the same records as the one-query path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backends.base import Entry
from backends.memory import MemoryBackend, MemoryCache
from backends.tiered import TieredBackend, upkeep
from kvstore.errors import BackendUnavailableError
from kvstore.keys import Key
from tests.tiered_faults import FaultyCache

START = datetime(2026, 12, 1, tzinfo=UTC)


async def tier_with(count: int) -> TieredBackend:
    """A tier over a memory record holding ``count`` records, updated a second apart except
    for runs of three sharing one time (ties at the cut)."""
    record = MemoryBackend()
    items = [
        (
            Key("state", (f"u{n % 7}", f"s{n:04}")),
            Entry(b'{"n": %d}' % n, 1, START, START + timedelta(seconds=n // 3)),
        )
        for n in range(count)
    ]
    await record.restore(items)
    return TieredBackend(record, MemoryCache())


async def picked(tier: TieredBackend, limit: int) -> list[Key]:
    return sorted(
        (
            key
            for chunk in [c async for c in upkeep.newest(tier.record, "state", None, limit)]
            for key, _ in chunk
        ),
        key=lambda key: key.components,
    )


@pytest.mark.parametrize("limit", [1, 5, 6, 7, 100, 299, 300, 301, 10_000])
async def test_streaming_picks_the_newest_records_as_the_one_query_does(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    tier = await tier_with(300)
    at_once = await picked(tier, limit)
    monkeypatch.setattr(upkeep, "AT_ONCE", 0)  # every limit goes through the two scans
    monkeypatch.setattr(upkeep, "CHUNK", 7)
    streamed = await picked(tier, limit)
    assert len(streamed) == min(limit, 300)
    newest_times = sorted(START + timedelta(seconds=n // 3) for n in range(300))[-limit:]
    entries = await tier.record.get_many(streamed)
    assert sorted(e.updated_at for e in entries if e is not None) == newest_times
    if limit % 3 == 0 or limit >= 300:  # no tie cut in two: the very same records
        assert streamed == at_once


async def test_every_record_is_one_scan_in_chunks_and_warm_and_verify_cover_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upkeep, "CHUNK", 50)
    tier = await tier_with(1234)
    chunks = [len(c) async for c in upkeep.newest(tier.record, "state", None, upkeep.EVERY)]
    assert chunks == [50] * 24 + [34]
    progress: list[int] = []
    report = await tier.warm("state", limit=upkeep.EVERY, progress=progress.append)
    assert (report.read, report.landed, sum(progress)) == (1234, 1234, 1234)
    checked = await tier.verify("state", limit=upkeep.EVERY)
    assert (checked.checked, checked.stale, checked.extra, checked.missing) == (1234, [], [], 0)
    await tier.record.restore(
        [(Key("state", ("u0", "s0000")), Entry(b'{"n": -1}', 2, START, START + timedelta(1)))]
    )
    checked = await tier.verify("state", limit=upkeep.EVERY, repair=True)
    assert checked.stale == [Key("state", ("u0", "s0000"))]
    assert checked.repaired
    again = await tier.verify("state", limit=upkeep.EVERY)
    assert (again.stale, again.missing) == ([], 1)  # invalidated: a miss, not stale
    await tier.close()


async def test_a_chunk_the_cache_did_not_answer_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow answer on a busy machine does not end a long warm-up or verification: the
    chunk is tried again with a growing pause; a cache that stays down ends it, saying how
    far it got."""
    monkeypatch.setattr(upkeep, "RETRY_PAUSE", 0.001)
    monkeypatch.setattr(upkeep, "CHUNK", 100)
    record = MemoryBackend()
    await record.restore(
        [(Key("state", ("u1", f"s{n:03}")), Entry(b"{}", 1, START, START)) for n in range(300)]
    )
    faults = FaultyCache(MemoryCache())
    tier = TieredBackend(record, faults, breaker_threshold=100)
    faults.plan = [False, False, True, True]  # the second chunk's lookup fails, twice
    report = await tier.warm("state", limit=upkeep.EVERY)
    assert (report.read, report.landed) == (300, 300)
    faults.plan = [True, True, False]
    checked = await tier.verify("state", limit=upkeep.EVERY)
    assert (checked.checked, checked.stale, checked.missing) == (300, [], 0)
    faults.mode = "down"
    with pytest.raises(BackendUnavailableError, match=r"\(6 tries\); 0 records were done"):
        await tier.verify("state", limit=upkeep.EVERY)
    faults.mode = "ok"
    await tier.close()
