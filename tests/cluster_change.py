"""A tiered store on a Redis Cluster under load while the cluster changes: slots are
resharded from one master to another (``redis-cli --cluster reshard``: MIGRATING and
IMPORTING slots, MOVED and ASK redirections), then a master is killed and its replica
takes over. Used by ``tests/test_cluster_change.py`` (which asserts) and
``benchmarks/cluster_change.py`` (which reports).

Every task owns its keys and saves each with the version it last saw acknowledged, then
reads it back: a read older than the acknowledged save is a stale read, a save refused or
failed is counted, and at the end every key's version in PostgreSQL must be the last one
acknowledged (else a write was lost).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore import KVStoreError, StateRecord
from tests.redis_servers import REDIS_CLI, RedisClusterServers, redis_cli

if TYPE_CHECKING:
    from kvstore import Database, TieredStats

PHASES = ("before", "reshard", "failover", "after")


@dataclass
class Phase:
    """What the load saw in one phase of the change."""

    operations: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    stale_reads: int = 0
    latencies: list[float] = field(default_factory=list)
    cache_hits: int = 0
    """Reads the cache answered (the tier's counters; each read is one of these three)."""
    misses: int = 0
    bypassed: int = 0
    generation_changes: int = 0

    def percentile(self, fraction: float) -> float:
        """A latency percentile in milliseconds (0 without samples)."""
        if len(self.latencies) < 2:
            return 1000 * max(self.latencies, default=0.0)
        cuts = statistics.quantiles(self.latencies, n=100)
        return 1000 * cuts[round(fraction * 100) - 1]


@dataclass
class Report:
    """The run, phase by phase, and the final check."""

    phases: dict[str, Phase] = field(default_factory=lambda: {p: Phase() for p in PHASES})
    lost_writes: int = 0
    keys: int = 0
    slots_moved: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Master:
    node_id: str
    port: int
    slots: int


def masters(servers: RedisClusterServers) -> list[Master]:
    """The cluster's masters with slots, from ``CLUSTER NODES`` of a live node."""
    live = next(node for node in servers.nodes if node.process is not None)
    found = []
    for line in redis_cli(live.port, "cluster", "nodes").splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        slots = 0
        for part in fields[8:]:
            if part.startswith("["):
                continue  # a slot being migrated
            low, _, high = part.partition("-")
            slots += int(high or low) - int(low) + 1
        if slots:
            port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            found.append(Master(fields[0], port, slots))
    return found


def reshard(servers: RedisClusterServers, source: Master, target: Master, slots: int) -> None:
    """Move ``slots`` slots (with their keys) from ``source`` to ``target``."""
    assert REDIS_CLI is not None
    subprocess.run(
        [
            REDIS_CLI,
            "--cluster",
            "reshard",
            f"127.0.0.1:{source.port}",
            *("--cluster-from", source.node_id, "--cluster-to", target.node_id),
            *("--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "100"),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def kill_master(servers: RedisClusterServers, master: Master) -> None:
    """SIGKILL ``master``; return once one of its replicas serves as master."""
    node = next(n for n in servers.nodes if n.port == master.port)
    assert node.process is not None
    node.process.kill()
    node.process.wait()
    node.process = None
    give_up = time.monotonic() + 60
    while not any(
        m.slots == master.slots and m.node_id != master.node_id for m in masters(servers)
    ):
        if time.monotonic() > give_up:
            raise RuntimeError("no replica took over from the killed master")
        time.sleep(0.1)


async def run_under_change(
    db: Database,
    truth: Database,
    servers: RedisClusterServers,
    *,
    users: int = 64,
    tasks: int = 16,
    quiet: float = 1.0,
    slots: int = 2000,
) -> Report:
    """Load ``db`` with ``tasks`` tasks over ``users`` keys while the cluster is resharded
    and a master fails over, ``quiet`` seconds before, between and after; then compare
    every key with ``truth`` (the same PostgreSQL without a cache)."""
    report = Report(keys=users)
    phase = "before"
    last = _tier(db)

    def begin(name: str) -> None:
        """End the current phase (its cache counters) and begin ``name``."""
        nonlocal phase, last
        now, done = _tier(db), report.phases[phase]
        done.cache_hits = now.hits - last.hits
        done.misses = now.misses - last.misses
        done.bypassed = now.bypassed - last.bypassed
        done.generation_changes = now.generation_changes - last.generation_changes
        phase, last = name, now

    owners = [f"change-{n}" for n in range(users)]
    acked: dict[str, int] = {}
    for owner in owners:
        saved = await db.save_state(StateRecord(user_id=owner, session_id="s", state="0"))
        acked[owner] = saved.version
    stop = asyncio.Event()

    async def worker(mine: list[str]) -> None:
        step = 0
        while not stop.is_set():
            for owner in mine:
                step += 1
                current = report.phases[phase]
                began = time.perf_counter()
                try:
                    record = StateRecord(user_id=owner, session_id="s", state=str(step))
                    saved = await db.save_state(record, expected_version=acked[owner])
                    acked[owner] = saved.version
                    got = await db.get_state(owner, "s")
                    if got is None or got.version < saved.version:
                        current.stale_reads += 1
                except KVStoreError as error:
                    name = type(error).__name__
                    current.errors[name] = current.errors.get(name, 0) + 1
                    await _resync(db, owner, acked)
                    continue
                current.operations += 1
                current.latencies.append(time.perf_counter() - began)

    share = [owners[n::tasks] for n in range(tasks)]
    running = [asyncio.create_task(worker(mine)) for mine in share]
    try:
        started = time.monotonic()
        await asyncio.sleep(quiet)
        report.seconds["before"] = time.monotonic() - started
        before = masters(servers)
        source, target = before[0], before[1]
        begin("reshard")
        started = time.monotonic()
        await asyncio.to_thread(reshard, servers, source, target, slots)
        report.slots_moved = slots
        await asyncio.sleep(quiet)
        report.seconds["reshard"] = time.monotonic() - started
        begin("failover")
        started = time.monotonic()
        victim = next(m for m in masters(servers) if m.node_id == target.node_id)
        await asyncio.to_thread(kill_master, servers, victim)
        await asyncio.sleep(quiet)
        report.seconds["failover"] = time.monotonic() - started
        begin("after")
        started = time.monotonic()
        await asyncio.sleep(quiet)
        report.seconds["after"] = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*running)
    begin("after")
    for owner in owners:
        stored = await truth.get_state(owner, "s")
        if stored is None or stored.version != acked[owner]:
            report.lost_writes += 1
    return report


def _tier(db: Database) -> TieredStats:
    stats = db.stats().tier
    assert stats is not None
    return stats


async def _resync(db: Database, owner: str, acked: dict[str, int]) -> None:
    """After a failed save (outcome unknown), the version stored now."""
    for _ in range(100):
        try:
            record = await db.get_state(owner, "s")
        except KVStoreError:
            await asyncio.sleep(0.05)
            continue
        if record is not None:
            acked[owner] = record.version
        return
