"""Redo records: the byte format of the store's write-ahead log. Pure, no I/O.

A transaction commits as one record; the record is durable before any of its
writes reach an object, so recovery can always redo it (and redoing twice is
harmless: every operation is idempotent when replayed in log order)::

    record  = magic "DTXR" | total_len u32 | crc32 u32 | op_count u32 | lsn u64 | salt u64
              | op*
    op      = kind u8 | size_log2 u8 | zero u16 | length u32 | object_id[16] | offset u64
              | data[length]            (data only for WRITE)

All integers are little-endian; ``crc32`` covers everything after it. ``lsn`` is
the record's own offset in the log and ``salt`` a random number of the store, so
stale bytes past the log's end (a torn or abandoned append), or a record-shaped
value inside some write's data, can never pass for a record where it lies. A
reader stops at the first record that is short, misplaced, or has a bad magic,
length or checksum: that is the torn tail of a crash and was never acknowledged.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from dtwz.errors import FormatError
from dtwz.format.ids import ObjectId

RECORD_MAGIC = b"DTXR"
_RECORD = struct.Struct("<4sIIIQQ")
_CRC_FROM = 12  # the checksum covers the record from op_count on
_OP = struct.Struct("<BBHI16sQ")
RECORD_HEADER_SIZE = _RECORD.size
OP_HEADER_SIZE = _OP.size
MAX_RECORD_SIZE = 1 << 31


class OpKind(IntEnum):
    CREATE = 1
    WRITE = 2
    DELETE = 3


@dataclass(frozen=True, slots=True)
class CreateOp:
    """Create the object's file (sparse, ``1 << size_log2`` bytes) unless it exists."""

    object_id: ObjectId
    size_log2: int


@dataclass(frozen=True, slots=True)
class WriteOp:
    object_id: ObjectId
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeleteOp:
    object_id: ObjectId


RedoOp = CreateOp | WriteOp | DeleteOp


def encode_log(records: Iterable[Iterable[RedoOp]], *, salt: int = 0) -> bytes:
    """Records laid end to end from offset 0, as a store writes them (tests, tools)."""
    out = bytearray()
    for ops in records:
        out += encode_record(ops, lsn=len(out), salt=salt)
    return bytes(out)


def encode_record(ops: Iterable[RedoOp], *, lsn: int = 0, salt: int = 0) -> bytes:
    """One record, to be written at log offset ``lsn`` of a log with this ``salt``."""
    parts: list[bytes] = []
    count = 0
    for op in ops:
        count += 1
        if isinstance(op, WriteOp):
            parts.append(_OP.pack(OpKind.WRITE, 0, 0, len(op.data), op.object_id, op.offset))
            parts.append(op.data)
        elif isinstance(op, CreateOp):
            parts.append(_OP.pack(OpKind.CREATE, op.size_log2, 0, 0, op.object_id, 0))
        else:
            parts.append(_OP.pack(OpKind.DELETE, 0, 0, 0, op.object_id, 0))
    body = struct.pack("<IQQ", count, lsn, salt) + b"".join(parts)
    total = _CRC_FROM + len(body)
    if total > MAX_RECORD_SIZE:
        raise FormatError(f"transaction of {total} bytes exceeds the {MAX_RECORD_SIZE} limit")
    return struct.pack("<4sII", RECORD_MAGIC, total, zlib.crc32(body)) + body


def decode_record(
    buf: bytes | memoryview, pos: int = 0, *, salt: int = 0
) -> tuple[list[RedoOp], int]:
    """Decode the record at ``pos`` of a log; return its ops and the offset after it.

    Raises ``FormatError`` for anything that is not a whole, intact record written
    at exactly this position of a log with this ``salt``.
    """
    view = memoryview(buf)
    if len(view) - pos < RECORD_HEADER_SIZE:
        raise FormatError("short record header")
    magic, total, crc, count, lsn, record_salt = _RECORD.unpack_from(view, pos)
    if magic != RECORD_MAGIC:
        raise FormatError("bad record magic")
    if total < RECORD_HEADER_SIZE or pos + total > len(view):
        raise FormatError("record length runs past the end of the log")
    end = pos + total
    if zlib.crc32(view[pos + _CRC_FROM : end]) != crc:
        raise FormatError("record checksum mismatch")
    if lsn != pos or record_salt != salt:
        raise FormatError("record does not belong at this place of this log")
    ops: list[RedoOp] = []
    at = pos + RECORD_HEADER_SIZE
    for _ in range(count):
        if end - at < OP_HEADER_SIZE:
            raise FormatError("op header runs past the record")
        kind, log2, zero, length, oid, offset = _OP.unpack_from(view, at)
        at += OP_HEADER_SIZE
        if zero:
            raise FormatError("non-zero reserved op bytes")
        if kind == OpKind.WRITE and not log2:
            if at + length > end:
                raise FormatError("write data runs past the record")
            ops.append(WriteOp(ObjectId(oid), offset, bytes(view[at : at + length])))
            at += length
        elif kind == OpKind.CREATE and 12 <= log2 <= 30 and not length and not offset:
            ops.append(CreateOp(ObjectId(oid), log2))
        elif kind == OpKind.DELETE and not (log2 or length or offset):
            ops.append(DeleteOp(ObjectId(oid)))
        else:
            raise FormatError(f"bad op (kind {kind})")
    if at != end:
        raise FormatError("record has trailing bytes")
    return ops, end


def decode_log(buf: bytes | memoryview, *, salt: int = 0) -> tuple[list[list[RedoOp]], int]:
    """All intact records from the start of a log, and where the intact prefix ends."""
    records: list[list[RedoOp]] = []
    pos = 0
    while pos < len(buf):
        try:
            ops, pos_after = decode_record(buf, pos, salt=salt)
        except FormatError:
            break
        records.append(ops)
        pos = pos_after
    return records, pos
