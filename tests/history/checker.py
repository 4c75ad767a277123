"""The history checker: reads the workers' JSON-lines logs and the test's own events, and
reports stale reads, lost acknowledged writes and errors.

Definitions (times are CLOCK_MONOTONIC ns, one clock for every process of the host):

* An **acknowledged write** is a save that returned (its ``end``). A version the test read
  from SQL itself (``observe``, e.g. the committed write of a killed worker) and a batch
  job's committed ``UPDATE`` (``batch``) count the same way from the moment they returned:
  from then on they are known to be in the system of record.
* A read is **stale** if it returned a version older than the newest version acknowledged
  before the read started (a missing record counts as version 0), or, on a key a batch job
  updated, lacks the batch's marker though it started after the update committed. Its
  **staleness** is the read's start minus the acknowledgement of the oldest write newer than
  what it returned. Start and end are taken just outside the store call, so measurement
  slack only ever hides staleness, never invents it.
* A key written in a **sequential** history (one operation at a time, driven by the test
  across processes, saves and deletes) must read exactly the last acknowledged save, or
  nothing after an acknowledged delete; any other read is a violation (and stale).
* A **lost** write is an acknowledged one the system of record no longer holds at the end:
  the final version is lower, or equal with another value.
* A read is **inconsistent** if its (version, value) pair contradicts the write that made
  that version, or if its version is higher than SQL's final one. Two acknowledged writes
  of one key with the same version are **duplicate versions** (a save was swallowed).
* Errors are counted by type; only kvstore's own error types may appear (a scenario may
  narrow that further). ``Hang`` (a call past the worker's hang guard) is not one.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

SAMPLES = 5
"""Examples of each anomaly kept in the report."""


class HistoryError(Exception):
    """The logs are not a history the checker can judge: a harness bug, not a store bug."""


@dataclass(frozen=True, slots=True)
class Op:
    """One logged operation (or one event of the test)."""

    w: str
    op: str
    key: str
    start: int
    end: int
    version: int | None = None
    marker: str | None = None
    batch: str | None = None
    error: str | None = None
    error_type: str | None = None
    """The error's module and qualified name (``error`` is the bare name)."""
    message: str | None = None
    kvstore: bool = False
    unavailable: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class Final:
    """A key's record in the system of record at the end (``None`` where absent)."""

    version: int
    marker: str | None
    batch: str | None = None


@dataclass
class Report:
    """What one scenario's history showed."""

    scenario: str
    workers: int = 0
    reads: int = 0
    writes: int = 0
    """Acknowledged saves and deletes."""
    failed_ops: int = 0
    stale_reads: int = 0
    worst_staleness_ms: float = 0.0
    lost_writes: int = 0
    duplicate_versions: int = 0
    inconsistent_reads: int = 0
    sequential_violations: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    disallowed_errors: dict[str, int] = field(default_factory=dict)
    feed_lag_ms: float | None = None
    """How long after a batch job's UPDATE every worker read its value for good; ``None``
    without a batch update or if some worker never did (see ``feed_converged``)."""
    feed_converged: bool | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    near_hits: int | None = None
    """Of the cache hits, those answered by the workers' near caches."""
    seconds: float = 0.0
    """How long the history lasted (first start to last end)."""
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def sample(self, kind: str, item: dict[str, Any]) -> None:
        bucket = self.samples.setdefault(kind, [])
        if len(bucket) < SAMPLES:
            bucket.append(item)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:  # short: pytest prints it in every failing frame
        return (
            f"Report({self.scenario!r}, reads={self.reads}, writes={self.writes}, "
            f"stale={self.stale_reads}, worst_ms={self.worst_staleness_ms}, "
            f"lost={self.lost_writes}, errors={self.errors})"
        )


# -- loading -----------------------------------------------------------------------------


def load_ops(
    paths: Iterable[Path], events: Iterable[Mapping[str, Any]] = (), *, killed: Iterable[str] = ()
) -> tuple[list[Op], list[dict[str, Any]]]:
    """The operations in the worker logs at ``paths`` plus the test's ``events``, and the
    workers' ``open`` and ``stats`` records (their stores' counters at start and at the end).
    Only the log of a worker in ``killed`` may end in a cut line."""
    killed = set(killed)
    ops: list[Op] = []
    stats: list[dict[str, Any]] = []
    for path in paths:
        lines = path.read_text("utf-8").splitlines() if path.exists() else []
        for number, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                last = number == len(lines) - 1
                if last and path.stem in killed:
                    continue
                raise HistoryError(f"{path}:{number + 1}: not JSON: {line[:200]!r}") from None
            if record["op"] in ("open", "stats"):
                stats.append(record)
            elif record["op"] in ("read", "write", "delete"):
                ops.append(_op(record))
    ops.extend(_op(event) for event in events if event["op"] in ("observe", "batch"))
    return ops, stats


