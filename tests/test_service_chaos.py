"""The coach service on four uvicorn workers, PostgreSQL and Redis, under chaos, in its
short form (``python -m benchmarks.service`` is the long one): workers killed and frozen
past their lease, Redis restarted empty and from an old snapshot, PostgreSQL restarted.
No answered message is lost, duplicated or out of order in its transcript; no step is
skipped or repeated; a message sent twice at once is one turn with one answer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from benchmarks.service import run_service
from tests import pg_servers
from tests.redis_servers import REDIS_SERVER
from tests.services import unavailable

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(600)
async def test_the_service_under_chaos_loses_duplicates_and_reorders_nothing(
    tmp_path: Path,
) -> None:
    missing = pg_servers.available()
    if missing is not None:
        unavailable(missing)
    if REDIS_SERVER is None:
        unavailable("redis-server is needed for the service's chaos test")
    report = await run_service(
        60,
        20.0,
        chaos=True,
        chaos_every=1.0,
        think=0.5,
        lock_ttl=3.0,
        client_timeout=4.0,
        workdir=tmp_path,
    )
    print("\n".join(report.lines()))
    findings = report.findings
    assert (findings.lost, findings.duplicated, findings.out_of_order) == (0, 0, 0)
    assert (findings.steps_wrong, findings.unsent, findings.answers_differ) == (0, 0, 0)
    assert report.messages > 0
    assert report.doubled > 0  # some turns were sent twice at once...
    assert report.doubled_both_answered > 0  # ...and both sends were answered
    assert {
        "worker killed (SIGKILL)",
        "redis restarted from an old snapshot",
        "postgres restarted",
    } <= set(report.events)
