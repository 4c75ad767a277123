"""Scale curves on PostgreSQL, plain table and hash-partitioned side by side: get and save
latency, the change feed's poll and per-user listing cost as the table grows, and the
in-place conversion of a populated table.

    python -m benchmarks.scale                                   # 10k, 100k, 1M; plain, 16
    python -m benchmarks.scale --sizes 100000 --partitions 0,4,16,64
    python -m benchmarks.scale --sizes 10000,100000 --plot scale.png
    python -m benchmarks.scale --sizes 10000000 --convert 0 --transfer --import-records 1000000

Every size and partition count (0: a plain ``kv_records``) gets a throwaway PostgreSQL
database (dropped after it is measured), created with its partitions from the start, so
the fill goes straight into them. Records are ~1.3 KB session states, each carrying its own
key's ids (so that an import validates them), written with the bulk ``restore`` path; each
database is ``VACUUM ANALYZE``d and checkpointed before it is measured, and again once the
listing's users are written. Latencies are sequential (one task), so they show the store's
own cost, not queueing: get and save of a random record; the change feed's catch-up read
(``read_changes(head - 1000, 1000)``) and idle poll (``read_changes(head, 1000)``), where
partitions turn ``ORDER BY revision`` into a merge over them; one user's listing with 10
to 10,000 records. Last, a plain table of the largest size is converted in place
(``backends.sql.migrate.partition``, ``kvstore db partition``) and timed. The load average
is taken before each measurement. The PNG needs matplotlib (``pip install -e '.[bench]'``).

With ``--transfer``, each database is then exported and imported through
:mod:`kvstore.transfer`, the functions ``kvstore export --namespace state -o FILE.jsonl.gz``
and ``kvstore import FILE.jsonl.gz`` run (without their progress bar): every session record
is streamed to a gzip JSON Lines file in ``--transfer-dir``, the filled database is
dropped, and the file's first ``--import-records`` lines (default: all) are imported, at
the command's batch size of 500, into a new empty database of the same layout. The file is
deleted afterwards. Every run also reports the size of ``kv_records`` (table, indexes and
TOAST, all partitions) after the fill, and the process's peak RSS (``ru_maxrss``) after
each phase: a peak only grows, so a phase's figure is the most the process held up to
its end, earlier layouts included, and the RSS at that moment is shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import resource
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from backends.base import Entry
from backends.sql import SQLBackend, build_sql_backend
from backends.sql.migrate import partition
from benchmarks.common import session_record
from kvstore.keys import Key
from kvstore.models.base import METADATA_FIELDS
from kvstore.transfer import export_lines, import_lines, open_text
from serializers import JSONSerializer
from tests.postgres import create_database, drop_database, unique_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from kvstore.options import SQLOptions

LISTING_SIZES = (10, 100, 1_000, 10_000)
FEED_BATCH = 1000
"""How many changes a catch-up read asks for (and how far behind the head it starts)."""
CONVERT_PARTITIONS = 16
IMPORT_BATCH = 500
"""Records a statement of the import: ``kvstore import``'s default ``--batch-size``."""
USER_SLOT = b'"USER_ID_SLOT"'
SESSION_SLOT = b'"SESSION_ID_SLOT"'
PAGE = os.sysconf("SC_PAGE_SIZE")
PHASES = ("fill", "measurements", "export", "import")

Load = tuple[float, float, float]
Percentiles = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Run:
    """What one size and partition count measured (latencies in µs, listing in s)."""

    load: Load
    fill_rate: float
    """Records a second of the bulk fill."""
    get: Percentiles
    save: Percentiles
    catch_up: Percentiles
    idle_poll: Percentiles
    listing: list[tuple[int, float, float]]
    table_bytes: int
    """``kv_records`` on disk after the fill: table, indexes and TOAST of every partition."""
    memory: dict[str, tuple[float, float]]
    """Per phase that ran: (peak RSS of the process so far, RSS at the phase's end), MiB."""
    transfer: Transfer | None


@dataclass(frozen=True, slots=True)
class Transfer:
    """Export of every session record to gzip JSON Lines, import of a slice of the file."""

    exported: int
    export_seconds: float
    file_bytes: int
    imported: int
    import_seconds: float


@dataclass(frozen=True, slots=True)
class Conversion:
    """The in-place conversion of a plain table into ``partitions`` partitions."""

    load: Load
    records: int
    partitions: int
    seconds: float


def _percentiles(samples: list[float]) -> Percentiles:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


