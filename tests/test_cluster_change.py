"""The tiered store on a private Redis Cluster (three masters with a replica each) while
the load runs: 2,000 slots resharded between masters, then a master killed and its replica
promoted. Nothing acknowledged is lost, no read is older than its own acknowledged save,
and no call fails: the cluster's changes cost the cache, never the store (the scenario is
``tests/cluster_change.py``; ``python -m benchmarks.cluster_change`` reports its latency)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from kvstore import DatabaseType, create_database
from tests.cluster_change import PHASES, masters, run_under_change
from tests.redis_servers import REDIS_CLI, REDIS_SERVER, RedisClusterServers
from tests.services import unavailable
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.postgres, pytest.mark.redis_cluster]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three masters with a replica each, of this test alone (one gets killed)."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        unavailable("redis-server and redis-cli are needed for the cluster tests")
    servers = RedisClusterServers(tmp_path / "cluster", replicas=1)
    try:
        yield servers.start()
    finally:
        servers.stop()


async def test_resharding_and_a_failover_under_load_lose_nothing(
    postgres_url: str, cluster: RedisClusterServers
) -> None:
    before = {m.node_id: m.slots for m in masters(cluster)}
    db = create_database(DatabaseType.TIERED, postgres_url, cache_url=cluster.url)
    truth = create_database(DatabaseType.SQL, postgres_url)
    async with db, truth:
        report = await run_under_change(db, truth, cluster)

        async def cache_serves() -> bool:
            stats = db.stats().tier
            assert stats is not None
            hits = stats.hits
            await db.get_state("change-0", "s")
            stats = db.stats().tier
            assert stats is not None
            return stats.hits > hits

        await eventually(cache_serves)  # back in use after the failover
        for owner in (f"change-{n}" for n in range(report.keys)):
            await db.delete_user(owner)
    after = masters(cluster)
    assert len(after) == 3  # a replica took over the killed master's slots
    assert sorted(m.slots for m in after) != sorted(before.values())  # slots moved
    assert report.lost_writes == 0
    assert all(report.phases[p].stale_reads == 0 for p in PHASES), report.phases
    assert all(not report.phases[p].errors for p in PHASES), report.phases
    assert all(report.phases[p].operations > 0 for p in PHASES), report.phases
