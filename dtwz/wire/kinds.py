"""The enumerations that travel in the integer fields of wire messages. Pure.

Each is an ``IntEnum`` whose values are the numbers docs/PROTOCOL.md gives, so a
member is the integer on the wire and compares equal to it. The JSON of the
HTTP API and of ``dtwz status`` spells the same kinds as lower-case names
("write", "alive"): ``kind.label`` is that name and ``Kind.from_name`` reads it
back, accepting exactly the labels.

The codec hands these fields back as the integers that arrived: a value this
node does not know is not malformed framing, and the handler answers it (an
unknown op kind or directory action gets ``InvalidArgument``, a member record
with an unknown state is ignored by the membership table).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Self

__all__ = ["DirAction", "MemberState", "TxOpKind", "WireEnum"]


class WireEnum(IntEnum):
    """An integer kind of the wire with a lower-case name for JSON and HTTP."""

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> Self:
        """The member whose ``label`` is ``name``; ValueError for anything else."""
        for member in cls:
            if member.label == name:
                return member
        raise ValueError(f"{name!r} is not one of {cls.names()}")

    @classmethod
    def names(cls) -> list[str]:
        """Every label, sorted (for error messages and help text)."""
        return sorted(member.label for member in cls)


class TxOpKind(WireEnum):
    """What a ``TxOp`` of a ``Transact`` does at the object's home."""

    WRITE = 1  # data at offset
    APPEND = 2  # data after the data end (result: its offset)
    POINTER = 3  # at offset, a pointer to target + target_offset (result: the pointer word)
    ALLOC = 4  # reserve size bytes (result: their offset)
    NAME_POINTER = 5  # at offset, a late-bound pointer to the name in data (result: the word)


class DirAction(WireEnum):
    """What a ``DirOp`` changes in a directory of the namespace."""

    BIND = 1
    UNBIND = 2
    MKDIR = 3
    SYMLINK = 4
    RENAME = 5


class MemberState(WireEnum):
    """A member's state in the membership table (dtwz.resolver.membership). The
    order matters: at equal heartbeats the graver (greater) state wins a merge."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3
