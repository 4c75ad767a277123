"""The history checker on hand-written histories: it must find every anomaly it claims to
find, and nothing else (a checker that cries wolf, or never does, proves nothing)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.history.checker import Final, HistoryError, Op, check, load_ops, table, write_json

if TYPE_CHECKING:
    from pathlib import Path

K = "u1/s1"
MS = 1_000_000


def w(version: int, start: int, end: int, *, by: str = "w1", key: str = K, **more: Any) -> Op:
    """A write acknowledged between ``start`` and ``end`` (ms)."""
    marker = more.pop("marker", f"{by}:{version}")
    return Op(by, "write", key, start * MS, end * MS, version, marker, **more)


def r(
    version: int | None, start: int, end: int, *, by: str = "w2", key: str = K, **more: Any
) -> Op:
    """A read between ``start`` and ``end`` (ms) that returned ``version``."""
    marker = more.pop("marker", None if version is None else f"w1:{version}")
    return Op(by, "read", key, start * MS, end * MS, version, marker, **more)


def final(version: int, by: str = "w1") -> dict[str, Final | None]:
    return {K: Final(version, f"{by}:{version}")}


def test_reads_of_the_newest_acknowledged_version_are_not_stale() -> None:
    ops = [w(1, 0, 2), r(1, 3, 4), w(2, 5, 8), r(1, 6, 7), r(1, 7, 9), r(2, 9, 10)]
    report = check("ok", ops, final(2))
    assert (report.reads, report.writes, report.stale_reads, report.lost_writes) == (4, 2, 0, 0)
    assert report.inconsistent_reads == report.duplicate_versions == 0


def test_a_read_older_than_a_write_acknowledged_before_it_began_is_stale() -> None:
    ops = [w(1, 0, 2), w(2, 3, 10), w(3, 11, 20), r(1, 30, 31), r(2, 25, 26), r(3, 40, 41)]
    report = check("stale", ops, final(3))
    assert report.stale_reads == 2
    # v1 read at 30 missed v2, acknowledged at 10 (the oldest newer one): 20 ms
    assert report.worst_staleness_ms == 20.0
    assert report.samples["worst_stale_read"][0]["missed"] == 2


def test_a_missing_record_counts_as_version_zero() -> None:
    report = check("gone", [w(1, 0, 1), r(None, 5, 6)], final(1))
    assert (report.stale_reads, report.worst_staleness_ms) == (1, 4.0)


def test_a_version_observed_in_sql_counts_from_when_it_was_read() -> None:
    observed = Op("test", "observe", K, 10 * MS, 12 * MS, 2, "w9:2")
    report = check("crash", [w(1, 0, 1), observed, r(1, 11, 13), r(1, 15, 16)], final(2, "w9"))
    assert (report.stale_reads, report.worst_staleness_ms, report.lost_writes) == (1, 3.0, 0)


def test_lost_acknowledged_writes() -> None:
    ops = [w(1, 0, 1), w(2, 2, 3), w(3, 4, 5)]
    assert check("lower", ops, final(1)).lost_writes == 2
    assert check("gone", ops, {K: None}).lost_writes == 3
    assert check("other value", ops, {K: Final(3, "w7:3")}).lost_writes == 1
    assert check("unacknowledged newer", ops, {K: Final(4, "w7:4")}).lost_writes == 0


def test_duplicate_versions_and_inconsistent_reads() -> None:
    ops = [w(1, 0, 1), w(1, 0, 2, by="w3"), r(1, 5, 6, marker="w5:1"), r(4, 7, 8)]
    report = check("dup", ops, final(1))
    assert report.duplicate_versions == 1
    assert report.inconsistent_reads == 2  # another value for v1; v4 SQL never held


def test_only_kvstore_errors_are_allowed_and_a_scenario_can_narrow_them() -> None:
    def failed(error: str, kvstore: bool) -> Op:
        return Op("w1", "write", K, 0, 1, error=error, error_type=f"m.{error}", kvstore=kvstore)

    ops = [
        failed("BackendUnavailableError", True),
        failed("ConflictError", True),
        failed("Error", False),
        failed("Hang", False),
    ]
    report = check("errors", ops, {K: None})
    assert report.failed_ops == 4
    assert report.errors == {
        "BackendUnavailableError": 1,
        "ConflictError": 1,
        "Error": 1,
        "Hang": 1,
    }
    assert report.disallowed_errors == {"m.Error": 1, "m.Hang": 1}
    narrowed = check("errors", ops, {K: None}, allowed_errors=["BackendUnavailableError"])
    assert set(narrowed.disallowed_errors) == {"m.ConflictError", "m.Error", "m.Hang"}


def test_sequential_histories_must_read_the_last_acknowledged_mutation() -> None:
    def delete(start: int, by: str = "w2") -> Op:
        return Op(by, "delete", K, start * MS, (start + 1) * MS)

    good = [w(1, 0, 1), r(1, 2, 3), delete(4), r(None, 6, 7), w(1, 8, 9, marker="w1:again")]
    good.append(r(1, 10, 11, marker="w1:again"))
    report = check("seq", good, {K: Final(1, "w1:again")}, sequential_keys=[K])
    assert (report.sequential_violations, report.stale_reads, report.lost_writes) == (0, 0, 0)

    resurrected = [w(1, 0, 1), delete(2), r(1, 4, 5)]
    report = check("seq", resurrected, {K: None}, sequential_keys=[K])
    assert (report.sequential_violations, report.stale_reads) == (1, 1)
    assert report.worst_staleness_ms == 1.0  # delete acknowledged at 3, read at 4

    hidden = [w(1, 0, 1), delete(2), w(1, 4, 5, marker="w1:again"), r(None, 6, 7)]
    report = check("seq", hidden, {K: Final(1, "w1:again")}, sequential_keys=[K])
    assert report.sequential_violations == 1

    unknown = [w(1, 0, 1), Op("w2", "delete", K, 2 * MS, 3 * MS, error="X", kvstore=True)]
    unknown.append(r(1, 4, 5))
    assert check("seq", unknown, {K: Final(1, "w1:1")}, sequential_keys=[K]).stale_reads == 0

    assert check("seq", [w(1, 0, 1), delete(2)], final(1), sequential_keys=[K]).lost_writes == 1
    with pytest.raises(HistoryError, match="overlap"):
        check("seq", [w(1, 0, 5), r(1, 2, 3)], final(1), sequential_keys=[K])


def test_feed_lag_of_a_batch_update() -> None:
    batch = Op("test", "batch", K, 9 * MS, 10 * MS, batch="b")
    ops = [w(1, 0, 1), batch]
    ops += [
        r(1, 11, 12, by="w2"),
        r(1, 30, 31, by="w2", batch="b"),
        r(1, 40, 41, by="w2", batch="b"),
    ]
    ops += [r(1, 12, 13, by="w3", batch="b")]
    report = check("batch", ops, {K: Final(1, "w1:1", "b")})
    # the last read returning the old value started 1 ms after the update's commit
    assert (report.feed_converged, report.feed_lag_ms) == (True, 1.0)
    assert (report.stale_reads, report.worst_staleness_ms, report.lost_writes) == (1, 1.0, 0)

    never = [w(1, 0, 1), batch, r(1, 11, 12), r(1, 50, 51)]
    report = check("batch", never, {K: Final(1, "w1:1")})
    assert (report.feed_converged, report.feed_lag_ms) == (False, None)
    assert report.lost_writes == 1  # SQL lost the batch job's update too
    assert "never" in table([report])


def test_logs_load_and_only_a_killed_worker_may_end_in_a_cut_line(tmp_path: Path) -> None:
    warmup = {"breaker": "open", "seconds": 2.1, "closed": True}
    opened = {"w": "w0", "op": "open", "warmup": warmup, "stats": {"breaker": "closed"}}
    opened_late = {"w": "w1", "op": "open", "stats": {"breaker": "open"}}
    record = {"w": "w0", "op": "read", "key": K, "start": 1, "end": 2, "version": None}
    stats = {"w": "w0", "op": "stats", "stats": {"hits": 3, "misses": 1, "breaker": "closed"}}
    lines = "".join(json.dumps(line) + "\n" for line in (opened, opened_late, record, stats))
    log = tmp_path / "w0.jsonl"
    log.write_text(lines + '{"w": "w0", "op')
    with pytest.raises(HistoryError, match="not JSON"):
        load_ops([log])
    ops, loaded_stats = load_ops([log], [{"op": "note"}], killed=["w0"])
    assert [op.op for op in ops] == ["read"]
    report = check("stats", ops, {K: None}, stats=loaded_stats)
    assert (report.cache_hits, report.cache_misses) == (3, 1)
    assert report.notes == [
        "w0: cache breaker open after start-up; closed after 2.1 s of warm-up reads, before "
        "the load",
        "w1: cache breaker open at start",
    ]


def test_reports_merge_into_one_json_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json(path, check("a", [w(1, 0, 1)], final(1)))
    write_json(path, check("b", [w(1, 0, 1)], final(1)))
    data = json.loads(path.read_text())
    assert set(data) == {"a", "b"}
    assert data["a"]["writes"] == 1
