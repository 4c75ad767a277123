"""The tiered store on a Redis Cluster while the cluster changes under load: slots
resharded between masters, then a master killed and its replica promoted.

    python -m benchmarks.cluster_change [--seconds 3] [--slots 2000] [--tasks 16]

Starts its own cluster (three masters with a replica each, on free ports) and a throwaway
PostgreSQL database; the scenario is ``tests/cluster_change.py`` (which
``tests/test_cluster_change.py`` asserts on). Prints, per phase, the operations (a save
with its version check, then a read of it back), their latency, errors, stale reads and
how the cache served, and the writes lost at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import throwaway_database
from kvstore import DatabaseType, create_database
from tests.cluster_change import PHASES, Report, run_under_change
from tests.redis_servers import RedisClusterServers

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run(seconds: float, slots: int, tasks: int) -> Report:
    directory = Path(tempfile.mkdtemp(prefix="kvstore-cluster-change-"))
    cluster = RedisClusterServers(directory, replicas=1)
    try:
        cluster.start()
        async with throwaway_database(ADMIN_URL, "cluster_change") as url:
            db = create_database(DatabaseType.TIERED, url, cache_url=cluster.url)
            truth = create_database(DatabaseType.SQL, url)
            async with db, truth:
                return await run_under_change(
                    db, truth, cluster, quiet=seconds, slots=slots, tasks=tasks
                )
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


def print_report(report: Report, command: str) -> None:
    print(f"`{command}`, load average {os.getloadavg()[0]:.2f} after the run\n")
    print(
        "| phase | seconds | operations | ops/s | p50 ms | p99 ms | max ms | errors "
        "| stale reads | reads the cache answered | bypassed it | new generations |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name in PHASES:
        phase = report.phases[name]
        seconds = report.seconds.get(name, 0.0)
        errors = ", ".join(f"{n} {kind}" for kind, n in phase.errors.items()) or "none"
        reads = phase.cache_hits + phase.misses + phase.bypassed
        share = f"{phase.cache_hits / reads:.1%}" if reads else "-"
        print(
            f"| {name} | {seconds:.1f} | {phase.operations:,} "
            f"| {phase.operations / seconds if seconds else 0:,.0f} "
            f"| {phase.percentile(0.5):.1f} | {phase.percentile(0.99):.1f} "
            f"| {1000 * max(phase.latencies, default=0):.0f} | {errors} "
            f"| {phase.stale_reads} | {share} | {phase.bypassed:,} | {phase.generation_changes} |"
        )
    print(
        f"\n{report.slots_moved} slots resharded; {report.keys} keys; "
        f"lost acknowledged writes: {report.lost_writes}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="quiet time around changes")
    parser.add_argument("--slots", type=int, default=2000, help="slots to reshard")
    parser.add_argument("--tasks", type=int, default=16)
    args = parser.parse_args()
    report = asyncio.run(run(args.seconds, args.slots, args.tasks))
    command = (
        f"python -m benchmarks.cluster_change --seconds {args.seconds:g} "
        f"--slots {args.slots} --tasks {args.tasks}"
    )
    print_report(report, command)


if __name__ == "__main__":
    main()