def _op(record: Mapping[str, Any]) -> Op:
    return Op(
        w=record["w"],
        op=record["op"],
        key=record["key"],
        start=int(record["start"]),
        end=int(record["end"]),
        version=record.get("version"),
        marker=record.get("marker"),
        batch=record.get("batch"),
        error=record.get("error"),
        error_type=record.get("error_type"),
        message=record.get("message"),
        kvstore=bool(record.get("kvstore", False)),
        unavailable=bool(record.get("unavailable", False)),
    )


# -- checking ----------------------------------------------------------------------------


def check(
    scenario: str,
    ops: Sequence[Op],
    final: Mapping[str, Final | None],
    *,
    sequential_keys: Iterable[str] = (),
    allowed_errors: Iterable[str] | None = None,
    origin: int = 0,
    stats: Sequence[Mapping[str, Any]] = (),
) -> Report:
    """Judge one scenario's history. ``final`` holds every key's record in SQL at the end;
    ``allowed_errors`` narrows the kvstore error types that may appear (by name);
    ``origin`` (ns) is when the load started, for the times in the samples."""
    report = Report(scenario, workers=len({op.w for op in ops if op.w != "test"}))
    sequential = set(sequential_keys)
    allowed = None if allowed_errors is None else set(allowed_errors)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    if ops:
        report.seconds = (max(op.end for op in ops) - min(op.start for op in ops)) / 1e9
    _count(report, ops, allowed)
    stale_at: dict[Op, float] = {}
    for key, key_ops in by_key.items():
        if key not in final:
            raise HistoryError(f"no final state read for key {key!r}")
        if key in sequential:
            _check_sequential(report, key, key_ops, final[key], origin, stale_at)
        else:
            _check_concurrent(report, key, key_ops, final[key], origin, stale_at)
    report.stale_reads = len(stale_at)
    report.worst_staleness_ms = round(max(stale_at.values(), default=0.0), 1)
    _feed_lag(report, ops)
    _cache_stats(report, stats)
    return report


def _count(report: Report, ops: Sequence[Op], allowed: set[str] | None) -> None:
    errors: Counter[str] = Counter()
    disallowed: Counter[str] = Counter()
    for op in ops:
        if op.w == "test":
            continue
        if op.ok:
            if op.op == "read":
                report.reads += 1
            else:
                report.writes += 1
            continue
        report.failed_ops += 1
        errors[op.error or "?"] += 1
        if not op.kvstore or (allowed is not None and op.error not in allowed):
            disallowed[op.error_type or op.error or "?"] += 1
            report.sample(
                "disallowed_errors",
                {"by": op.w, "op": op.op, "type": op.error_type, "message": op.message},
            )
    report.errors = dict(errors.most_common())
    report.disallowed_errors = dict(disallowed.most_common())


def _ms(nanoseconds: int) -> float:
    return nanoseconds / 1e6


def _at(op: Op, origin: int) -> float:
    return round((op.start - origin) / 1e9, 3)


