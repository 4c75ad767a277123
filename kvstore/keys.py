"""Keys: a namespace plus a tuple of string components, the first being the owner.

Backends receive keys in this structured form and lay them out as their medium needs. Two
string forms are defined here, once, so that no backend invents its own:

* :func:`encode_key` gives ordered bytes (``namespace NUL c1 NUL c2 NUL``). Byte order equals
  tuple order, and :func:`prefix_range` turns a component prefix into a half-open byte range
  that holds exactly the keys under that prefix: the range of ``("u1",)`` never holds ``"u10"``.
* :func:`redis_key` gives ``prefix{owner}:namespace:c2:...`` with every special character
  percent-escaped, so the owner is a Redis Cluster hash tag (one user, one slot), no two
  distinct tuples give the same string, and no user-given part contains a glob character.

Components are non-empty strings of at most :data:`MAX_COMPONENT_LENGTH` characters without
control characters or lone surrogates, and a whole key (namespace and components) holds at
most :data:`MAX_KEY_BYTES` bytes of UTF-8; anything else raises :class:`InvalidKeyError`,
before any backend sees the key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kvstore.errors import InvalidKeyError

MAX_COMPONENT_LENGTH = 255
"""The longest id, in characters."""

MAX_KEY_BYTES = 2600
"""The most a whole key may hold: namespace plus every component, in UTF-8 bytes, one byte
per component added for its separator. PostgreSQL's primary-key index refuses an entry
over 2,704 bytes (its own headers take up to ~30 of them), and values of random 4-byte
characters do not compress: three ids of 255 such characters are 3,060 bytes. One rule for
every backend, so a key one backend stores is never refused by another."""

DEFAULT_PAGE_SIZE = 100
"""Keys per page of a listing unless the caller asks for another size."""

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMESPACE = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
_REDIS_ESCAPES = {c: f"%{ord(c):02X}" for c in "%:{}*?[]\\ "}
_REDIS_ESCAPE = re.compile("[" + re.escape("".join(_REDIS_ESCAPES)) + "]")
_REDIS_UNESCAPE = re.compile("%([0-9A-F]{2})")


def check_component(value: object, what: str = "id") -> str:
    """Return ``value`` if it can be a key component, else raise :class:`InvalidKeyError`."""
    if not isinstance(value, str):
        raise InvalidKeyError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidKeyError(f"{what} must not be empty")
    if len(value) > MAX_COMPONENT_LENGTH:
        raise InvalidKeyError(f"{what} is longer than {MAX_COMPONENT_LENGTH} characters")
    if _FORBIDDEN.search(value):
        raise InvalidKeyError(f"{what} contains a control character or a lone surrogate")
    return value


def check_key_size(namespace: str, components: tuple[str, ...]) -> None:
    """Raise :class:`InvalidKeyError` if the key is over :data:`MAX_KEY_BYTES`."""
    characters = len(namespace) + sum(map(len, components)) + len(components)
    if characters * 4 <= MAX_KEY_BYTES:
        return  # even all 4-byte characters would fit: skip the encoding
    size = len(namespace) + sum(len(c.encode()) for c in components) + len(components)
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"key is {size} bytes of UTF-8 (namespace and ids together), over the "
            f"{MAX_KEY_BYTES} byte limit"
        )


def check_namespace(value: object) -> str:
    """Return ``value`` if it is a valid namespace (``[a-z][a-z0-9_.-]*``, at most 63 long)."""
    if not isinstance(value, str) or not _NAMESPACE.fullmatch(value):
        raise InvalidKeyError(f"namespace must match [a-z][a-z0-9_.-]{{0,62}}, got {value!r:.80}")
    return value


@dataclass(frozen=True, slots=True)
class Key:
    """One record's address: ``namespace`` and ``components`` (owner first)."""

    namespace: str
    components: tuple[str, ...]

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if not self.components:
            raise InvalidKeyError("a key needs at least the owner component")
        for component in self.components:
            check_component(component)
        check_key_size(self.namespace, self.components)

    @property
    def owner(self) -> str:
        """The first component: the user the record belongs to."""
        return self.components[0]

    @property
    def rest(self) -> tuple[str, ...]:
        """The components after the owner."""
        return self.components[1:]


