"""The wire codec, checked against its specification (docs/PROTOCOL.md).

- ``TABLE``: one ``(message, request_id, reply, frames)`` row per op, the frames
  written by hand from the spec. Encoding must give exactly those bytes and
  decoding them must give the message back.
- Round trips of every registered message with field values that hypothesis
  builds from the dataclass annotations, so a new message is covered the day it
  is registered.
- Fuzzing: whatever frames ``decode`` is given, it returns a message or raises
  ``ProtocolError``, nothing else, and never allocates far beyond its input.
- Specific rejections, and errors crossing the wire as the same dtwz.errors type.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
import typing
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dtwz import errors
from dtwz.errors import DtwzError, ProtocolError
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.wire.codec import MAX_LIST, decode, decode_envelope, encode, error_reply, raise_error
from dtwz.wire.messages import (
    Ack,
    AppliedTxn,
    CodeResult,
    Create,
    Created,
    DirOp,
    DirResult,
    EdgeCounts,
    EdgeUse,
    EdgeUses,
    ErrorReply,
    Fetch,
    FetchMany,
    GraphEdge,
    GraphExpand,
    GraphObject,
    GraphPart,
    Heartbeat,
    HomeRecord,
    Invalidate,
    Join,
    Leave,
    Locate,
    Location,
    MemberInfo,
    Members,
    Message,
    Migrate,
    Migrated,
    MigrateIn,
    ObjectBatch,
    ObjectData,
    ObjectImage,
    ObjectVersion,
    Payload,
    Ping,
    Publish,
    RunCode,
    Struct,
    Transact,
    TransactResult,
    TxOp,
    WalkStart,
)

OID = ObjectId(bytes(range(16)))
OID_HEX = "000102030405060708090a0b0c0d0e0f"
ZERO_HEX = "00" * 16
MEMBER = MemberInfo("a", "tcp://h:1", "http://h:2", 1, 0, 5)
#               node_id "a"  peer_addr "tcp://h:1"         http_addr "http://h:2"
MEMBER_HEX = "0100 61  0900 7463703a2f2f683a31  0a00 687474703a2f2f683a32" + (
    #   incarnation 1     state 0   heartbeat 5
    "  0100000000000000  00  0500000000000000"
)


def env(op: int, request_id: int, reply: bool = False) -> str:
    """The 16-byte envelope in hex, written out from the spec rather than the codec."""
    flags = "0100" if reply else "0000"
    return f"445a 01 {op:02x} {flags} 0000 {request_id.to_bytes(8, 'little').hex()}"


# (message, request_id, is_reply, [frame hex, ...]); spaces only separate fields
TABLE: list[tuple[Message, int, bool, list[str]]] = [
    (
        ErrorReply("ObjectNotFound", "no"),
        0x0102030405060708,
        True,
        ["445a 01 01 0100 0000 0807060504030201", "0e00 4f626a6563744e6f74466f756e64 0200 6e6f"],
    ),
    (Ack(7), 42, True, [env(2, 42, True), "07000000"]),
    (Ack(), 1, True, [env(2, 1, True), "00000000"]),
    (Ping("n1"), 1, False, [env(3, 1), "0200 6e31"]),
    (Ping("é"), 2, False, [env(3, 2), "0200 c3a9"]),  # lengths count UTF-8 bytes
    (Ping(""), 3, False, [env(3, 3), "0000"]),
    (Join(MEMBER), 4, False, [env(10, 4), MEMBER_HEX]),
    (Heartbeat(MEMBER, []), 5, False, [env(11, 5), MEMBER_HEX + "00000000"]),
    (
        Heartbeat(MEMBER, [MEMBER, MEMBER]),
        5,
        False,
        [env(11, 5), MEMBER_HEX + "02000000" + MEMBER_HEX + MEMBER_HEX],
    ),
    (Members([]), 6, True, [env(12, 6, True), "00000000"]),
    (Members([MEMBER]), 6, True, [env(12, 6, True), "01000000" + MEMBER_HEX]),
    (Leave("a", 2), 7, False, [env(13, 7), "0100 61 0200000000000000"]),
    (Locate(OID), 3, False, [env(20, 3), OID_HEX]),
    (
        Location(True, HomeRecord(OID, "n2", 3, 1)),
        3,
        True,
        [env(21, 3, True), f"01 {OID_HEX} 0200 6e32 0300000000000000 0100000000000000 00000000"],
    ),
    (
        Location(True, HomeRecord(OID, "n2", 3, 1), ["n3"]),
        3,
        True,
        [
            env(21, 3, True),
            f"01 {OID_HEX} 0200 6e32 0300000000000000 0100000000000000 01000000 0200 6e33",
        ],
    ),
    (
        Publish([HomeRecord(OID, "n2", 0, 1)]),
        8,
        False,
        [env(22, 8), f"01000000 {OID_HEX} 0200 6e32 0000000000000000 0100000000000000"],
    ),
    (
        Fetch(OID, 4096, 8192, True, False, "node-a"),
        9,
        False,
        # object_id, offset, length, with_fot, register_copy, requester
        [env(30, 9), f"{OID_HEX} 0010000000000000 0020000000000000 01 00 0600 6e6f64652d61"],
    ),
    (
        ObjectData(OID, 3, 65536, 4100, 65504, 4096, b"\x01\x02", b"abcd", b""),
        9,
        True,
        [
            env(31, 9, True),
            # object_id, version, max_size, data_end, fot_start, offset
            f"{OID_HEX} 0300000000000000 0000010000000000 0410000000000000"
            " e0ff000000000000 0010000000000000"
            # header (bytes: u32 length), data -> payload 0, fot -> payload 1
            " 02000000 0102 00000000 01000000",
            "61626364",
            "",
        ],
    ),
    (
        Transact(b"\xaa\xbb", [TxOp(2, OID, 0, b"hi")]),
        10,
        False,
        [
            env(40, 10),
            "02000000 aabb 01000000"
            # TxOp: kind, object_id, offset, data, target, target_offset, size
            f" 02 {OID_HEX} 0000000000000000 02000000 6869 {ZERO_HEX}"
            " 0000000000000000 0000000000000000",
        ],
    ),
    (
        TransactResult([1, 2], [ObjectVersion(OID, 9)]),
        10,
        True,
        [
            env(41, 10, True),
            f"02000000 0100000000000000 0200000000000000 01000000 {OID_HEX} 0900000000000000",
        ],
    ),
    (Invalidate(OID, 5), 11, False, [env(42, 11), f"{OID_HEX} 0500000000000000"]),
    (
        Create(b"\x11" * 16, 65536, 1, 3, b"xyz", OID),
        12,
        False,
        [
            env(43, 12),
            "10000000" + "11" * 16 + f" 0000010000000000 0100 0300 00000000 {OID_HEX}",
            "78797a",
        ],
    ),
    (
        Created(OID, 1, 4096),
        12,
        True,
        [env(44, 12, True), f"{OID_HEX} 0100000000000000 0010000000000000"],
    ),
    (
        DirOp(b"\xaa\xbb", 1, OID, "x", 1, OID),
        13,
        False,
        # txn_id, action BIND, directory, name "x", kind, target, other, text "", replace
        [env(50, 13), f"02000000 aabb 01 {OID_HEX} 0100 78 01 {OID_HEX} {ZERO_HEX} 0000 00"],
    ),
    (
        DirOp(b"\xaa\xbb", 5, OID, "a", 1, ZERO_ID, OID, "b", True),
        14,
        False,
        # a RENAME of "a" to "b" in directory `other`, replacing an object binding
        [env(50, 14), f"02000000 aabb 05 {OID_HEX} 0100 61 01 {ZERO_HEX} {OID_HEX} 0100 62 01"],
    ),
    (
        DirResult(OID, 2, "", [ObjectVersion(OID, 3)]),
        13,
        True,
        # target, kind, text "", versions
        [env(51, 13, True), f"{OID_HEX} 02 0000 01000000 {OID_HEX} 0300000000000000"],
    ),
    (
        FetchMany([OID], True, "a"),
        15,
        False,
        # object_ids, register_copy, requester
        [env(32, 15), f"01000000 {OID_HEX} 01 0100 61"],
    ),
    (
        ObjectBatch([ObjectImage(OID, 2, b"\x01", b"ab", b"")], [OID]),
        15,
        True,
        [
            env(33, 15, True),
            # images: object_id, version, header (bytes), data -> payload 0, fot -> payload 1
            f"01000000 {OID_HEX} 0200000000000000 01000000 01 00000000 01000000"
            f" 01000000 {OID_HEX}",  # missing
            "6162",
            "",
        ],
    ),
    (
        GraphExpand(b"\x01", [WalkStart(OID, 0)], 0xFFFFFFFF, 0, False, OID, [b"\xca"]),
        16,
        False,
        # walk_id, starts (object_id, depth), max_depth (none), budget (none), summary,
        # accessor, capabilities (one chain of one byte)
        [
            env(60, 16),
            f"01000000 01 01000000 {OID_HEX} 00000000 ffffffff 0000000000000000 00"
            f" {OID_HEX} 01000000 01000000 ca",
        ],
    ),
    (
        GraphPart(
            [GraphObject(OID, "n1", 8192, 16, 1, 2, 0, 0, ["n2"])],
            [GraphEdge(OID, OID, 1, 5)],
            [WalkStart(OID, 1)],
            False,
            [],
            1,
            156,
            [WalkStart(OID, 2)],
        ),
        16,
        True,
        [
            env(61, 16, True),
            # objects: object_id, home, max_size, data_len, fot_count, version, flags,
            # depth, copies, directory
            f"01000000 {OID_HEX} 0200 6e31 0020000000000000 1000000000000000 01000000"
            " 0200000000000000 0000 00000000 01000000 0200 6e32 00"
            # edges: source, target, fot_index, flags, name, error
            f" 01000000 {OID_HEX} {OID_HEX} 01000000 05 0000 0000"
            # frontier, truncated, more, counted, counted_bytes, hidden
            f" 01000000 {OID_HEX} 01000000 00 00000000 01000000 9c00000000000000"
            f" 01000000 {OID_HEX} 02000000",
        ],
    ),
    (EdgeUses([OID]), 17, False, [env(62, 17), f"01000000 {OID_HEX}"]),
    (
        EdgeCounts([EdgeUse(OID, OID, 3)]),
        17,
        True,
        [env(63, 17, True), f"01000000 {OID_HEX} {OID_HEX} 0300000000000000"],
    ),
    (
        Migrate(b"\xaa", [OID], "n2"),
        18,
        False,
        # txn_id, object_ids, to_node
        [env(70, 18), f"01000000 aa 01000000 {OID_HEX} 0200 6e32"],
    ),
    (
        Migrated([ObjectVersion(OID, 2)], 2),
        18,
        True,
        [env(71, 18, True), f"01000000 {OID_HEX} 0200000000000000 0200000000000000"],
    ),
    (
        MigrateIn(
            b"\xaa",
            2,
            [ObjectImage(OID, 1, b"\x01")],
            ["n3"],
            [AppliedTxn(b"\xbb", [5], [ObjectVersion(OID, 1)])],
        ),
        19,
        False,
        [
            env(72, 19),
            # txn_id, epoch, images (data -> payload 0, fot -> payload 1), holders
            f"01000000 aa 0200000000000000 01000000 {OID_HEX} 0100000000000000 01000000 01"
            " 00000000 01000000 01000000 0200 6e33"
            # applied: txn_id, results, versions
            f" 01000000 01000000 bb 01000000 0500000000000000 01000000 {OID_HEX}"
            " 0100000000000000",
            "",
            "",
        ],
    ),
    (
        RunCode(OID, OID, b"[]", 1000, OID, [b"\xcc"]),
        20,
        False,
        # code_id, root, args (JSON), timeout_ms, caller, capabilities (encoded chains)
        [env(80, 20), f"{OID_HEX} {OID_HEX} 02000000 5b5d e8030000 {OID_HEX} 01000000 01000000 cc"],
    ),
    (
        CodeResult(b"6", b"{}", 5),
        20,
        True,
        # result (JSON), stats (JSON), elapsed_us
        [env(81, 20, True), "01000000 36 02000000 7b7d 0500000000000000"],
    ),
]


def frames_of(row: list[str]) -> list[bytes]:
    return [bytes.fromhex(f) for f in row]


def table_id(row: tuple[Message, int, bool, list[str]]) -> str:
    return type(row[0]).__name__


def decode_or_reject(frames: typing.Sequence[bytes | memoryview]) -> Any:
    """``decode``'s only two allowed outcomes: a message, or ProtocolError (-> None)."""
    try:
        return decode(frames)
    except ProtocolError:
        return None