def _check_concurrent(
    report: Report,
    key: str,
    ops: Sequence[Op],
    final: Final | None,
    origin: int,
    stale_at: dict[Op, float],
) -> None:
    """Saves and reads only (no deletes): versions order everything."""
    if any(op.op == "delete" for op in ops):
        raise HistoryError(f"deletes of {key!r} in a concurrent history: make it sequential")
    known = sorted(
        (op for op in ops if (op.op == "write" and op.ok) or op.op == "observe"),
        key=lambda op: op.end,
    )
    ends = [op.end for op in known]
    newest: list[int] = []  # newest version known by each ack, in ack order
    for op in known:
        newest.append(max(newest[-1] if newest else 0, op.version or 0))
    makers: dict[int, Op] = {}
    for op in known:
        if op.version is None:
            raise HistoryError(f"{op.w} logged an acknowledged write of {key!r} without version")
        earlier = makers.get(op.version)
        if earlier is None:
            makers[op.version] = op
        elif earlier.marker != op.marker:
            report.duplicate_versions += 1
            report.sample(
                "duplicate_versions",
                {"key": key, "version": op.version, "writes": [earlier.marker, op.marker]},
            )
    batches = [op for op in ops if op.op == "batch"]
    for read in (op for op in ops if op.op == "read" and op.ok):
        got = read.version or 0
        before = bisect.bisect_left(ends, read.start) - 1
        if before >= 0 and newest[before] > got:
            missed = known[bisect.bisect_right(newest, got)]
            _stale(report, stale_at, read, missed, origin)
        for batch in batches:
            if batch.end < read.start and read.batch != batch.batch:
                _stale(report, stale_at, read, batch, origin)
        maker = makers.get(got)
        if read.version is not None and maker is not None and maker.marker != read.marker:
            report.inconsistent_reads += 1
            report.sample(
                "inconsistent_reads",
                {
                    "key": key,
                    "version": got,
                    "read": read.marker,
                    "written": maker.marker,
                    "by": read.w,
                },
            )
        elif read.version is not None and (final is None or got > final.version):
            report.inconsistent_reads += 1
            report.sample(
                "inconsistent_reads",
                {
                    "key": key,
                    "version": got,
                    "by": read.w,
                    "final": None if final is None else final.version,
                },
            )
    top = max(makers, default=0)
    if final is None:
        lost = len(known)
    else:
        lost = sum(1 for version in makers if version > final.version)
        if top and top == final.version and makers[top].marker != final.marker:
            lost += 1
    for batch in batches:
        if final is None or final.batch != batch.batch:
            lost += 1
    if lost:
        report.lost_writes += lost
        report.sample(
            "lost_writes",
            {"key": key, "acknowledged": top, "final": None if final is None else asdict(final)},
        )


def _stale(report: Report, stale_at: dict[Op, float], read: Op, missed: Op, origin: int) -> None:
    staleness = _ms(read.start - missed.end)
    if staleness <= stale_at.get(read, -1.0):
        return
    stale_at[read] = staleness
    worst = report.samples.get("worst_stale_read")
    item = {
        "key": read.key,
        "by": read.w,
        "at_s": _at(read, origin),
        "read": read.version,
        "read_batch": read.batch,
        "missed": {"batch": missed.batch, "delete": "delete"}.get(missed.op, missed.version),
        "missed_by": missed.w,
        "staleness_ms": round(staleness, 1),
    }
    report.sample("stale_reads", item)
    if not worst or worst[0]["staleness_ms"] < item["staleness_ms"]:
        report.samples["worst_stale_read"] = [item]


def _check_sequential(
    report: Report,
    key: str,
    ops: Sequence[Op],
    final: Final | None,
    origin: int,
    stale_at: dict[Op, float],
) -> None:
    """One operation at a time: every read must return the last acknowledged mutation."""
    ordered = sorted(ops, key=lambda op: op.start)
    for earlier, later in itertools.pairwise(ordered):
        if later.start < earlier.end:
            raise HistoryError(f"operations on sequential key {key!r} overlap: {earlier}, {later}")
    expected: Op | None = None  # the last acknowledged save or delete
    known = True  # False after a mutation that failed: its outcome is unknown
    for op in ordered:
        if op.op in ("write", "delete"):
            expected, known = (op, True) if op.ok else (expected, False)
            continue
        if op.op != "read" or not op.ok or not known:
            continue
        want = None if expected is None or expected.op == "delete" else expected
        if want is None and op.version is None:
            continue
        if want is not None and (op.version, op.marker) == (want.version, want.marker):
            continue
        report.sequential_violations += 1
        report.sample(
            "sequential_violations",
            {
                "key": key,
                "by": op.w,
                "at_s": _at(op, origin),
                "read": op.version,
                "read_marker": op.marker,
                "after": None if expected is None else expected.op,
                "expected": None if want is None else want.version,
                "mutated_by": None if expected is None else expected.w,
            },
        )
        if expected is not None:
            _stale(report, stale_at, op, expected, origin)
    if expected is None or not known:
        return
    if expected.op == "delete" and final is not None:
        report.lost_writes += 1
        report.sample("lost_writes", {"key": key, "acknowledged": "delete", "final": asdict(final)})
    elif expected.op == "write" and (
        final is None or (final.version, final.marker) != (expected.version, expected.marker)
    ):
        report.lost_writes += 1
        report.sample(
            "lost_writes",
            {
                "key": key,
                "acknowledged": expected.version,
                "final": None if final is None else asdict(final),
            },
        )


