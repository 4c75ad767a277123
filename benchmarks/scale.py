"""Scale curves on PostgreSQL, plain table and hash-partitioned side by side: get and save
latency, the change feed's poll and per-user listing cost as the table grows, and the
in-place conversion of a populated table.

    python -m benchmarks.scale                                   # 10k, 100k, 1M; plain, 16
    python -m benchmarks.scale --sizes 100000 --partitions 0,4,16,64
    python -m benchmarks.scale --sizes 10000,100000 --plot scale.png

Every size and partition count (0: a plain ``kv_records``) gets a throwaway PostgreSQL
database (dropped after it is measured), created with its partitions from the start, so
the fill goes straight into them. Records are ~1.3 KB session states written with the bulk
``restore`` path; each database is ``VACUUM ANALYZE``d and checkpointed before it is
measured, and again once the listing's users are written. Latencies are sequential (one
task), so they show the store's own cost, not queueing: get and save of a random record;
the change feed's catch-up read (``read_changes(head - 1000, 1000)``) and idle poll
(``read_changes(head, 1000)``), where partitions turn ``ORDER BY revision`` into a merge
over them; one user's listing with 10 to 10,000 records. Last, a plain table of the
largest size is converted in place (``backends.sql.migrate.partition``, ``kvstore db
partition``) and timed. The load average is taken before each measurement. The PNG needs
matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
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
from serializers import JSONSerializer
from tests.postgres import create_database, drop_database, unique_name

if TYPE_CHECKING:
    from collections.abc import Callable

    from kvstore.options import SQLOptions

LISTING_SIZES = (10, 100, 1_000, 10_000)
FEED_BATCH = 1000
"""How many changes a catch-up read asks for (and how far behind the head it starts)."""
CONVERT_PARTITIONS = 16

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


async def _fill(backend: SQLBackend, size: int, value: bytes) -> None:
    now = datetime.now(UTC)
    chunk = 5000
    for first in range(0, size, chunk):
        items = [
            (_key(n), Entry(value, 1, now, now)) for n in range(first, min(first + chunk, size))
        ]
        await backend.restore(items)


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
    backend: SQLBackend, size: int, value: bytes, seconds: float
) -> tuple[Percentiles, Percentiles]:
    found: list[Percentiles] = []
    for operation in ("get", "save"):
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            key = _key(random.randrange(size))
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


async def _filled(size: int, partitions: int, value: bytes) -> tuple[str, str, SQLBackend, float]:
    """A new database holding ``size`` records, vacuumed and analyzed: its name, URL, an
    initialized backend on it and the seconds the fill took."""
    name = unique_name("scale")
    url = await create_database(name)
    backend = build_sql_backend(url, _options(partitions))
    try:
        await backend.initialize()
        started = time.perf_counter()
        await _fill(backend, size, value)
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


async def _measure(size: int, partitions: int, value: bytes, seconds: float) -> Run:
    name, url, backend, fill_seconds = await _filled(size, partitions, value)
    try:
        load = _load()
        print(
            f"{_label(partitions)}: filled {size:,} records in {fill_seconds:.0f} s; "
            f"load average {_show_load(load)}",
            flush=True,
        )
        get, save = await _latencies(backend, size, value, seconds)
        catch_up, idle_poll = await _feed(backend, seconds)
        listing = await _listing(backend, url, value)
    finally:
        await backend.close()
        await drop_database(name)
    return Run(load, size / fill_seconds, get, save, catch_up, idle_poll, listing)


async def _convert(size: int, partitions: int, value: bytes) -> Conversion:
    name, url, backend, _ = await _filled(size, 0, value)
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


def _p50_p99(percentiles: Percentiles) -> str:
    return f"{percentiles[0]:,.0f} / {percentiles[1]:,.0f}"


async def run(
    sizes: list[int], counts: list[int], seconds: float, convert: int, plot: Path | None
) -> None:
    print(shlex.join(sys.orig_argv))
    print(f"{os.cpu_count()} CPUs; load averages are 1 / 5 / 15 minutes\n", flush=True)
    started = time.perf_counter()
    value = JSONSerializer().dumps(session_record(), exclude=METADATA_FIELDS)
    sizes = sorted(sizes)
    runs: dict[tuple[int, int], Run] = {}
    for size in sizes:
        for count in counts:
            runs[size, count] = await _measure(size, count, value, seconds)
    conversion = await _convert(sizes[-1], convert, value) if convert else None

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
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    asyncio.run(
        run(sizes, arguments.partitions, arguments.seconds, arguments.convert, arguments.plot)
    )


if __name__ == "__main__":
    main()
