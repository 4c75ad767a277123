"""Key encodings: collision-free, reversible, ordered, with tight prefix ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.errors import InvalidKeyError
from kvstore.keys import (
    MAX_COMPONENT_LENGTH,
    MAX_KEY_BYTES,
    Key,
    decode_key,
    decode_redis_key,
    encode_key,
    key_of,
    prefix_range,
    redis_key,
    redis_owner_tag,
)

component = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"),
        whitelist_characters=":%_*?[]\\{} ",
    ),
    min_size=1,
    max_size=12,
)
components = st.lists(component, min_size=1, max_size=4).map(tuple)
namespace = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)
keys = st.builds(Key, namespace, components)


@given(keys)
def test_every_key_decodes_back(key: Key) -> None:
    assert decode_key(encode_key(key)) == key
    assert decode_redis_key(redis_key(key, "kv:"), "kv:") == key


@given(keys, keys)
def test_distinct_keys_give_distinct_strings(a: Key, b: Key) -> None:
    if a != b:
        assert encode_key(a) != encode_key(b)
        assert redis_key(a) != redis_key(b)


@given(keys, keys)
def test_byte_order_is_tuple_order(a: Key, b: Key) -> None:
    by_tuple = (a.namespace, a.components) < (b.namespace, b.components)
    assert (encode_key(a) < encode_key(b)) == by_tuple


@given(keys, components)
def test_prefix_range_holds_exactly_the_keys_under_the_prefix(
    key: Key, prefix: tuple[str, ...]
) -> None:
    low, high = prefix_range(key.namespace, prefix)
    inside = low <= encode_key(key) < high
    assert inside == (key.components[: len(prefix)] == prefix)


def test_joining_ambiguity_is_impossible() -> None:
    assert redis_key(Key("ns", ("a:b", "c"))) != redis_key(Key("ns", ("a", "b:c")))
    assert encode_key(Key("ns", ("a", "bc"))) != encode_key(Key("ns", ("ab", "c")))


def test_u1_range_never_holds_u10() -> None:
    low, high = prefix_range("state", ("u1",))
    assert low <= encode_key(Key("state", ("u1", "s"))) < high
    assert not low <= encode_key(Key("state", ("u10", "s"))) < high
    assert not low <= encode_key(Key("state", ("U1", "s"))) < high


@given(keys)
def test_redis_key_carries_the_owner_as_the_only_hash_tag(key: Key) -> None:
    text = redis_key(key, "kv:")
    tag = text[text.index("{") + 1 : text.index("}")]
    assert f"{{{tag}}}" == redis_owner_tag(key.owner, "")
    assert text.startswith(redis_owner_tag(key.owner, "kv:") + ":")
    assert not any(c in text[len("kv:") :] for c in "*?[]\\ ")  # no glob characters


@pytest.mark.parametrize(
    "bad", ["", "x" * (MAX_COMPONENT_LENGTH + 1), "a\x00", "\n", "\x7f", "\ud800"]
)
def test_bad_components_are_refused(bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        Key("ns", (bad,))


@pytest.mark.parametrize(
    "bad", ["", "x" * (MAX_COMPONENT_LENGTH + 1), "a\x00", "\n", "\x7f", "\ud800"]
)
def test_key_of_refuses_bad_components_every_time(bad: str) -> None:
    for _ in range(2):  # nothing invalid is kept
        with pytest.raises(InvalidKeyError):
            key_of("ns", ("u1", bad))


def test_key_of_gives_the_validated_key_again_for_the_same_strings() -> None:
    first = key_of("state", ("u1", "s1"))
    assert first == Key("state", ("u1", "s1"))
    assert key_of("state", ("u1", "s1")) is first


class Impostor:
    """Claims to equal any id and hashes like "u1": only a real check can refuse it."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("u1")


def test_key_of_compares_ids_by_type_too() -> None:
    key_of("state", ("u1", "s1"))
    with pytest.raises(InvalidKeyError, match="must be a string, not Impostor"):
        key_of("state", (Impostor(), "s1"))  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="must be a string, not list"):
        key_of("state", (["u1"], "s1"))  # type: ignore[arg-type]  # unhashable

    class Id(str):
        pass

    own = key_of("state", (Id("u1"), "s1"))
    assert type(own.owner) is Id  # checked and built on its own, not the cached key
    assert own == Key("state", ("u1", "s1"))


@pytest.mark.parametrize("bad", ["", "Upper", "1abc", "a b", "a:b", "x" * 64])
def test_bad_namespaces_are_refused(bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        Key(bad, ("u1",))


def test_keys_need_an_owner() -> None:
    with pytest.raises(InvalidKeyError):
        Key("ns", ())


def wide(count: int, start: int = 0) -> str:
    """``count`` different four-byte characters."""
    return "".join(chr(0x20000 + start + i) for i in range(count))


def test_a_key_holds_at_most_max_key_bytes_of_utf8() -> None:
    """Namespace, ids and one separator byte per id: 2,600 bytes fit, one more does not,
    however the ids split it, and whatever their characters."""
    namespace = "deep"  # 4 bytes; 3 ids: 3 separator bytes
    room = MAX_KEY_BYTES - len(namespace) - 3
    full = Key(
        namespace, (wide(255), wide(255, 300), wide(room // 4 - 510, 600) + "x" * (room % 4))
    )
    assert len(encode_key(full)) - 1 == MAX_KEY_BYTES  # encode_key adds the namespace's NUL
    with pytest.raises(InvalidKeyError, match="2601 bytes"):
        Key(namespace, (*full.components[:2], full.components[2] + "y"))
    assert Key(namespace, ("x" * 255,) * 3)  # ASCII ids of the longest length always fit
