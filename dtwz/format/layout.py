"""Byte layout of an object: the header page, FOT entries and size rules.

An object of ``max_size`` bytes (a power of two, 4 KiB to 1 GiB)::

    [0, 0x1000)                      header page (metadata below; rest reserved, zero)
    [0x1000, 0x1000 + data_len)      data, growing up
    [max_size - 32*fot_count, max)   the FOT, growing down; entry i at max_size - 32*i

Offset 0 lies in the header page, so no valid pointer targets it: 0 is NULL.
Everything here is pure: bytes in, frozen values out, and every decoder rejects
what it does not understand with ``FormatError``. docs/FORMAT.md is the same
layout in prose, byte for byte.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntFlag
from typing import NamedTuple

from dtwz.errors import CorruptObject, FormatError, InvalidArgument
from dtwz.format.ids import ID_BYTES, ObjectId, derive_object_id

HEADER_SIZE = 0x1000
DATA_START = HEADER_SIZE
FOT_ENTRY_SIZE = 32
MIN_OBJECT_SIZE = 1 << 12
MAX_OBJECT_SIZE = 1 << 30
MAX_FOT_ENTRIES = (1 << 16) - 1  # the index has 16 bits and index 0 means "this object"
FORMAT_VERSION = 1
OBJECT_MAGIC = b"DTWZOBJ\x01"


class ObjectFlags(IntFlag):
    NONE = 0
    IMMUTABLE = 1
    VOLATILE = 2


class Protection(IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4


class FotFlags(IntFlag):
    NONE = 0
    VALID = 1
    NAME = 2
    READ = 4
    WRITE = 8
    EXEC = 16


_KNOWN_OBJECT_FLAGS = int(ObjectFlags.IMMUTABLE | ObjectFlags.VOLATILE)
_KNOWN_PROT = int(Protection.READ | Protection.WRITE | Protection.EXEC)
# every valid flag value made once: building an IntFlag costs microseconds, and
# headers and FOT entries are decoded on every walk
_OBJECT_FLAGS = [ObjectFlags(v) for v in range(_KNOWN_OBJECT_FLAGS + 1)]
_PROTECTIONS = [Protection(v) for v in range(_KNOWN_PROT + 1)]
_KNOWN_FOT_FLAGS = int(
    FotFlags.VALID | FotFlags.NAME | FotFlags.READ | FotFlags.WRITE | FotFlags.EXEC
)
_FOT_FLAGS = [FotFlags(v) for v in range(_KNOWN_FOT_FLAGS + 1)]
_VALID, _NAME = int(FotFlags.VALID), int(FotFlags.NAME)


def size_log2(max_size: int) -> int:
    """log2 of a valid object size; InvalidArgument for anything else."""
    if (
        not isinstance(max_size, int)
        or max_size < MIN_OBJECT_SIZE
        or max_size > MAX_OBJECT_SIZE
        or max_size & (max_size - 1)
    ):
        raise InvalidArgument(
            f"object size must be a power of two from 4 KiB to 1 GiB, got {max_size!r}"
        )
    return max_size.bit_length() - 1


def fot_entry_offset(max_size: int, index: int) -> int:
    """Where FOT entry ``index`` (>= 1) lives."""
    return max_size - FOT_ENTRY_SIZE * index


# magic, format, flags, prot, size_log2, reserved, nonce, kuid, id, data_len, version,
# fot_count, reserved; the CRC32 of these 88 bytes follows at offset 88.
_HEADER = struct.Struct("<8sHHHBB16s16s16sQQII")
HEADER_CRC_OFFSET = _HEADER.size
HEADER_RECORD_SIZE = HEADER_CRC_OFFSET + 4
VERSION_OFFSET = 8 + 2 + 2 + 2 + 1 + 1 + 16 + 16 + 16 + 8
_CRC = struct.Struct("<I")
assert HEADER_CRC_OFFSET == 88 and VERSION_OFFSET == 72


class ObjectHeader(NamedTuple):
    """The metadata at the start of every object.

    ``data_len`` is the high-water mark of the data area (the allocator bumps it);
    ``version`` counts committed transactions that touched the object. A NamedTuple
    rather than a frozen dataclass because every transaction builds a few of these
    and a tuple is several times cheaper to make.
    """

    object_id: ObjectId
    nonce: bytes
    kuid: bytes
    flags: ObjectFlags
    default_prot: Protection
    size_log2: int
    data_len: int = 0
    version: int = 0
    fot_count: int = 0

    @property
    def max_size(self) -> int:
        return 1 << self.size_log2

    @property
    def data_end(self) -> int:
        return DATA_START + self.data_len

    @property
    def fot_start(self) -> int:
        return self.max_size - FOT_ENTRY_SIZE * self.fot_count

    @property
    def free_bytes(self) -> int:
        return self.fot_start - self.data_end

    @property
    def immutable(self) -> bool:
        return bool(self.flags & ObjectFlags.IMMUTABLE)

    def evolve(self, **changes: int) -> ObjectHeader:
        return self._replace(**changes)  # type: ignore[arg-type]

    def encode(self) -> bytes:
        body = _HEADER.pack(
            OBJECT_MAGIC,
            FORMAT_VERSION,
            int(self.flags),
            int(self.default_prot),
            self.size_log2,
            0,
            self.nonce,
            self.kuid,
            self.object_id,
            self.data_len,
            self.version,
            self.fot_count,
            0,
        )
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def decode(cls, raw: bytes | memoryview, *, check_id: bool = True) -> ObjectHeader:
        """Decode and check a header; ``CorruptObject`` says what is wrong."""
        if len(raw) < HEADER_RECORD_SIZE:
            raise CorruptObject(f"header is {len(raw)} bytes, needs {HEADER_RECORD_SIZE}")
        body = bytes(raw[:HEADER_CRC_OFFSET])
        (crc,) = _CRC.unpack_from(raw, HEADER_CRC_OFFSET)
        if body[:8] != OBJECT_MAGIC:
            if not any(body) and crc == 0:
                raise CorruptObject("header is empty (object never committed)")
            raise CorruptObject("bad header magic")
        if zlib.crc32(body) != crc:
            raise CorruptObject("header checksum mismatch")
        (
            _,
            fmt,
            flags,
            prot,
            log2,
            reserved,
            nonce,
            kuid,
            oid,
            data_len,
            version,
            fot_count,
            reserved2,
        ) = _HEADER.unpack(body)
        if fmt != FORMAT_VERSION:
            raise CorruptObject(f"unknown object format version {fmt}")
        if flags & ~_KNOWN_OBJECT_FLAGS or prot & ~_KNOWN_PROT or reserved or reserved2:
            raise CorruptObject("unknown header flags or non-zero reserved fields")
        if not 12 <= log2 <= 30:
            raise CorruptObject(f"object size 2**{log2} out of range")
        max_size = 1 << log2
        if fot_count > MAX_FOT_ENTRIES:
            raise CorruptObject(f"FOT count {fot_count} out of range")
        if DATA_START + data_len > max_size - FOT_ENTRY_SIZE * fot_count:
            raise CorruptObject("data area and FOT overlap")
        if check_id and derive_object_id(nonce, kuid, flags, prot) != oid:
            raise CorruptObject("object ID does not match its metadata")
        return cls(
            ObjectId(oid),
            nonce,
            kuid,
            _OBJECT_FLAGS[flags],
            _PROTECTIONS[prot],
            log2,
            data_len,
            version,
            fot_count,
        )


# target (16) | flags (4) | reserved (12); a name entry keeps its name in the object's
# data and puts (offset u64, length u32, zero u32) where an ID entry keeps the ID.
_FOT = struct.Struct("<16sI12s")
_NAME_REF = struct.Struct("<QII")
assert _FOT.size == FOT_ENTRY_SIZE


@dataclass(frozen=True, slots=True)
class FotEntry:
    """One Foreign Object Table entry: a target object ID or a name, plus flags."""

    flags: FotFlags
    target: ObjectId | None = None
    name_offset: int = 0
    name_length: int = 0

    @classmethod
    def for_id(cls, target: ObjectId, flags: FotFlags = FotFlags.READ) -> FotEntry:
        return cls(FotFlags.VALID | (flags & ~FotFlags.NAME), target)

    @classmethod
    def for_name(cls, offset: int, length: int, flags: FotFlags = FotFlags.READ) -> FotEntry:
        return cls(FotFlags.VALID | FotFlags.NAME | flags, None, offset, length)

    # plain-int tests: ``IntFlag & IntFlag`` builds a new flag object, and these run on
    # every pointer resolution
    @property
    def is_valid(self) -> bool:
        return bool(int(self.flags) & _VALID)

    @property
    def is_name(self) -> bool:
        return bool(int(self.flags) & _NAME)

    def encode(self) -> bytes:
        if self.is_name:
            head = _NAME_REF.pack(self.name_offset, self.name_length, 0)
        else:
            head = self.target if self.target is not None else bytes(ID_BYTES)
        return _FOT.pack(head, int(self.flags), bytes(12))

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> FotEntry:
        if len(raw) != FOT_ENTRY_SIZE:
            raise FormatError(f"an FOT entry is {FOT_ENTRY_SIZE} bytes, got {len(raw)}")
        head, flags, reserved = _FOT.unpack(raw)
        if flags & ~_KNOWN_FOT_FLAGS or any(reserved):
            raise FormatError("FOT entry has unknown flags or non-zero reserved bytes")
        if not flags & _VALID:
            if flags or any(head):
                raise FormatError("FOT entry is not VALID but is not empty either")
            return cls(FotFlags.NONE)
        if flags & _NAME:
            offset, length, zero = _NAME_REF.unpack(head)
            if zero:
                raise FormatError("FOT name entry has non-zero reserved bytes")
            return cls(_FOT_FLAGS[flags], None, offset, length)
        return cls(_FOT_FLAGS[flags], ObjectId(head))

    def check_name_bounds(self, header: ObjectHeader) -> None:
        """A name entry's bytes must lie inside the object's data area."""
        end = self.name_offset + self.name_length
        if self.name_offset < DATA_START or end > header.data_end or self.name_length == 0:
            raise FormatError("FOT name entry points outside the object's data")


def new_header(
    nonce: bytes, kuid: bytes, flags: int, default_prot: int, max_size: int
) -> ObjectHeader:
    """The header of a freshly created, empty object."""
    if flags & ~_KNOWN_OBJECT_FLAGS:
        raise InvalidArgument(f"unknown object flags {flags:#x}")
    if default_prot & ~_KNOWN_PROT:
        raise InvalidArgument(f"unknown protection bits {default_prot:#x}")
    return ObjectHeader(
        derive_object_id(nonce, kuid, flags, default_prot),
        nonce,
        kuid,
        ObjectFlags(flags),
        Protection(default_prot),
        size_log2(max_size),
    )
