"""docker-compose.yml parses, has health checks, and agrees with the README's URLs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parent.parent


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_services_have_health_checks_and_named_volumes() -> None:
    data = compose()
    services = data["services"]
    assert set(services) == {"postgres", "redis"}
    for service in services.values():
        assert service["healthcheck"]["test"]
        assert any(":" in volume for volume in service["volumes"])
    assert set(data["volumes"]) == {"kvstore-postgres", "kvstore-redis"}


def test_readme_urls_match_the_compose_file() -> None:
    services = compose()["services"]
    env = services["postgres"]["environment"]
    pg_port = services["postgres"]["ports"][0].split(":")[0]
    redis_port = services["redis"]["ports"][0].split(":")[0]
    expected_pg = (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
        f"@localhost:{pg_port}/{env['POSTGRES_DB']}"
    )
    expected_redis = f"redis://localhost:{redis_port}/0"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"KVSTORE_URL={expected_pg}" in readme
    assert f"KVSTORE_CACHE_URL={expected_redis}" in readme
    header = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert re.search(rf"KVSTORE_URL={re.escape(expected_pg)}\b", header)