def _feed_lag(report: Report, ops: Sequence[Op]) -> None:
    """For each batch update: how long after its commit a read could still start and return
    the old value (the start of the last such read; 0 if none), provided every worker's
    reads show the new value for good in the end."""
    for batch in (op for op in ops if op.op == "batch"):
        lag = 0.0
        converged = True
        readers: dict[str, list[Op]] = defaultdict(list)
        for op in ops:
            if op.op == "read" and op.ok and op.key == batch.key and op.start > batch.end:
                readers[op.w].append(op)
        if not readers:
            raise HistoryError(f"nobody read {batch.key!r} after the batch update")
        for reads in readers.values():
            reads.sort(key=lambda op: op.start)
            behind = [i for i, op in enumerate(reads) if op.batch != batch.batch]
            first_good = behind[-1] + 1 if behind else 0
            if first_good == len(reads):
                converged = False
                continue
            if behind:
                lag = max(lag, _ms(reads[behind[-1]].start - batch.end))
        report.feed_converged = converged
        report.feed_lag_ms = round(lag, 1) if converged else None
        window = max(op.start for reads in readers.values() for op in reads) - batch.end
        if not converged:
            report.notes.append(
                f"batch update not read by every worker within {_ms(window):.0f} ms"
            )


def _cache_stats(report: Report, records: Sequence[Mapping[str, Any]]) -> None:
    """Sum the workers' final cache counters; note a circuit breaker that was not closed
    when a worker opened its store or at its end (its cache was bypassed meanwhile)."""
    for record in records:
        warmup = record.get("warmup")
        if isinstance(warmup, dict):
            report.notes.append(
                f"{record['w']}: cache breaker {warmup.get('breaker')} after start-up; "
                f"{'closed' if warmup.get('closed') else 'still not closed'} after "
                f"{warmup.get('seconds')} s of warm-up reads, before the load"
            )
        stats = record.get("stats")
        if isinstance(stats, dict) and stats.get("breaker", "closed") != "closed":
            when = "at start" if record["op"] == "open" else "at the end"
            report.notes.append(f"{record['w']}: cache breaker {stats['breaker']} {when}")
    final = [r for r in records if r["op"] == "stats"]
    hits = [s["stats"].get("hits") for s in final if isinstance(s.get("stats"), dict)]
    misses = [s["stats"].get("misses") for s in final if isinstance(s.get("stats"), dict)]
    if hits and all(isinstance(h, int) for h in hits):
        report.cache_hits = sum(hits)
    if misses and all(isinstance(m, int) for m in misses):
        report.cache_misses = sum(misses)
    near = [s["stats"].get("near_hits") for s in final if isinstance(s.get("stats"), dict)]
    if near and all(isinstance(n, int) for n in near):
        report.near_hits = sum(near)


# -- output ------------------------------------------------------------------------------

COLUMNS = (
    ("scenario", 27),
    ("reads", 7),
    ("writes", 7),
    ("stale", 6),
    ("worst ms", 9),
    ("lost", 5),
    ("dup/inc", 8),
    ("seq", 4),
    ("feed lag ms", 12),
    ("hits/miss", 12),
    ("errors", 0),
)


def table(reports: Iterable[Report]) -> str:
    """The reports as a fixed-width table, one row each."""
    header = " ".join(name.ljust(width) for name, width in COLUMNS).rstrip()
    rows = [header, "-" * len(header)]
    for r in reports:
        if r.feed_converged is None:
            lag = "-"
        else:
            lag = f"{r.feed_lag_ms:.0f}" if r.feed_converged else "never"
        hits = "-" if r.cache_hits is None else f"{r.cache_hits}/{r.cache_misses}"
        errors = ", ".join(f"{name} {count}" for name, count in r.errors.items()) or "-"
        if r.disallowed_errors:
            errors += "  DISALLOWED: " + ", ".join(r.disallowed_errors)
        cells = (
            r.scenario,
            r.reads,
            r.writes,
            r.stale_reads,
            f"{r.worst_staleness_ms:.0f}",
            r.lost_writes,
            f"{r.duplicate_versions}/{r.inconsistent_reads}",
            r.sequential_violations,
            lag,
            hits,
            errors,
        )
        rows.append(
            " ".join(str(c).ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)).rstrip()
        )
    return "\n".join(rows)


def details(report: Report) -> str:
    """The notes and anomaly samples of a report, a line each."""
    lines = [f"  note: {note}" for note in report.notes]
    for kind, items in report.samples.items():
        lines.extend(f"  {kind}: {json.dumps(item)}" for item in items)
    return "\n".join(lines)


def write_json(path: Path, report: Report) -> None:
    """Merge ``report`` into the JSON object at ``path`` (scenario name -> report)."""
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError:
            data = {}
    data[report.scenario] = report.as_json()
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True), "utf-8")
    partial.replace(path)
