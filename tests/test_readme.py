"""Every ```python block of the README runs as it stands: each alone, as a script in a new
process, from a scratch directory (the examples newcomers copy must work)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("number", range(1, len(python_blocks()) + 1))
def test_each_readme_example_runs_alone(number: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_block_{number}.py"
    script.write_text(python_blocks()[number - 1], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"README block {number}:\n{result.stderr}"