KNOWN_KEYS = 4096
"""Keys :func:`key_of` keeps, validated, for the ids asked for again (LRU)."""


@functools.lru_cache(maxsize=KNOWN_KEYS, typed=True)
def _known_key(namespace: str, *components: str) -> Key:
    return Key(namespace, components)


def key_of(namespace: str, components: tuple[str, ...]) -> Key:
    """``Key(namespace, components)``, validated once for the ids a process asks for again
    and again (a session's, on every turn): the same key comes back from a bounded cache
    that compares each id by value and by type, so only the very strings that passed
    validation skip it. Anything invalid raises :class:`InvalidKeyError` every time (an
    unhashable id included); nothing invalid is cached."""
    try:
        return _known_key(namespace, *components)
    except TypeError:  # an unhashable id: the key's own checks name what is wrong with it
        return Key(namespace, components)


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of holding the lock of session ``name`` of user ``owner`` (``db.lock``).

    ``token`` is the lock's fencing token: every grant of a session's lock gets a larger one.
    A write that carries the fence is refused (:class:`~kvstore.errors.FencedError`) by the
    store itself, atomically with the write, once a lock with a larger token was granted.
    """

    owner: str
    name: str
    token: int


def encode_key(key: Key) -> bytes:
    """Ordered bytes for ``key``: byte order equals ``(namespace, components)`` order."""
    return key.namespace.encode() + b"\x00" + _encode_components(key.components)


def decode_key(data: bytes) -> Key:
    """Inverse of :func:`encode_key`."""
    namespace, _, rest = data.partition(b"\x00")
    parts = rest.split(b"\x00")
    if parts[-1] != b"":
        raise InvalidKeyError("not an encoded key")
    return Key(namespace.decode(), tuple(part.decode() for part in parts[:-1]))


def prefix_range(namespace: str, prefix: tuple[str, ...]) -> tuple[bytes, bytes]:
    """The half-open range ``[low, high)`` of encoded keys whose components start with
    ``prefix``. ``prefix=("u1",)`` holds ``("u1", ...)`` and never ``("u10", ...)``."""
    check_namespace(namespace)
    for component in prefix:
        check_component(component)
    low = namespace.encode() + b"\x00" + _encode_components(prefix)
    return low, low + b"\xff"  # 0xff never occurs in UTF-8, so it bounds every extension


def _encode_components(components: tuple[str, ...]) -> bytes:
    return b"".join(component.encode() + b"\x00" for component in components)


def _escape(part: str) -> str:
    return _REDIS_ESCAPE.sub(lambda m: _REDIS_ESCAPES[m.group()], part)


def _unescape(part: str) -> str:
    return _REDIS_UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), part)


def redis_component(part: str) -> str:
    """``part`` escaped as it appears between the ``:`` of a Redis key name."""
    return _escape(part)


def redis_owner_tag(owner: str, prefix: str = "") -> str:
    """The part every Redis key of ``owner`` starts with: ``prefix{owner}``."""
    return f"{prefix}{{{_escape(owner)}}}"


def redis_key(key: Key, prefix: str = "") -> str:
    """``prefix{owner}:namespace:c2:...``; the owner is the cluster hash tag."""
    tail = "".join(":" + _escape(component) for component in key.rest)
    return f"{redis_owner_tag(key.owner, prefix)}:{key.namespace}{tail}"


def decode_redis_key(value: str, prefix: str = "") -> Key:
    """Inverse of :func:`redis_key`."""
    if not value.startswith(prefix + "{"):
        raise InvalidKeyError("not a kvstore Redis key")
    owner, sep, rest = value[len(prefix) + 1 :].partition("}:")
    if not sep:
        raise InvalidKeyError("not a kvstore Redis key")
    namespace, *tail = rest.split(":")
    return Key(namespace, (_unescape(owner), *(_unescape(part) for part in tail)))
