"""Persistent pointers: the 64-bit word and its bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtwz.errors import InvalidArgument
from dtwz.format.pointers import (
    MAX_FOT_INDEX,
    NULL,
    OFFSET_BITS,
    OFFSET_MASK,
    PersistentPointer,
    make_pointer,
    split_pointer,
)

indexes = st.integers(0, MAX_FOT_INDEX)
offsets = st.integers(0, OFFSET_MASK)


def test_constants() -> None:
    assert OFFSET_BITS == 48
    assert OFFSET_MASK == (1 << 48) - 1
    assert MAX_FOT_INDEX == 0xFFFF
    assert NULL == 0


@given(indexes, offsets)
def test_make_and_split_round_trip(index: int, offset: int) -> None:
    word = make_pointer(index, offset)
    assert 0 <= word < 1 << 64
    assert word == index << 48 | offset
    assert split_pointer(word) == (index, offset)


@given(st.integers(0, (1 << 64) - 1))
def test_every_word_splits_and_remakes(word: int) -> None:
    assert make_pointer(*split_pointer(word)) == word


def test_known_words() -> None:
    assert make_pointer(0, 0) == NULL
    assert make_pointer(1, 0x1000) == 0x0001_0000_0000_1000
    assert make_pointer(0xFFFF, OFFSET_MASK) == (1 << 64) - 1
    assert split_pointer(0x0002_0000_0000_2008) == (2, 0x2008)


@pytest.mark.parametrize(
    ("index", "offset"),
    [(-1, 0x1000), (MAX_FOT_INDEX + 1, 0x1000), (0, -1), (0, 1 << 48), (1, 1 << 60)],
)
def test_make_pointer_bounds(index: int, offset: int) -> None:
    with pytest.raises(InvalidArgument):
        make_pointer(index, offset)
    with pytest.raises(InvalidArgument):
        PersistentPointer(index, offset)


@given(indexes, offsets)
def test_persistent_pointer_round_trip(index: int, offset: int) -> None:
    ptr = PersistentPointer(index, offset)
    word = ptr.encode()
    assert word == make_pointer(index, offset)
    assert PersistentPointer.decode(word) == ptr
    assert ptr.is_null == (word == NULL)
    assert str(ptr) == f"{index}:{offset:#x}"


@pytest.mark.parametrize("word", [-1, 1 << 64, 1 << 70])
def test_decode_rejects_words_that_are_not_u64(word: int) -> None:
    with pytest.raises(InvalidArgument):
        PersistentPointer.decode(word)


def test_null_is_only_the_zero_word() -> None:
    assert PersistentPointer.decode(0).is_null
    assert not PersistentPointer(1, 0).is_null  # an entry with offset 0: bad, but not NULL
    assert not PersistentPointer(0, 0x1000).is_null


def test_pointer_is_frozen() -> None:
    ptr = PersistentPointer(1, 0x1000)
    with pytest.raises(AttributeError):
        ptr.offset = 5  # type: ignore[misc]
