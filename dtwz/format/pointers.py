"""Persistent pointers: one 64-bit word, ``fot_index << 48 | offset``.

``fot_index == 0`` points inside the object that holds the pointer; any other
index names an FOT entry of that object. The whole word 0 is NULL (offset 0 lies
in the header page). Pointers carry no location, so an object's bytes mean the
same thing on every node.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtwz.errors import InvalidArgument

OFFSET_BITS = 48
OFFSET_MASK = (1 << OFFSET_BITS) - 1
MAX_FOT_INDEX = (1 << 16) - 1
NULL = 0


def make_pointer(fot_index: int, offset: int) -> int:
    if not 0 <= fot_index <= MAX_FOT_INDEX:
        raise InvalidArgument(f"FOT index {fot_index} out of range 0..{MAX_FOT_INDEX}")
    if not 0 <= offset <= OFFSET_MASK:
        raise InvalidArgument(f"pointer offset {offset} does not fit in 48 bits")
    return fot_index << OFFSET_BITS | offset


def split_pointer(word: int) -> tuple[int, int]:
    """``(fot_index, offset)`` of a raw pointer word."""
    return word >> OFFSET_BITS, word & OFFSET_MASK


@dataclass(frozen=True, slots=True)
class PersistentPointer:
    """A decoded pointer, for display and for APIs where clarity beats speed."""

    fot_index: int
    offset: int

    def __post_init__(self) -> None:
        make_pointer(self.fot_index, self.offset)

    @classmethod
    def decode(cls, word: int) -> PersistentPointer:
        if not 0 <= word < 1 << 64:
            raise InvalidArgument(f"a pointer is an unsigned 64-bit word, got {word}")
        return cls(*split_pointer(word))

    def encode(self) -> int:
        return self.fot_index << OFFSET_BITS | self.offset

    @property
    def is_null(self) -> bool:
        return self.fot_index == 0 and self.offset == 0

    def __str__(self) -> str:
        return f"{self.fot_index}:{self.offset:#x}"
