"""JSON text for PostgreSQL's ``jsonb`` that keeps every float a float.

``jsonb`` stores a number as ``numeric`` and prints it back positionally, so a float that
JSON writes in exponent notation and whose value is integral (``1e20``, ``1.5e16``) comes
back as ``100000000000000000000``: an int to every JSON parser (one outside 64 bits cannot
even be saved again), while SQLite, Redis and the cache return the float. Before a value
reaches ``jsonb``, such tokens are written positionally with a fractional ``.0``: the same
number, which ``numeric`` keeps (and prints) with its scale, so it reads back a float.
Strings are left alone; integers and floats that have a fraction already are unchanged.
"""

from __future__ import annotations

import re
from decimal import Decimal

_EXPONENT = re.compile(rb"\d[eE]")
"""A first look on the bytes (twice as fast as on text): no digit followed by an exponent
mark, nothing to rewrite."""
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE][+-]?\d+')
"""A JSON string (skipped whole) or a number in exponent notation."""


def jsonb_exact(value: bytes) -> str:
    """``value`` (valid UTF-8 JSON) as text, its exponent-notation numbers written
    positionally, each with a fraction, so ``jsonb`` gives back floats for floats. Raises
    ``UnicodeDecodeError`` for bytes that are not UTF-8."""
    text = value.decode()
    if _EXPONENT.search(value) is None:
        return text
    return _TOKEN.sub(_positional, text)


def _positional(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] == '"':
        return token
    digits = format(Decimal(token), "f")
    return digits if "." in digits else f"{digits}.0"
