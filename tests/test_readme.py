"""Every ```python block of the README runs, in order, in one namespace (top-level await
allowed), from a scratch directory: the examples newcomers copy must work."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


async def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KVSTORE_URL", raising=False)
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        for number, source in enumerate(python_blocks(), start=1):
            code = compile(
                source,
                f"README.md block {number}",
                "exec",
                flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True,  # not our `from __future__ import annotations`
            )
            result = eval(code, namespace)
            if inspect.iscoroutine(result):
                await result
    finally:  # what the examples opened is closed even when one of them fails
        closers = [value for value in namespace.values() if hasattr(value, "close")]
        for value in closers:
            close = value.close
            if inspect.iscoroutinefunction(close):
                await close()
