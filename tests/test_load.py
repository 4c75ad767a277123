"""The load test with chaos, short: a few seconds, fewer sessions, same checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.load import run_load


@pytest.mark.slow
async def test_short_load_with_chaos_loses_nothing_and_serves_nothing_stale(
    tmp_path: Path,
) -> None:
    report = await run_load(60, 10.0, chaos=True, chaos_every=0.5, workdir=tmp_path)
    print("\n".join(report.lines()))
    assert report.messages > 100
    assert sum(report.chaos_events.values()) >= 3
    assert (report.lost, report.stale, report.conflicts) == (0, 0, 0)
