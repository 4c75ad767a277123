"""Run only by tests/test_required_services.py (its name keeps it out of the suite): one
test whose server is missing, one skipped by a marker."""

from __future__ import annotations

import pytest

from tests.services import unavailable


def test_a_missing_server() -> None:
    unavailable("no server at 127.0.0.1:1 (a probe)")


@pytest.mark.skip(reason="a marker skip (a probe)")
def test_a_marker_skip() -> None:
    raise AssertionError("never runs")
