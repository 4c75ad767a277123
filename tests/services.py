"""What a test does when a server it needs is missing: skip on a developer's machine, fail
where the services are required (``KVSTORE_REQUIRE_SERVICES=1``, set by ``.ci/run``, or
``CI=true``). A suite that skipped its PostgreSQL or Redis tests proved nothing about them."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRED = os.environ.get("KVSTORE_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it when services are required."""
    if REQUIRED:
        pytest.fail(f"{reason}; services are required here, so this fails", pytrace=False)
    pytest.skip(reason)
