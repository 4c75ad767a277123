"""kvstore installs three top-level packages: ``kvstore``, ``backends`` and ``serializers``.

The last two are common names: an application's own ``backends/`` or ``serializers.py``
earlier on ``sys.path``, or an unrelated distribution of that name, would be imported in
their place and fail deep inside kvstore with a confusing error. :func:`check_siblings`
runs when ``kvstore`` is imported and fails at once, naming the module that is in the way.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Final

SIBLINGS: Final = ("backends", "serializers")
"""kvstore's internal packages, installed beside it."""


def check_siblings() -> None:
    """Raise :class:`ImportError` unless every sibling package resolves to the one installed
    beside ``kvstore``. Finds them without importing them."""
    home = Path(__file__).resolve().parent.parent
    for name in SIBLINGS:
        try:
            spec = find_spec(name)
        except (ImportError, ValueError):
            spec = None
        found = spec.origin if spec is not None and spec.has_location else None
        if found is not None and Path(found).resolve().parent.parent == home:
            continue
        if spec is None:
            what = "not installed"
        elif found is None:
            places = ", ".join(spec.submodule_search_locations or ()) or "no file"
            what = f"a namespace package at {places}"
        else:
            what = found
        raise ImportError(
            f"kvstore needs its own {name!r} package, installed beside it in {home}, but "
            f"{name!r} resolves to {what}: another module or package of that name shadows "
            "it (rename yours, or reinstall kvstore-tiered)"
        )