def _key(n: int) -> Key:
    return Key("state", (f"user-{n // 4}", f"session-{n % 4}"))


def _template() -> bytes:
    """The stored JSON of the benchmark's session record, its ids left as slots."""
    record = session_record(USER_SLOT.decode().strip('"'), SESSION_SLOT.decode().strip('"'))
    return JSONSerializer().dumps(record, exclude=METADATA_FIELDS)


def _value(template: bytes, n: int) -> bytes:
    """Record ``n``'s stored JSON: the template with the ids of :func:`_key` ``(n)``."""
    return template.replace(USER_SLOT, b'"user-%d"' % (n // 4)).replace(
        SESSION_SLOT, b'"session-%d"' % (n % 4)
    )


def _memory() -> tuple[float, float]:
    """The process's peak RSS so far (``ru_maxrss``) and its RSS now, MiB."""
    with Path("/proc/self/statm").open() as statm:
        now = int(statm.read().split()[1]) * PAGE / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, now


async def _fill(backend: SQLBackend, size: int, template: bytes) -> None:
    now = datetime.now(UTC)
    chunk = 5000
    for first in range(0, size, chunk):
        items = [
            (_key(n), Entry(_value(template, n), 1, now, now))
            for n in range(first, min(first + chunk, size))
        ]
        await backend.restore(items)


async def _table_bytes(url: str) -> int:
    """``kv_records`` on disk: every partition's (or the plain table's) table, indexes and
    TOAST."""
    connection = await asyncpg.connect(url)
    try:
        size: int = await connection.fetchval(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
            "FROM pg_partition_tree('kv_records')), pg_total_relation_size('kv_records'))::bigint"
        )
    finally:
        await connection.close()
    return size


async def _vacuum_analyze(url: str) -> None:
    """``VACUUM ANALYZE``, then a checkpoint (where the role may), so that the fill's dirty
    pages are not written out during the next measurement."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("VACUUM ANALYZE kv_records")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def _latencies(
    backend: SQLBackend, size: int, template: bytes, seconds: float
) -> tuple[Percentiles, Percentiles]:
    """A save writes the record's own value, so that an export afterwards still imports."""
    found: list[Percentiles] = []
    for operation in ("get", "save"):
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            n = random.randrange(size)
            key, value = _key(n), _value(template, n)
            start = time.perf_counter()
            if operation == "get":
                await backend.get(key)
            else:
                await backend.put(key, value)
            samples.append(time.perf_counter() - start)
        found.append(_percentiles(samples))
    return found[0], found[1]


async def _feed(backend: SQLBackend, seconds: float) -> tuple[Percentiles, Percentiles]:
    """The catch-up read (the last ``FEED_BATCH`` changes) and the idle poll (none)."""
    head, _ = await backend.head()
    found: list[Percentiles] = []
    for after in (max(head - FEED_BATCH, 0), head):
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await backend.read_changes(after, FEED_BATCH)
            samples.append(time.perf_counter() - start)
        found.append(_percentiles(samples))
    return found[0], found[1]


async def _listing(backend: SQLBackend, url: str, value: bytes) -> list[tuple[int, float, float]]:
    """The users are written first and analyzed: without it, a partition's statistics say
    the namespace is absent, its planner sorts the user's rows instead of walking the
    primary key (10,000 records: 8x slower), and a plain table's may not."""
    now = datetime.now(UTC)
    for count in LISTING_SIZES:
        await backend.restore(
            [
                (
                    Key("identity", (f"listing-{count}", f"identity-{n:06d}")),
                    Entry(value, 1, now, now),
                )
                for n in range(count)
            ]
        )
    await _vacuum_analyze(url)
    results = []
    for count in LISTING_SIZES:
        owner = f"listing-{count}"
        first_page: list[float] = []
        whole: list[float] = []
        for _ in range(5):
            start = time.perf_counter()
            await backend.list("identity", (owner,), limit=100)
            first_page.append(time.perf_counter() - start)
            start = time.perf_counter()
            after: tuple[str, ...] | None = None
            while True:
                page = await backend.list("identity", (owner,), after=after, limit=500)
                if len(page) < 500:
                    break
                after = page[-1][0].components
            whole.append(time.perf_counter() - start)
        results.append((count, statistics.median(first_page), statistics.median(whole)))
    return results


def _options(partitions: int) -> SQLOptions | None:
    return {"partitions": partitions} if partitions else None


async def _filled(
    size: int, partitions: int, template: bytes
) -> tuple[str, str, SQLBackend, float]:
    """A new database holding ``size`` records, vacuumed and analyzed: its name, URL, an
    initialized backend on it and the seconds the fill took."""
    name = unique_name("scale")
    url = await create_database(name)
    backend = build_sql_backend(url, _options(partitions))
    try:
        await backend.initialize()
        started = time.perf_counter()
        await _fill(backend, size, template)
        elapsed = time.perf_counter() - started
        await _vacuum_analyze(url)
    except BaseException:
        await backend.close()
        await drop_database(name)
        raise
    return name, url, backend, elapsed


def _load() -> Load:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def _show_load(load: Load) -> str:
    return " / ".join(f"{average:.2f}" for average in load)


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """Where the export file goes and how many of its records are imported (None: all)."""

    directory: Path
    records: int | None


async def _export(backend: SQLBackend, path: Path) -> tuple[int, float]:
    """``kvstore export --namespace state -o path``: the records written and the seconds."""
    started = time.perf_counter()
    count = 0
    with open_text(path, "wb") as sink:
        async for line in export_lines(backend, namespace="state"):
            sink.write(line)
            count += 1
    return count, time.perf_counter() - started


async def _import(path: Path, partitions: int, records: int) -> float:
    """``kvstore import path`` of the file's first ``records`` lines into a new empty
    database of the layout ``partitions`` (dropped afterwards): the seconds it took."""
    name = unique_name("scale_import")
    url = await create_database(name)
    backend = build_sql_backend(url, _options(partitions))
    try:
        await backend.initialize()
        with open_text(path, "rb") as lines:
            started = time.perf_counter()
            report = await import_lines(
                backend, itertools.islice(lines, records), batch_size=IMPORT_BATCH
            )
            seconds = time.perf_counter() - started
    finally:
        await backend.close()
        await drop_database(name)
    if report.written != records or report.rejected:
        raise RuntimeError(
            f"import wrote {report.written:,} of {records:,}; {len(report.rejected):,} "
            f"rejected, the first: {report.rejected[:1]}"
        )
    return seconds


async def _measure(
    size: int, partitions: int, template: bytes, seconds: float, plan: TransferPlan | None
) -> Run:
    memory: dict[str, tuple[float, float]] = {}
    name, url, backend, fill_seconds = await _filled(size, partitions, template)
    memory["fill"] = _memory()
    path = None if plan is None else plan.directory / f"{name}.jsonl.gz"
    exported: tuple[int, float] | None = None
    transfer = None
    try:
        try:
            table_bytes = await _table_bytes(url)
            load = _load()
            print(
                f"{_label(partitions)}: filled {size:,} records in {fill_seconds:.0f} s "
                f"({table_bytes / 2**30:.2f} GiB); load average {_show_load(load)}",
                flush=True,
            )
            get, save = await _latencies(backend, size, template, seconds)
            catch_up, idle_poll = await _feed(backend, seconds)
            listing = await _listing(backend, url, _value(template, 0))
            memory["measurements"] = _memory()
            if path is not None:
                print(f"{_label(partitions)}: exporting; load average {_show_load(_load())}")
                exported = await _export(backend, path)
                memory["export"] = _memory()
        finally:
            await backend.close()
            await drop_database(name)
        if plan is not None and path is not None and exported is not None:
            count, export_seconds = exported
            records = count if plan.records is None else min(plan.records, count)
            print(
                f"{_label(partitions)}: exported {count:,} records in {export_seconds:.0f} s; "
                f"importing {records:,}; load average {_show_load(_load())}",
                flush=True,
            )
            file_bytes = path.stat().st_size
            import_seconds = await _import(path, partitions, records)
            memory["import"] = _memory()
            transfer = Transfer(count, export_seconds, file_bytes, records, import_seconds)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    return Run(
        load,
        size / fill_seconds,
        get,
        save,
        catch_up,
        idle_poll,
        listing,
        table_bytes,
        memory,
        transfer,
    )


async def _convert(size: int, partitions: int, template: bytes) -> Conversion:
    name, url, backend, _ = await _filled(size, 0, template)
    try:
        await backend.close()
        load = _load()
        started = time.perf_counter()
        copied = await partition(url, partitions)
        seconds = time.perf_counter() - started
    finally:
        await drop_database(name)
    assert copied == size, copied
    print(f"converted {size:,} records into {partitions} partitions in {seconds:.0f} s")
    return Conversion(load, size, partitions, seconds)


def _label(partitions: int) -> str:
    return f"{partitions} partitions" if partitions else "plain"


def _table(
    title: str,
    runs: dict[tuple[int, int], Run],
    sizes: list[int],
    counts: list[int],
    cell: Callable[[Run], str],
) -> None:
    print(f"\n### {title}\n")
    print("| records stored | " + " | ".join(_label(count) for count in counts) + " |")
    print("|---:|" + "---:|" * len(counts))
    for size in sizes:
        cells = " | ".join(cell(runs[size, count]) for count in counts)
        print(f"| {size:,} | {cells} |")


def _listing_table(
    title: str,
    runs: dict[tuple[int, int], Run],
    sizes: list[int],
    counts: list[int],
    column: int,
) -> None:
    print(f"\n### {title}\n")
    print(
        "| records stored | records of the user | "
        + " | ".join(_label(count) for count in counts)
        + " |"
    )
    print("|---:|---:|" + "---:|" * len(counts))
    for size in sizes:
        for row, count in enumerate(LISTING_SIZES):
            cells = " | ".join(
                f"{runs[size, partitions].listing[row][column] * 1e3:.2f}" for partitions in counts
            )
            print(f"| {size:,} | {count:,} | {cells} |")


def _transfer_tables(runs: dict[tuple[int, int], Run], sizes: list[int], counts: list[int]) -> None:
    def transfer(run: Run) -> Transfer:
        assert run.transfer is not None
        return run.transfer

    _table(
        "Export (kvstore export --namespace state, gzip JSON Lines), records/s",
        runs,
        sizes,
        counts,
        lambda r: f"{transfer(r).exported / transfer(r).export_seconds:,.0f}",
    )
    _table(
        "Export file (gzip), MiB",
        runs,
        sizes,
        counts,
        lambda r: f"{transfer(r).file_bytes / 2**20:,.1f}",
    )
    _table(
        f"Import (kvstore import, batches of {IMPORT_BATCH}) into a new empty database of the "
        "same layout, records/s (records imported)",
        runs,
        sizes,
        counts,
        lambda r: (
            f"{transfer(r).imported / transfer(r).import_seconds:,.0f} ({transfer(r).imported:,})"
        ),
    )


def _p50_p99(percentiles: Percentiles) -> str:
    return f"{percentiles[0]:,.0f} / {percentiles[1]:,.0f}"


async def run(
    sizes: list[int],
    counts: list[int],
    seconds: float,
    convert: int,
    plot: Path | None,
    transfer: TransferPlan | None = None,
) -> None:
    """Measure every size and partition count, print the tables, and save the plot."""
    print(shlex.join(sys.orig_argv))
    print(f"{os.cpu_count()} CPUs; load averages are 1 / 5 / 15 minutes\n", flush=True)
    started = time.perf_counter()
    template = _template()
    sizes = sorted(sizes)
    runs: dict[tuple[int, int], Run] = {}
    for size in sizes:
        for count in counts:
            runs[size, count] = await _measure(size, count, template, seconds, transfer)
    conversion = await _convert(sizes[-1], convert, template) if convert else None

    _table(
        "Load average before measuring (1 / 5 / 15 min)",
        runs,
        sizes,
        counts,
        lambda r: _show_load(r.load),
    )
    _table(
        "Fill with bulk restore (5,000 records a statement), records/s",
        runs,
        sizes,
        counts,
        lambda r: f"{r.fill_rate:,.0f}",
    )
    _table("get, p50 / p99 µs (one task)", runs, sizes, counts, lambda r: _p50_p99(r.get))
    _table("save, p50 / p99 µs (one task)", runs, sizes, counts, lambda r: _p50_p99(r.save))
    _table(
        f"Change feed catch-up: read_changes(head - {FEED_BATCH:,}, {FEED_BATCH:,}), p50 / p99 µs",
        runs,
        sizes,
        counts,
        lambda r: _p50_p99(r.catch_up),
    )
    _table(
        f"Change feed idle poll: read_changes(head, {FEED_BATCH:,}), p50 / p99 µs",
        runs,
        sizes,
        counts,
        lambda r: _p50_p99(r.idle_poll),
    )
    _listing_table(
        "Listing one user's records: first page of 100, ms (median of 5)", runs, sizes, counts, 1
    )
    _listing_table(
        "Listing one user's records: all of them (pages of 500), ms (median of 5)",
        runs,
        sizes,
        counts,
        2,
    )
    _table(
        "kv_records on disk after the fill (table, indexes, TOAST; all partitions), MiB",
        runs,
        sizes,
        counts,
        lambda r: f"{r.table_bytes / 2**20:,.0f}",
    )
    if transfer is not None:
        _transfer_tables(runs, sizes, counts)
    _table(
        "Peak RSS of the process (ru_maxrss) after each phase, MiB: "
        + " / ".join(phase for phase in PHASES if transfer is not None or phase in PHASES[:2]),
        runs,
        sizes,
        counts,
        lambda r: " / ".join(f"{peak:,.0f}" for peak, _ in r.memory.values()),
    )
    _table(
        "RSS of the process at the end of each phase, MiB (same phases)",
        runs,
        sizes,
        counts,
        lambda r: " / ".join(f"{now:,.0f}" for _, now in r.memory.values()),
    )
    if conversion is not None:
        print("\n### In-place conversion of a plain table (migrate.partition)\n")
        print("| records | partitions | load average before | seconds | records/s |")
        print("|---:|---:|---:|---:|---:|")
        print(
            f"| {conversion.records:,} | {conversion.partitions} | "
            f"{_show_load(conversion.load)} | {conversion.seconds:.1f} | "
            f"{conversion.records / conversion.seconds:,.0f} |"
        )
    print(f"\ntotal: {time.perf_counter() - started:.0f} s")
    if plot is not None:
        _plot(plot, runs, sizes, counts)
        print(f"\nplot: {plot}")


def _plot(
    path: Path, runs: dict[tuple[int, int], Run], sizes: list[int], counts: list[int]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, count in enumerate(counts):
        for operation, style in (("get", "-"), ("save", "--")):
            p50s = [getattr(runs[size, count], operation)[0] for size in sizes]
            left.plot(
                sizes,
                p50s,
                style,
                color=f"C{index}",
                marker="o",
                label=f"{operation}, {_label(count)}",
            )
    left.set_xscale("log")
    left.set_xlabel("records stored")
    left.set_ylabel("p50 latency (µs)")
    left.set_ylim(bottom=0)
    left.set_title("get / save vs table size (PostgreSQL)")
    left.legend()
    for index, count in enumerate(counts):
        listing = runs[sizes[-1], count].listing
        users = [row[0] for row in listing]
        for column, style, what in ((1, "-", "first page (100)"), (2, "--", "all")):
            right.plot(
                users,
                [row[column] * 1e3 for row in listing],
                style,
                color=f"C{index}",
                marker="o",
                label=f"{what}, {_label(count)}",
            )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("records of one user")
    right.set_ylabel("ms")
    right.set_title(f"per-user listing, {sizes[-1]:,} records stored")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def _counts(text: str) -> list[int]:
    counts = [int(count) for count in text.split(",")]
    if len(set(counts)) != len(counts) or any(count < 0 or count == 1 for count in counts):
        raise argparse.ArgumentTypeError("partition counts: 0 (a plain table) or 2 and up, once")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument(
        "--partitions",
        type=_counts,
        default="0,16",
        help="partition counts to compare, 0 for a plain table (default: 0,16)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="per operation and size")
    parser.add_argument(
        "--convert",
        type=int,
        default=CONVERT_PARTITIONS,
        help="time converting a plain table of the largest size into this many partitions "
        f"(default: {CONVERT_PARTITIONS}; 0 skips it)",
    )
    parser.add_argument("--plot", type=Path, default=None, help="save a PNG here")
    parser.add_argument(
        "--transfer",
        action="store_true",
        help="also export every database and import the file into an empty one (slow)",
    )
    parser.add_argument(
        "--transfer-dir",
        type=Path,
        default=Path("/var/tmp"),
        help="where the export file is written, then deleted (default: /var/tmp)",
    )
    parser.add_argument(
        "--import-records",
        type=int,
        default=None,
        help="import only the export file's first N records (default: all of them)",
    )
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    if arguments.import_records is not None and arguments.import_records < 1:
        parser.error("--import-records must be positive")
    plan = (
        TransferPlan(arguments.transfer_dir, arguments.import_records)
        if arguments.transfer
        else None
    )
    asyncio.run(
        run(
            sizes,
            arguments.partitions,
            arguments.seconds,
            arguments.convert,
            arguments.plot,
            plan,
        )
    )


if __name__ == "__main__":
    main()
