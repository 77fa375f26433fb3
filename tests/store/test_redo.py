"""Redo records: round trips, the torn-tail rule and fuzzed bad bytes."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz.errors import FormatError
from dtwz.format.ids import ObjectId
from dtwz.store.redo import (
    OP_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    CreateOp,
    DeleteOp,
    OpKind,
    RedoOp,
    WriteOp,
    decode_log,
    decode_record,
    encode_log,
    encode_record,
)

ids = st.binary(min_size=16, max_size=16).map(ObjectId)
ops = st.one_of(
    st.builds(CreateOp, ids, st.integers(12, 30)),
    st.builds(WriteOp, ids, st.integers(0, (1 << 64) - 1), st.binary(max_size=64)),
    st.builds(DeleteOp, ids),
)
records = st.lists(ops, max_size=6)
logs = st.lists(records, max_size=5)
salts = st.integers(0, (1 << 64) - 1)


def reseal(record: bytearray) -> bytes:
    """Recompute the CRC, to reach the checks that sit behind it."""
    struct.pack_into("<I", record, 8, zlib.crc32(record[12:]))
    return bytes(record)


def test_record_layout() -> None:
    oid = ObjectId(bytes(range(16)))
    ops = [WriteOp(oid, 0x1000, b"abc"), CreateOp(oid, 20), DeleteOp(oid)]
    raw = encode_record(ops, lsn=4096, salt=0x1122334455667788)
    magic, total, crc, count, lsn, salt = struct.unpack_from("<4sIIIQQ", raw)
    assert (magic, total, count) == (RECORD_MAGIC, len(raw), 3)
    assert (lsn, salt) == (4096, 0x1122334455667788)
    assert crc == zlib.crc32(raw[12:])
    assert RECORD_HEADER_SIZE == 32 and OP_HEADER_SIZE == 32
    op1 = struct.unpack_from("<BBHI16sQ", raw, 32)
    assert op1 == (OpKind.WRITE, 0, 0, 3, bytes(oid), 0x1000)
    assert raw[64:67] == b"abc"
    assert struct.unpack_from("<BBHI16sQ", raw, 67) == (OpKind.CREATE, 20, 0, 0, bytes(oid), 0)
    assert struct.unpack_from("<BBHI16sQ", raw, 99) == (OpKind.DELETE, 0, 0, 0, bytes(oid), 0)
    assert len(raw) == 131


@given(records, salts)
def test_record_round_trip(record: list[RedoOp], salt: int) -> None:
    raw = encode_record(record, salt=salt)
    decoded, end = decode_record(raw, salt=salt)
    assert decoded == record
    assert end == len(raw)
    # at its own place inside a bigger buffer too
    raw = encode_record(record, lsn=3, salt=salt)
    decoded, end = decode_record(b"xyz" + raw + b"tail", 3, salt=salt)
    assert (decoded, end) == (record, 3 + len(raw))


@given(records, salts, st.integers(0, 1000))
def test_a_record_is_only_valid_where_it_was_written(
    record: list[RedoOp], salt: int, lsn: int
) -> None:
    raw = encode_record(record, lsn=lsn, salt=salt)
    assert decode_record(bytes(lsn) + raw, lsn, salt=salt)[0] == record
    with pytest.raises(FormatError, match="place"):
        decode_record(bytes(lsn + 8) + raw, lsn + 8, salt=salt)
    with pytest.raises(FormatError, match="place"):
        decode_record(bytes(lsn) + raw, lsn, salt=salt ^ 1)


def test_a_record_inside_write_data_is_not_a_record() -> None:
    # a value that happens to be a whole record, stored as data, stays data
    oid = ObjectId(b"\x01" * 16)
    inner = encode_record([DeleteOp(oid)], lsn=0)
    outer = encode_log([[WriteOp(oid, 0x1000, inner)]])
    records, end = decode_log(outer)
    assert records == [[WriteOp(oid, 0x1000, inner)]]
    assert end == len(outer)
    # and a stale record copied past the end of a log does not extend it
    assert decode_log(outer + inner) == (records, len(outer))


def test_empty_record_is_valid() -> None:
    raw = encode_record([])
    assert len(raw) == RECORD_HEADER_SIZE
    assert decode_record(raw) == ([], RECORD_HEADER_SIZE)


def encoded_records(log: list[list[RedoOp]], salt: int = 0) -> list[bytes]:
    out: list[bytes] = []
    at = 0
    for ops in log:
        out.append(encode_record(ops, lsn=at, salt=salt))
        at += len(out[-1])
    return out


@given(logs, salts)
def test_log_round_trip(log: list[list[RedoOp]], salt: int) -> None:
    raw = encode_log(log, salt=salt)
    assert raw == b"".join(encoded_records(log, salt))
    assert decode_log(raw, salt=salt) == (log, len(raw))
    assert decode_log(memoryview(raw), salt=salt) == (log, len(raw))
    if log:
        assert decode_log(raw, salt=salt ^ 1) == ([], 0)  # another store's log


@settings(deadline=None)
@given(logs.filter(bool))
def test_log_truncated_anywhere_keeps_exactly_the_whole_records(log: list[list[RedoOp]]) -> None:
    encoded = encoded_records(log)
    raw = b"".join(encoded)
    ends = []
    at = 0
    for part in encoded:
        at += len(part)
        ends.append(at)
    for cut in range(len(raw) + 1):
        whole = sum(1 for end in ends if end <= cut)
        records, pos = decode_log(raw[:cut])
        assert records == log[:whole]
        assert pos == (ends[whole - 1] if whole else 0)


@given(logs, st.binary(min_size=1, max_size=64))
def test_garbage_tail_is_ignored(log: list[list[RedoOp]], garbage: bytes) -> None:
    raw = encode_log(log)
    records, pos = decode_log(raw + garbage)
    # garbage can only add records if it happens to be a whole valid record itself
    assert records[: len(log)] == log
    assert pos >= len(raw)
    if len(garbage) < RECORD_HEADER_SIZE or not garbage.startswith(RECORD_MAGIC):
        assert (records, pos) == (log, len(raw))


@given(logs.filter(lambda log: any(log)), st.data())
def test_a_corrupted_record_ends_the_log_there(
    log: list[list[RedoOp]], data: st.DataObject
) -> None:
    encoded = encoded_records(log)
    victim = data.draw(st.integers(0, len(log) - 1))
    start = sum(len(p) for p in encoded[:victim])
    # any single changed byte of a record is caught (magic, length or CRC-32)
    at = start + data.draw(st.integers(0, len(encoded[victim]) - 1))
    raw = bytearray(b"".join(encoded))
    raw[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FormatError):
        decode_record(bytes(raw), start)
    # an intact record after it is not reached: recovery stops at the first bad one
    records, pos = decode_log(bytes(raw))
    assert records == log[:victim]
    assert pos == start


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_format_error(raw: bytes) -> None:
    try:
        decoded, end = decode_record(raw)
    except FormatError:
        pass
    else:
        assert encode_record(decoded) == raw[:end]
    records, pos = decode_log(raw)
    assert 0 <= pos <= len(raw)
    assert encode_log(records) == raw[:pos]


@given(logs, st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1))
def test_mutated_logs_decode_to_a_consistent_prefix(
    log: list[list[RedoOp]], changes: list[tuple[int, int]]
) -> None:
    raw = bytearray(encode_log(log))
    for at, value in changes:
        if at < len(raw):
            raw[at] = value
    try:
        decoded, end = decode_record(bytes(raw))
    except FormatError:
        pass
    else:
        assert encode_record(decoded) == bytes(raw[:end])
    records, pos = decode_log(bytes(raw))
    assert encode_log(records) == bytes(raw[:pos])


@given(records, st.lists(st.tuples(st.integers(12, 400), st.integers(0, 255)), min_size=1))
def test_resealed_mutations_are_rejected_or_canonical(
    record: list[RedoOp], changes: list[tuple[int, int]]
) -> None:
    # with the CRC recomputed, only the structural checks stand between bad bytes and replay
    raw = bytearray(encode_record(record))
    for at, value in changes:
        if at < len(raw):
            raw[at] = value
    sealed = reseal(raw)
    try:
        decoded, end = decode_record(sealed)
    except FormatError:
        return
    assert end == len(sealed)
    assert encode_record(decoded) == sealed


def _op(kind: int, log2: int = 0, zero: int = 0, length: int = 0, offset: int = 0) -> bytes:
    return struct.pack("<BBHI16sQ", kind, log2, zero, length, bytes(16), offset)


def _record(body_ops: bytes, count: int, lsn: int = 0, salt: int = 0) -> bytes:
    body = struct.pack("<IQQ", count, lsn, salt) + body_ops
    return struct.pack("<4sII", RECORD_MAGIC, 12 + len(body), zlib.crc32(body)) + body


def _bare(magic: bytes, total: int, crc: int) -> bytes:
    return magic + struct.pack("<II", total, crc) + bytes(20)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "short"),
        (b"DTXR" + bytes(8), "short"),
        (_record(b"", 0)[:31], "short"),
        (_bare(b"XTXR", 32, zlib.crc32(bytes(20))), "magic"),
        (_bare(b"DTXR", 31, 0), "length"),
        (_bare(b"DTXR", 33, 0), "length"),
        (_bare(b"DTXR", 32, 1), "checksum"),
        (_record(b"", 0, lsn=32), "place"),
        (_record(b"", 0, salt=1), "place"),
        (_record(b"", 1), "op header"),
        (_record(_op(OpKind.WRITE, length=4) + b"ab", 1), "write data"),
        (_record(_op(OpKind.CREATE, log2=11), 1), "bad op"),
        (_record(_op(OpKind.CREATE, log2=31), 1), "bad op"),
        (_record(_op(OpKind.CREATE, log2=20, length=1) + b"x", 1), "bad op"),
        (_record(_op(OpKind.CREATE, log2=20, offset=8), 1), "bad op"),
        (_record(_op(OpKind.DELETE, offset=8), 1), "bad op"),
        (_record(_op(OpKind.DELETE, log2=12), 1), "bad op"),
        (_record(_op(OpKind.WRITE, log2=12), 1), "bad op"),
        (_record(_op(0), 1), "bad op"),
        (_record(_op(4), 1), "bad op"),
        (_record(_op(OpKind.WRITE, zero=1), 1), "reserved"),
        (_record(_op(OpKind.DELETE) + b"x", 1), "trailing"),
        (_record(_op(OpKind.DELETE), 0), "trailing"),
        (_record(_op(OpKind.DELETE), 2), "op header"),
        (_record(_op(OpKind.DELETE), 0xFFFFFFFF), "op header"),
    ],
)
def test_malformed_records(raw: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        decode_record(raw)
    assert decode_log(raw) == ([], 0)


def test_decode_record_past_the_end() -> None:
    raw = encode_record([DeleteOp(ObjectId(bytes(16)))])
    with pytest.raises(FormatError):
        decode_record(raw, len(raw))
    with pytest.raises(FormatError):
        decode_record(raw, len(raw) + 100)


def test_replay_order_is_log_order() -> None:
    oid = ObjectId(b"\x07" * 16)
    first = [CreateOp(oid, 12), WriteOp(oid, 0x1000, b"a")]
    second = [WriteOp(oid, 0x1000, b"b"), DeleteOp(oid)]
    records, _ = decode_log(encode_log([first, second]))
    assert records == [first, second]