# -- (a) the table ----------------------------------------------------------------------


def test_table_has_a_row_for_every_registered_op() -> None:
    assert {type(m).OP for m, *_ in TABLE} == set(Message.REGISTRY)


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_encode_gives_the_frames_of_the_spec(row: tuple[Message, int, bool, list[str]]) -> None:
    message, request_id, reply, hex_frames = row
    assert [bytes(f) for f in encode(message, request_id, reply=reply)] == frames_of(hex_frames)


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_decode_of_the_spec_frames_gives_the_message(
    row: tuple[Message, int, bool, list[str]],
) -> None:
    message, request_id, reply, hex_frames = row
    assert decode(frames_of(hex_frames)) == (message, request_id, reply)
    # memoryviews (what the endpoint hands over) decode the same way
    assert decode([memoryview(f) for f in frames_of(hex_frames)]) == (message, request_id, reply)


def test_payloads_are_not_copied() -> None:
    big = bytes(range(256)) * 64
    frames = encode(ObjectData(OID, 1, 65536, 4096, 65536, 4096, b"", big, b""))
    assert frames[2] is big
    view = [memoryview(bytes(f)) for f in frames]
    decoded, _, _ = decode(view)
    assert isinstance(decoded, ObjectData) and decoded.data is view[2]


def test_protocol_doc_describes_every_op() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text("utf-8")
    for op, cls in Message.REGISTRY.items():
        assert f"### {op} `{cls.__name__}`" in doc, f"docs/PROTOCOL.md lacks {cls.__name__}"


