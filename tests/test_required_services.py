"""Where services are required (``.ci/run`` sets ``KVSTORE_REQUIRE_SERVICES=1``; ``CI=true``
too), a PostgreSQL or Redis test cannot skip itself: a missing server fails the test and
any skip that gets through (a marker, a plugin) fails the run. Elsewhere both skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("skip_probe.py")


def run_probe(**environment: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KVSTORE_REQUIRE_SERVICES", "CI")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(PROBE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**env, **environment},
        cwd=PROBE.parent.parent,
    )


@pytest.mark.parametrize(
    "environment", [{"KVSTORE_REQUIRE_SERVICES": "1"}, {"CI": "true"}], ids=["kvstore", "ci"]
)
def test_where_services_are_required_nothing_skips(environment: dict[str, str]) -> None:
    done = run_probe(**environment)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "FAILED tests/skip_probe.py::test_a_missing_server" in done.stdout
    assert "services are required here" in done.stdout
    assert "1 skipped test(s) fail this run" in done.stdout  # the marker skip


def test_on_a_developers_machine_both_skip() -> None:
    done = run_probe()
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "2 skipped" in done.stdout
