"""Every module imports on its own in a fresh interpreter: no import cycle depends on which
module a program happens to import first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in ("kvstore", "backends", "serializers")
    for path in (ROOT / package).rglob("*.py")
    if "migrations" not in path.parts
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("backends", {"backends/__init__.py": "", "backends/sql.py": ""}),
        ("serializers", {"serializers.py": "JSON = None\n"}),
        ("backends", {"backends.py": "from os import *\n"}),
    ],
)
def test_a_package_that_shadows_ours_is_named_at_import(
    tmp_path: Path, name: str, files: dict[str, str]
) -> None:
    """An application's own ``backends/`` or ``serializers.py`` first on ``sys.path``:
    ``import kvstore`` fails at once, naming what is in the way."""
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    result = subprocess.run(
        [sys.executable, "-c", "import kvstore"],
        cwd=tmp_path,  # the working directory comes first on sys.path, as for a script
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: kvstore needs its own"), result.stderr
    assert f"{name!r} resolves to" in last
    assert str(tmp_path) in last
