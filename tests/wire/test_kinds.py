"""The wire enumerations: their numbers are the spec's (docs/PROTOCOL.md), their
labels are the JSON spelling, and a member travels exactly as its integer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dtwz.format.ids import ObjectId
from dtwz.wire.codec import decode, encode
from dtwz.wire.kinds import DirAction, MemberState, TxOpKind, WireEnum
from dtwz.wire.messages import DirOp, Join, MemberInfo, Transact, TxOp

KINDS: list[type[WireEnum]] = [TxOpKind, DirAction, MemberState]
OID = ObjectId(bytes(range(16)))

# the row of docs/PROTOCOL.md that lists each enum's numbers
SPEC_ROWS = {TxOpKind: "kind", DirAction: "action", MemberState: "state"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_numbers_are_those_of_the_spec(kind: type[WireEnum]) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text("utf-8")
    spelled = ", ".join(f"{m.value} {m.name}" for m in kind)
    assert f"| {SPEC_ROWS[kind]} | U8 | {spelled} |" in doc


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_labels_round_trip(kind: type[WireEnum]) -> None:
    for member in kind:
        assert member.label == member.name.lower()
        assert re.fullmatch(r"[a-z_]+", member.label)
        assert kind.from_name(member.label) is member
    assert kind.names() == sorted(m.name.lower() for m in kind)


@pytest.mark.parametrize("name", ["WRITE", "Write", "write ", "", "1", "label", "names"])
def test_from_name_accepts_exactly_the_labels(name: str) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        TxOpKind.from_name(name)


def test_from_name_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        DirAction.from_name("link")
    assert str(DirAction.names()) in str(info.value)


def test_members_compare_and_print_as_their_integers() -> None:
    members: list[int] = [TxOpKind.APPEND, MemberState.ALIVE]
    assert members == [2, 0]
    assert f"{TxOpKind.NAME_POINTER}" == "5" and str(DirAction.RENAME) == "5"


@pytest.mark.parametrize(
    ("with_enum", "with_int"),
    [
        (
            Transact(b"t", [TxOp(TxOpKind.APPEND, OID, 0, b"hi")]),
            Transact(b"t", [TxOp(2, OID, 0, b"hi")]),
        ),
        (DirOp(b"t", DirAction.RENAME, OID, "a", 1), DirOp(b"t", 5, OID, "a", 1)),
        (
            Join(MemberInfo("a", "tcp://h:1", "http://h:2", 1, MemberState.DEAD, 5)),
            Join(MemberInfo("a", "tcp://h:1", "http://h:2", 1, 2, 5)),
        ),
    ],
    ids=["TxOp", "DirOp", "MemberInfo"],
)
def test_a_member_travels_as_its_integer(with_enum: object, with_int: object) -> None:
    frames = encode(with_enum, 3)  # type: ignore[arg-type]
    assert frames == encode(with_int, 3)  # type: ignore[arg-type]
    assert decode(frames)[0] == with_enum == with_int


def test_unknown_values_are_left_to_the_handler() -> None:
    """The codec checks framing, not meaning: the service answers an unknown op
    kind with InvalidArgument, so the decoder must hand it over."""
    message = Transact(b"t", [TxOp(9, OID, 0)])
    decoded, _, _ = decode(encode(message))
    assert decoded == message
