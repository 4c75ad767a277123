"""The load test with chaos, short: a few seconds, fewer sessions, same checks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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


@pytest.mark.slow
async def test_the_command_runs_flat_out_with_frozen_start_up_objects() -> None:
    """``python -m benchmarks.load --think 0 --gc-freeze``: the command line's options reach
    the run, and it says the collector was told to leave start-up's objects alone."""
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "benchmarks.load",
            "--sessions",
            "20",
            "--seconds",
            "1",
            "--think",
            "0",
            "--gc-freeze",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.startswith("20 sessions, 1 s: ")
    assert "acknowledged writes lost: 0, stale reads after recovery: 0" in done.stdout
    assert done.stdout.rstrip().endswith("gc.freeze() after start-up: yes")
