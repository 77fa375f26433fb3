"""The header page and FOT entries: round trips, size rules, and fuzzed bad bytes."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from dtwz.errors import CorruptObject, FormatError, InvalidArgument
from dtwz.format.ids import ObjectId, derive_object_id
from dtwz.format.layout import (
    DATA_START,
    FOT_ENTRY_SIZE,
    HEADER_CRC_OFFSET,
    HEADER_RECORD_SIZE,
    HEADER_SIZE,
    MAX_FOT_ENTRIES,
    OBJECT_MAGIC,
    VERSION_OFFSET,
    FotEntry,
    FotFlags,
    ObjectFlags,
    ObjectHeader,
    Protection,
    fot_entry_offset,
    new_header,
    size_log2,
)

sixteen = st.binary(min_size=16, max_size=16)
object_flags = st.sampled_from([0, 1, 2, 3]).map(ObjectFlags)
protections = st.integers(0, 7).map(Protection)


@st.composite
def headers(draw: st.DrawFn) -> ObjectHeader:
    nonce, kuid = draw(sixteen), draw(sixteen)
    flags, prot = draw(object_flags), draw(protections)
    log2 = draw(st.integers(12, 30))
    max_size = 1 << log2
    fot_count = draw(st.integers(0, min(MAX_FOT_ENTRIES, (max_size - DATA_START) // 32)))
    data_len = draw(st.integers(0, max_size - DATA_START - FOT_ENTRY_SIZE * fot_count))
    return ObjectHeader(
        derive_object_id(nonce, kuid, int(flags), int(prot)),
        nonce,
        kuid,
        flags,
        prot,
        log2,
        data_len=data_len,
        version=draw(st.integers(0, (1 << 64) - 1)),
        fot_count=fot_count,
    )


def with_crc(body: bytes) -> bytes:
    """A header record whose CRC is right for ``body`` (to reach the checks behind it)."""
    assert len(body) == HEADER_CRC_OFFSET
    return body + struct.pack("<I", zlib.crc32(body))


# -- header ---------------------------------------------------------------------


def test_header_record_layout() -> None:
    header = new_header(bytes(range(16)), bytes(16), 1, 3, 1 << 20).evolve(
        data_len=5, version=7, fot_count=2
    )
    raw = header.encode()
    assert len(raw) == HEADER_RECORD_SIZE == 92
    assert raw[:8] == OBJECT_MAGIC
    assert struct.unpack_from("<HHHBB", raw, 8) == (1, 1, 3, 20, 0)
    assert raw[16:32] == bytes(range(16))
    assert raw[32:48] == bytes(16)
    assert raw[48:64] == header.object_id
    assert struct.unpack_from("<QQII", raw, 64) == (5, 7, 2, 0)
    assert struct.unpack_from("<Q", raw, VERSION_OFFSET)[0] == 7
    assert struct.unpack_from("<I", raw, HEADER_CRC_OFFSET)[0] == zlib.crc32(raw[:88])


@given(headers())
def test_header_round_trip(header: ObjectHeader) -> None:
    raw = header.encode()
    decoded = ObjectHeader.decode(raw)
    assert decoded == header
    assert decoded.encode() == raw
    # the rest of the header page is not part of the record
    assert ObjectHeader.decode(raw + bytes(HEADER_SIZE - len(raw))) == header
    assert ObjectHeader.decode(memoryview(raw)) == header


@given(headers())
def test_header_geometry(header: ObjectHeader) -> None:
    assert header.max_size == 1 << header.size_log2
    assert header.data_end == DATA_START + header.data_len
    assert header.fot_start == header.max_size - 32 * header.fot_count
    assert header.free_bytes == header.fot_start - header.data_end >= 0
    assert header.immutable == bool(header.flags & ObjectFlags.IMMUTABLE)


@given(headers(), st.data())
def test_single_byte_mutation_of_a_header_is_always_rejected(
    header: ObjectHeader, data: st.DataObject
) -> None:
    # CRC-32 catches every error burst of up to 32 bits, so one changed byte anywhere in
    # the 92-byte record can never be accepted
    raw = bytearray(header.encode())
    at = data.draw(st.integers(0, HEADER_RECORD_SIZE - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CorruptObject):
        ObjectHeader.decode(bytes(raw))
    with pytest.raises(CorruptObject):
        ObjectHeader.decode(bytes(raw), check_id=False)


@given(headers(), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=12))
def test_mutated_header_is_rejected_or_decodes_consistently(
    header: ObjectHeader, changes: list[tuple[int, int]]
) -> None:
    raw = bytearray(header.encode() + bytes(120))
    for at, value in changes:
        raw[at] = value
    for check_id in (True, False):
        try:
            decoded = ObjectHeader.decode(bytes(raw), check_id=check_id)
        except FormatError:
            continue
        # accepted: the record must be a valid encoding of exactly what came out
        assert decoded.encode() == bytes(raw[:HEADER_RECORD_SIZE])
        assert zlib.crc32(raw[:HEADER_CRC_OFFSET]) == struct.unpack_from("<I", raw, 88)[0]
        if check_id:
            assert decoded.object_id == derive_object_id(
                decoded.nonce, decoded.kuid, decoded.flags, decoded.default_prot
            )
        if bytes(raw[:HEADER_RECORD_SIZE]) == header.encode():
            assert decoded == header


@given(headers(), st.lists(st.tuples(st.integers(0, 87), st.integers(0, 255)), min_size=1))
def test_resealed_mutations_are_rejected_or_canonical(
    header: ObjectHeader, changes: list[tuple[int, int]]
) -> None:
    # with the CRC made to match, the field checks alone must keep out what they cannot read
    body = bytearray(header.encode()[:HEADER_CRC_OFFSET])
    for at, value in changes:
        body[at] = value
    raw = with_crc(bytes(body))
    try:
        decoded = ObjectHeader.decode(raw, check_id=False)
    except CorruptObject:
        return
    assert decoded.encode() == raw
    assert DATA_START + decoded.data_len <= decoded.fot_start
    assert 12 <= decoded.size_log2 <= 30


@given(headers(), st.integers(HEADER_RECORD_SIZE, 4096), st.binary(max_size=64))
def test_bytes_after_the_record_do_not_matter(header: ObjectHeader, at: int, junk: bytes) -> None:
    raw = bytearray(header.encode().ljust(HEADER_SIZE + 64, b"\0"))
    raw[at : at + len(junk)] = junk
    assert ObjectHeader.decode(bytes(raw)) == header


@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_format_error(raw: bytes) -> None:
    try:
        decoded = ObjectHeader.decode(raw)
    except FormatError:
        return
    assert decoded.encode() == raw[:HEADER_RECORD_SIZE]


@given(st.binary(max_size=HEADER_RECORD_SIZE - 1))
def test_short_header_is_rejected(raw: bytes) -> None:
    with pytest.raises(CorruptObject):
        ObjectHeader.decode(raw)


def test_empty_header_says_so() -> None:
    with pytest.raises(CorruptObject, match="empty"):
        ObjectHeader.decode(bytes(HEADER_SIZE))


def _valid() -> ObjectHeader:
    return new_header(b"n" * 16, b"k" * 16, 0, 3, 1 << 16)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (8, "<H", 2, "format version"),
        (10, "<H", 4, "flags"),
        (12, "<H", 8, "flags"),
        (14, "<B", 11, "out of range"),
        (14, "<B", 31, "out of range"),
        (15, "<B", 1, "reserved"),
        (84, "<I", 1, "reserved"),
        (80, "<I", MAX_FOT_ENTRIES + 1, "FOT count"),
        (64, "<Q", (1 << 16) - DATA_START + 1, "overlap"),
    ],
)
def test_each_field_check_with_a_valid_crc(offset: int, fmt: str, value: int, message: str) -> None:
    body = bytearray(_valid().encode()[:HEADER_CRC_OFFSET])
    struct.pack_into(fmt, body, offset, value)
    with pytest.raises(CorruptObject, match=message):
        ObjectHeader.decode(with_crc(bytes(body)), check_id=False)


def test_data_and_fot_overlap_is_rejected() -> None:
    header = _valid()
    fits = header.evolve(data_len=(1 << 16) - DATA_START - 64, fot_count=2)
    assert ObjectHeader.decode(fits.encode()) == fits
    with pytest.raises(CorruptObject, match="overlap"):
        ObjectHeader.decode(fits.evolve(fot_count=3).encode())


def test_id_must_match_metadata() -> None:
    header = _valid()
    forged = header.evolve(object_id=ObjectId(bytes(16)))  # type: ignore[arg-type]
    raw = forged.encode()
    with pytest.raises(CorruptObject, match="does not match"):
        ObjectHeader.decode(raw)
    # callers that already checked the ID (the mapped object) may skip the check
    assert ObjectHeader.decode(raw, check_id=False).object_id == bytes(16)


def test_bad_magic() -> None:
    raw = bytearray(_valid().encode())
    raw[:8] = b"NOTDTWZ!"
    with pytest.raises(CorruptObject, match="magic"):
        ObjectHeader.decode(with_crc(bytes(raw[:88])))


# -- sizes and construction -------------------------------------------------------


@pytest.mark.parametrize("log2", range(12, 31))
def test_every_power_of_two_size_is_accepted(log2: int) -> None:
    assert size_log2(1 << log2) == log2


@pytest.mark.parametrize(
    "size", [0, -4096, 1, 2048, 4095, 4097, 5000, 3 << 12, 1 << 31, 1 << 40, 4096.0, "4096", None]
)
def test_bad_sizes_are_invalid_arguments(size: object) -> None:
    with pytest.raises(InvalidArgument):
        size_log2(size)  # type: ignore[arg-type]


def test_new_header_rejects_unknown_bits() -> None:
    with pytest.raises(InvalidArgument):
        new_header(bytes(16), bytes(16), 4, 0, 1 << 12)
    with pytest.raises(InvalidArgument):
        new_header(bytes(16), bytes(16), 0, 8, 1 << 12)
    with pytest.raises(InvalidArgument):
        new_header(bytes(16), bytes(16), 0, 0, 1000)


def test_new_header_is_empty_and_derived() -> None:
    header = new_header(b"a" * 16, b"b" * 16, 1, 5, 1 << 14)
    assert header.object_id == derive_object_id(b"a" * 16, b"b" * 16, 1, 5)
    assert (header.data_len, header.version, header.fot_count) == (0, 0, 0)
    assert header.max_size == 1 << 14
    assert header.immutable
    assert header.flags == ObjectFlags.IMMUTABLE and header.default_prot == 5


@given(st.integers(12, 30), st.integers(1, MAX_FOT_ENTRIES))
def test_fot_entry_offset(log2: int, index: int) -> None:
    max_size = 1 << log2
    assume(max_size - 32 * index >= DATA_START)
    assert fot_entry_offset(max_size, index) == max_size - 32 * index
    assert fot_entry_offset(max_size, 1) + FOT_ENTRY_SIZE == max_size


# -- FOT entries ------------------------------------------------------------------

rights = st.integers(0, 7).map(lambda r: FotFlags(r << 2))  # READ, WRITE, EXEC
id_entries = st.builds(lambda oid, f: FotEntry.for_id(ObjectId(oid), f), sixteen, rights)
name_entries = st.builds(
    FotEntry.for_name, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1), rights
)
entries = st.one_of(id_entries, name_entries, st.just(FotEntry(FotFlags.NONE)))


@given(entries)
def test_fot_entry_round_trip(entry: FotEntry) -> None:
    raw = entry.encode()
    assert len(raw) == FOT_ENTRY_SIZE
    decoded = FotEntry.decode(raw)
    assert decoded == entry
    assert decoded.encode() == raw
    assert FotEntry.decode(memoryview(raw)) == entry


def test_fot_entry_layout() -> None:
    target = ObjectId(bytes(range(16)))
    raw = FotEntry.for_id(target, FotFlags.READ | FotFlags.WRITE).encode()
    assert raw == bytes(range(16)) + struct.pack("<I", 1 | 4 | 8) + bytes(12)
    named = FotEntry.for_name(0x1234, 7).encode()
    assert named == struct.pack("<QII", 0x1234, 7, 0) + struct.pack("<I", 1 | 2 | 4) + bytes(12)
    assert FotEntry(FotFlags.NONE).encode() == bytes(32)


def test_fot_entry_constructors() -> None:
    entry = FotEntry.for_id(ObjectId(bytes(16)), FotFlags.READ | FotFlags.NAME)
    assert entry.is_valid and not entry.is_name  # an ID entry cannot claim to be a name
    named = FotEntry.for_name(DATA_START, 3)
    assert named.is_valid and named.is_name and named.target is None
    assert not FotEntry(FotFlags.NONE).is_valid


@pytest.mark.parametrize(
    "raw",
    [
        bytes(31),
        bytes(33),
        b"",
        bytes(16) + struct.pack("<I", 1 << 5) + bytes(12),  # unknown flag
        bytes(16) + struct.pack("<I", 1) + b"\x01" + bytes(11),  # reserved byte
        bytes(16) + struct.pack("<I", 4) + bytes(12),  # not VALID, yet has flags
        b"\x01" + bytes(15) + struct.pack("<I", 0) + bytes(12),  # not VALID, yet a target
        struct.pack("<QII", 0x1000, 3, 1) + struct.pack("<I", 3) + bytes(12),  # name reserved
    ],
)
def test_bad_fot_entries(raw: bytes) -> None:
    with pytest.raises(FormatError):
        FotEntry.decode(raw)


@given(st.binary(min_size=0, max_size=40))
def test_random_fot_bytes_never_raise_anything_but_format_error(raw: bytes) -> None:
    try:
        entry = FotEntry.decode(raw)
    except FormatError:
        return
    assert entry.encode() == raw  # anything accepted is a canonical encoding


@given(entries, st.lists(st.tuples(st.integers(0, 31), st.integers(0, 255)), min_size=1))
def test_mutated_fot_entry_is_rejected_or_canonical(
    entry: FotEntry, changes: list[tuple[int, int]]
) -> None:
    raw = bytearray(entry.encode())
    for at, value in changes:
        raw[at] = value
    try:
        decoded = FotEntry.decode(bytes(raw))
    except FormatError:
        return
    assert decoded.encode() == bytes(raw)
    assert decoded.is_valid or decoded == FotEntry(FotFlags.NONE)


def test_name_bounds() -> None:
    header = _valid().evolve(data_len=100)
    FotEntry.for_name(DATA_START, 100).check_name_bounds(header)
    FotEntry.for_name(DATA_START + 99, 1).check_name_bounds(header)
    for offset, length in [(DATA_START, 101), (0, 4), (DATA_START - 1, 2), (DATA_START, 0)]:
        with pytest.raises(FormatError):
            FotEntry.for_name(offset, length).check_name_bounds(header)
