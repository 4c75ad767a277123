"""Scale curves on PostgreSQL: get and save latency as the table grows, and per-user listing
cost as one user's record count grows.

    python -m benchmarks.scale                                   # 10k, 100k, 1M records
    python -m benchmarks.scale --sizes 10000,100000 --plot scale.png

Runs in a throwaway PostgreSQL database (dropped at the end). Records are ~1.3 KB session
states written with the bulk ``restore`` path; each size is ``ANALYZE``d before it is
measured. Latencies are sequential (one task), so they show the store's own cost, not
queueing. The PNG needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from backends.base import Entry
from backends.sql import SQLBackend, build_sql_backend
from benchmarks.common import session_record
from kvstore.keys import Key
from kvstore.models.base import METADATA_FIELDS
from serializers import JSONSerializer
from tests.postgres import create_database, drop_database, unique_name

LISTING_SIZES = (10, 100, 1_000, 10_000)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


async def _fill(backend: SQLBackend, start: int, stop: int, value: bytes) -> None:
    now = datetime.now(UTC)
    chunk = 5000
    for first in range(start, stop, chunk):
        items = [
            (Key("state", (f"user-{n // 4}", f"session-{n % 4}")), Entry(value, 1, now, now))
            for n in range(first, min(first + chunk, stop))
        ]
        await backend.restore(items)


async def _latencies(backend: SQLBackend, size: int, value: bytes, seconds: float) -> list[str]:
    rows = []
    for operation in ("get", "save"):
        samples: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            n = random.randrange(size)
            key = Key("state", (f"user-{n // 4}", f"session-{n % 4}"))
            start = time.perf_counter()
            if operation == "get":
                await backend.get(key)
            else:
                await backend.put(key, value)
            samples.append(time.perf_counter() - start)
        p50, p99 = _percentiles(samples)
        rows.append(f"| {size:,} | {operation} | {p50:,.0f} | {p99:,.0f} |")
    return rows


async def _listing(backend: SQLBackend, value: bytes) -> list[tuple[int, float, float]]:
    now = datetime.now(UTC)
    results = []
    for count in LISTING_SIZES:
        owner = f"listing-{count}"
        await backend.restore(
            [
                (Key("identity", (owner, f"identity-{n:06d}")), Entry(value, 1, now, now))
                for n in range(count)
            ]
        )
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


async def run(sizes: list[int], seconds: float, plot: Path | None) -> None:
    name = unique_name("scale")
    url = await create_database(name)
    backend = build_sql_backend(url)
    value = JSONSerializer().dumps(session_record(), exclude=METADATA_FIELDS)
    try:
        await backend.initialize()
        latency_rows = ["| records stored | operation | p50 µs | p99 µs |", "|---:|---|---:|---:|"]
        curve: dict[str, list[tuple[int, float]]] = {"get": [], "save": []}
        stored = 0
        for size in sorted(sizes):
            started = time.perf_counter()
            await _fill(backend, stored, size, value)
            stored = size
            connection = await asyncpg.connect(url)
            try:
                await connection.execute("VACUUM ANALYZE kv_records")
            finally:
                await connection.close()
            print(f"filled {size:,} records in {time.perf_counter() - started:.0f} s")
            rows = await _latencies(backend, size, value, seconds)
            latency_rows += rows
            for row in rows:
                cells = [cell.strip() for cell in row.strip("|").split("|")]
                curve[cells[1]].append((size, float(cells[2].replace(",", ""))))
        listing = await _listing(backend, value)
        print("\n### Get and save latency as the table grows (PostgreSQL, one task)\n")
        print("\n".join(latency_rows))
        print("\n### Listing one user's records (PostgreSQL)\n")
        print("| records of the user | first page of 100, ms | all records, ms |")
        print("|---:|---:|---:|")
        for count, first, whole in listing:
            print(f"| {count:,} | {first * 1e3:.2f} | {whole * 1e3:.1f} |")
        if plot is not None:
            _plot(plot, curve, listing)
            print(f"\nplot: {plot}")
    finally:
        await backend.close()
        await drop_database(name)


def _plot(
    path: Path,
    curve: dict[str, list[tuple[int, float]]],
    listing: list[tuple[int, float, float]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for operation, points in curve.items():
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=operation)
    left.set_xscale("log")
    left.set_xlabel("records stored")
    left.set_ylabel("p50 latency (µs)")
    left.set_ylim(bottom=0)
    left.set_title("get / save vs table size (PostgreSQL)")
    left.legend()
    counts = [row[0] for row in listing]
    right.plot(counts, [row[1] * 1e3 for row in listing], marker="o", label="first page (100)")
    right.plot(counts, [row[2] * 1e3 for row in listing], marker="o", label="all records")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("records of one user")
    right.set_ylabel("ms")
    right.set_title("per-user listing")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=float, default=2.0, help="per operation and size")
    parser.add_argument("--plot", type=Path, default=None, help="save a PNG here")
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    asyncio.run(run(sizes, arguments.seconds, arguments.plot))


if __name__ == "__main__":
    main()
