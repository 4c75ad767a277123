"""The ```python blocks of the backend documents the command-line issue named (docs/redis.md,
docs/sql.md) run as they stand, each alone in a new process: no I/O happens, since building
a store does none."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
BLOCKS = [
    (name, number, code)
    for name in ("redis.md", "sql.md")
    for number, code in enumerate(BLOCK.findall((DOCS / name).read_text(encoding="utf-8")), 1)
]


def test_each_document_has_an_example() -> None:
    assert {name for name, _, _ in BLOCKS} == {"redis.md", "sql.md"}


@pytest.mark.parametrize(("name", "number", "code"), BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_each_example_runs_alone(name: str, number: int, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docs/{name} block {number}:\n{result.stderr}"