def test_worked_example_in_the_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "PROTOCOL.md").read_text("utf-8")
    oid = ObjectId.parse("3f2a9c0e51d84b7a96e0c4d2a1b8f705")
    frames = encode(Fetch(oid, 0x1000, 0x100000, True, True, "node-b"), 7)
    assert all(f"'{bytes(f).hex()}'" in doc for f in frames)


# -- (b) round trips built from the annotations ------------------------------------------


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    """Values for any wire field type, read off its annotation as the codec reads it."""
    if get_origin(tp) is Annotated:
        marker = get_args(tp)[1]
        if marker is Payload:
            return st.binary(max_size=256)
        size = marker.struct.size  # an integer field: U8 .. U64
        return st.integers(0, (1 << (8 * size)) - 1)
    if tp is bool:
        return st.booleans()
    if tp is ObjectId:
        return st.binary(min_size=16, max_size=16).map(ObjectId)
    if tp is str:
        return st.text(max_size=40)
    if tp is bytes:
        return st.binary(max_size=64)
    if get_origin(tp) is list:
        return st.lists(_strategy(get_args(tp)[0]), max_size=4)
    if isinstance(tp, type) and issubclass(tp, Struct | Message):
        return _record(tp)
    raise AssertionError(f"no strategy for wire type {tp!r}")  # a new field kind: add one


def _record(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: _strategy(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


MESSAGE_TYPES = sorted(Message.REGISTRY.values(), key=lambda c: c.OP)
ANY_MESSAGE = st.one_of([_record(cls) for cls in MESSAGE_TYPES])
REQUEST_IDS = st.integers(0, (1 << 64) - 1)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@given(data=st.data(), request_id=REQUEST_IDS, reply=st.booleans())
def test_round_trip(cls: type[Message], data: st.DataObject, request_id: int, reply: bool) -> None:
    message = data.draw(_record(cls))
    frames = encode(message, request_id, reply=reply)
    assert decode(frames) == (message, request_id, reply)
    assert decode([memoryview(bytes(f)) for f in frames]) == (message, request_id, reply)
    assert decode_envelope(frames[0]) == (cls.OP, request_id, reply)


def test_values_that_do_not_fit_their_field_are_refused_when_encoding() -> None:
    for message in (
        Ack(-1),
        Ack(1 << 32),
        Invalidate(OID, 1 << 64),
        Locate(b"\x00" * 15),  # type: ignore[arg-type]
        Ping("x" * 65536),
        Ping("é" * 32768),  # 65536 UTF-8 bytes
        Ping("\udcff"),  # a lone surrogate (os.fsdecode of a bad file name) is not UTF-8
    ):
        with pytest.raises(ProtocolError):
            encode(message)
    assert decode(encode(Ping("é" * 32767)))[0] == Ping("é" * 32767)  # 65534 bytes: fits


# -- (c) fuzzing ---------------------------------------------------------------------------

# a valid envelope for a known op, so that random bytes reach the body decoder
_KNOWN_ENVELOPES = st.builds(
    lambda op, rid, reply: bytes.fromhex(env(op, rid, reply)),
    st.sampled_from(sorted(Message.REGISTRY)),
    REQUEST_IDS,
    st.booleans(),
)


def _check_canonical(frames: list[bytes], result: Any) -> None:
    """A message that decodes encodes back to a message equal to it."""
    if result is None:
        return
    message, request_id, reply = result
    again = encode(message, request_id, reply=reply)
    assert decode(again) == result
    has_payload = len(frames) > 2
    if not has_payload:  # without payload frames, exactly one encoding per message
        assert [bytes(f) for f in again] == [bytes(f) for f in frames]


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    _check_canonical(frames, decode_or_reject(frames))


@settings(max_examples=1000)
@given(_KNOWN_ENVELOPES, st.binary(max_size=200), st.lists(st.binary(max_size=8), max_size=3))
def test_fuzz_random_bodies_behind_a_valid_envelope(
    envelope: bytes, body: bytes, payloads: list[bytes]
) -> None:
    frames = [envelope, body, *payloads]
    _check_canonical(frames, decode_or_reject(frames))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_MESSAGE, REQUEST_IDS, st.data())
def test_fuzz_mutations_of_valid_messages(message: Message, rid: int, data: st.DataObject) -> None:
    frames = [bytes(f) for f in encode(message, rid)]
    which = data.draw(st.integers(0, 1), label="frame")
    target = bytearray(frames[which])
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "frames"]))
    if mutation == "flip" and target:
        for _ in range(data.draw(st.integers(1, 4))):
            bit = data.draw(st.integers(0, 8 * len(target) - 1))
            target[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "truncate":
        del target[data.draw(st.integers(0, len(target))) :]
    elif mutation == "insert":
        at = data.draw(st.integers(0, len(target)))
        target[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    frames[which] = bytes(target)
    if mutation == "frames":
        frames = data.draw(st.permutations(frames))
        frames = frames[: data.draw(st.integers(0, len(frames)))]
        frames += data.draw(st.lists(st.binary(max_size=4), max_size=2))
    _check_canonical(frames, decode_or_reject(frames))


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_every_truncation_of_envelope_or_body_is_rejected(
    row: tuple[Message, int, bool, list[str]],
) -> None:
    frames = frames_of(row[3])
    for which in (0, 1):
        for cut in range(len(frames[which])):
            broken = list(frames)
            broken[which] = frames[which][:cut]
            with pytest.raises(ProtocolError):
                decode(broken)
    for count in range(len(frames)):  # and every frame missing from the end
        with pytest.raises(ProtocolError):
            decode(frames[:count])


@pytest.mark.parametrize("row", TABLE, ids=table_id)
def test_every_single_bit_flip_decodes_or_is_rejected(
    row: tuple[Message, int, bool, list[str]],
) -> None:
    frames = frames_of(row[3])
    for which in (0, 1):
        for bit in range(8 * len(frames[which])):
            flipped = bytearray(frames[which])
            flipped[bit // 8] ^= 1 << (bit % 8)
            broken = list(frames)
            broken[which] = bytes(flipped)
            _check_canonical(broken, decode_or_reject(broken))


def _peak_bytes(frames: list[bytes]) -> int:
    tracemalloc.start()
    try:
        assert decode_or_reject(frames) is None
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "frames",
    [
        # bytes field claiming 4 GiB, string claiming 64 KiB, list claiming 2^32 - 1 items
        [bytes.fromhex(env(40, 1)), b"\xff\xff\xff\xff"],
        [bytes.fromhex(env(3, 1)), b"\xff\xff" + b"x" * 100],
        [bytes.fromhex(env(12, 1)), b"\xff\xff\xff\xff" + bytes(100)],
        [bytes.fromhex(env(22, 1)), (MAX_LIST + 1).to_bytes(4, "little") + bytes(100)],
        # a payload index 2^32 - 1
        [bytes.fromhex(env(43, 1)), bytes(4) + bytes(12) + b"\xff\xff\xff\xff", b"x"],
    ],
    ids=["bytes", "str", "list", "over-MAX_LIST", "payload-index"],
)
def test_length_claims_are_checked_before_allocating(frames: list[bytes]) -> None:
    assert _peak_bytes(frames) < 64 * 1024


def test_worst_case_list_allocation_is_proportional_to_the_body() -> None:
    # Members: the count claims one item per remaining byte; all-zero items are valid
    # (23 bytes each), so the decoder builds items until it runs out of body.
    body_size = 256 * 1024
    frames = [bytes.fromhex(env(12, 1)), body_size.to_bytes(4, "little") + bytes(body_size)]
    assert _peak_bytes(frames) < 32 * body_size


# -- (d) specific rejections -------------------------------------------------------------

PING = [bytes.fromhex(env(3, 1)), bytes.fromhex("0200 6e31")]
OBJECT_DATA_HEAD = OID_HEX + "0000000000000000" * 5 + "00000000"  # ..., header b""


def _object_data(data_index: int, fot_index: int, *payloads: bytes) -> list[bytes]:
    indexes = data_index.to_bytes(4, "little") + fot_index.to_bytes(4, "little")
    return [bytes.fromhex(env(31, 1)), bytes.fromhex(OBJECT_DATA_HEAD) + indexes, *payloads]


@pytest.mark.parametrize(
    ("frames", "why"),
    [
        ([b"XZ" + PING[0][2:], PING[1]], "magic"),
        ([PING[0][:2] + b"\x02" + PING[0][3:], PING[1]], "version"),
        ([PING[0][:2] + b"\x00" + PING[0][3:], PING[1]], "version"),
        ([bytes.fromhex(env(99, 1)), b""], "op"),
        ([bytes.fromhex(env(0, 1)), b""], "op"),
        ([PING[0][:4] + b"\x02\x00" + PING[0][6:], PING[1]], "flags"),  # unknown flag bit
        ([PING[0][:6] + b"\x01\x00" + PING[0][8:], PING[1]], "flags"),  # reserved u16 not 0
        ([PING[0] + b"\x00", PING[1]], "envelope"),  # 17-byte envelope
        ([PING[0][:15], PING[1]], "envelope"),
        ([PING[0]], "frames"),
        ([], "frames"),
        ([PING[0], PING[1] + b"\x00"], "trailing"),
        ([bytes.fromhex(env(2, 1)), bytes(5)], "trailing"),
        ([PING[0], b"\x03\x00ab"], "short"),
        ([bytes.fromhex(env(21, 1)), b"\x02" + bytes(48)], "bool"),
        ([bytes.fromhex(env(30, 1)), bytes(32) + b"\x00\x02" + bytes(2)], "bool"),
        ([PING[0], b"\x02\x00\xc3\x28"], "UTF-8"),  # invalid continuation byte
        ([PING[0], b"\x03\x00\xed\xa0\x80"], "UTF-8"),  # an encoded surrogate
        ([PING[0], b"\x01\x00\xff"], "UTF-8"),
        ([bytes.fromhex(env(12, 1)), b"\x02\x00\x00\x00" + bytes(1)], "list"),  # 2 > 1 left
        ([bytes.fromhex(env(41, 1)), b"\x05\x00\x00\x00" + bytes(4)], "list"),
        (_object_data(0, 1), "missing"),
        (_object_data(0, 0, b"a", b"b"), "used twice"),
        (_object_data(0, 1, b"a", b"b", b"c"), "no field refers"),
        ([PING[0], PING[1], b""], "no field refers"),  # Ping has no payload at all
    ],
)
def test_malformed_frames_are_rejected(frames: list[bytes], why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert why.lower() in str(info.value).lower()


def test_reply_flag_is_reported_not_guessed() -> None:
    """The codec does not know which ops are requests: it reports the flag, and the
    endpoint refuses a request that carries it (tests/node/test_peer.py)."""
    fetch, _, _, hex_frames = next(row for row in TABLE if isinstance(row[0], Fetch))
    frames = [bytes.fromhex(env(30, 5, reply=True)), *frames_of(hex_frames)[1:]]
    assert decode(frames) == (fetch, 5, True)
    assert decode_envelope(frames[0]) == (30, 5, True)


def test_payload_indexes_may_come_in_any_order() -> None:
    body = bytes.fromhex(OBJECT_DATA_HEAD + "01000000 00000000")  # data -> 1, fot -> 0
    message, _, _ = decode([bytes.fromhex(env(31, 1)), body, b"fot", b"data"])
    assert isinstance(message, ObjectData) and (message.data, message.fot) == (b"data", b"fot")


# -- (e) errors across the wire ------------------------------------------------------------


def _is_error_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, DtwzError)


DTWZ_ERRORS = sorted(
    (v for v in vars(errors).values() if _is_error_class(v)), key=lambda c: c.__name__
)


def _over_the_wire(reply: ErrorReply) -> ErrorReply:
    decoded, _, is_reply = decode(encode(reply, 7, reply=True))
    assert isinstance(decoded, ErrorReply) and is_reply
    return decoded


@pytest.mark.parametrize("cls", DTWZ_ERRORS, ids=lambda c: c.__name__)
def test_error_keeps_its_type_and_message(cls: type[DtwzError]) -> None:
    reply = _over_the_wire(error_reply(cls("object 00ff is gone")))
    assert reply == ErrorReply(cls.__name__, "object 00ff is gone")
    with pytest.raises(cls) as info:
        raise_error(reply)
    assert type(info.value) is cls and str(info.value) == "object 00ff is gone"


def test_other_exceptions_cross_as_dtwz_error() -> None:
    assert error_reply(ValueError("bad")) == ErrorReply("DtwzError", "bad")
    assert error_reply(KeyError()) == ErrorReply("DtwzError", "DtwzError")  # empty str(exc)
    assert error_reply(errors.NullPointer()) == ErrorReply("NullPointer", "NullPointer")


NOT_ERROR_CLASSES = sorted(
    name for name in dir(errors) if not _is_error_class(getattr(errors, name))
)


@pytest.mark.parametrize(
    "kind",
    [
        "NoSuchError",
        "",
        "ValueError",
        "Exception",
        "KeyboardInterrupt",
        "SystemExit",
        "dtwz.errors.ObjectNotFound",
        *NOT_ERROR_CLASSES,  # __class__, __builtins__, annotations, ...
    ],
)
def test_unknown_kind_becomes_dtwz_error(kind: str) -> None:
    with pytest.raises(DtwzError) as info:
        raise_error(_over_the_wire(ErrorReply(kind, "boom")))
    assert type(info.value) is DtwzError and str(info.value) == "boom"


@given(st.text(max_size=30), st.text(max_size=30))
@example("ObjectNotFound", "x")
def test_raise_error_raises_only_dtwz_errors(kind: str, message: str) -> None:
    with pytest.raises(DtwzError):
        raise_error(ErrorReply(kind, message))


@pytest.mark.parametrize(
    "text", ["x" * 100_000, "é" * 40_000, "bad file name \udcff", "\ud800" * 70_000]
)
def test_any_error_message_can_be_sent(text: str) -> None:
    """A reply that cannot be encoded never arrives; the caller would only see a timeout."""
    reply = _over_the_wire(error_reply(errors.StoreError(text)))
    assert reply.kind == "StoreError"
    assert reply.message[:10] == text[:10].encode("utf-8", "replace").decode("utf-8")
