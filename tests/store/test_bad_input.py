"""Bad input of every kind gets a clear dtwz error and loses nothing else.

Each test builds a small store, checkpoints and closes it, damages the files on
disk with ``os.pwrite`` / ``os.truncate`` (or hands the API a bad value), reopens,
and checks three things: the error is the right ``DtwzError``, the other objects
still hold what was committed, and the store still takes new transactions.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtwz import U64, Layout, ObjectId, Pointer, Store
from dtwz.errors import (
    BadFotIndex,
    CorruptObject,
    DtwzError,
    FormatError,
    InvalidArgument,
    InvalidFotEntry,
    NullPointer,
    ObjectFull,
    ObjectNotFound,
    PointerOutOfBounds,
    StoreError,
    UnresolvedName,
)
from dtwz.format.layout import DATA_START, HEADER_CRC_OFFSET, FotEntry, FotFlags, fot_entry_offset
from dtwz.format.pointers import make_pointer
from dtwz.store.redo import WriteOp, encode_record

SIZE = 64 * 1024
SALT_OFFSET = 40  # docs/FORMAT.md, store.ctl


class BadCell(Layout):
    value = U64()
    link = Pointer("BadCell")


@dataclass
class World:
    """A closed store: ``holder`` points at ``target`` (FOT entry 1); ``bystander`` is
    an unrelated object whose committed bytes must survive every corruption."""

    path: Path
    holder: ObjectId
    target: ObjectId
    bystander: ObjectId
    cell: int  # offset of a BadCell in holder whose link points at target's cell
    word: int  # the pointer word stored in that cell

    def file(self, oid: ObjectId) -> Path:
        return self.path / "objects" / oid.hex()[:2] / oid.hex()


BYSTANDER_DATA = b"bystander data that must survive" * 4


@pytest.fixture
def world(tmp_path: Path) -> World:
    path = tmp_path / "store"
    with Store.open(path, create=True) as s:
        with s.transaction() as tx:
            holder, target, bystander = tx.create(SIZE), tx.create(SIZE), tx.create(SIZE)
            target_cell = tx.new(BadCell, target, value=2)
            cell = tx.new(BadCell, holder, value=1)
            cell.link = target_cell
            word = tx.read_u64(holder, cell.offset + 8)
            tx.append(bystander, BYSTANDER_DATA)
        s.checkpoint()  # the log is empty: what is on disk is all there is
    return World(path, holder, target, bystander, cell.offset, word)


@pytest.fixture
def opened(world: World) -> Iterator[Store]:
    with Store.open(world.path) as s:
        yield s


def pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def pread(path: Path, length: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def assert_healthy(store: Store, world: World) -> None:
    """The bystander is intact and the store still commits new transactions."""
    assert bytes(store.read(world.bystander, DATA_START, len(BYSTANDER_DATA))) == BYSTANDER_DATA
    version = store.header(world.bystander).version
    with store.transaction() as tx:
        fresh = tx.create(8192)
        tx.append(fresh, b"still works")
        tx.write(world.bystander, DATA_START + 1000, b"more")
    assert bytes(store.read(fresh, DATA_START, 11)) == b"still works"
    assert store.header(world.bystander).version == version + 1
    assert fresh in set(store.object_ids())


def reopen_and_check(world: World) -> None:
    """Close-and-reopen keeps the store usable too (recovery copes with the damage)."""
    with Store.open(world.path) as s:
        assert bytes(s.read(world.bystander, DATA_START, len(BYSTANDER_DATA))) == BYSTANDER_DATA


# -- corrupt object headers ----------------------------------------------------------


def _header_body(world: World, oid: ObjectId) -> bytearray:
    return bytearray(pread(world.file(oid), HEADER_CRC_OFFSET, 0))


def _reseal(body: bytearray) -> bytes:
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


def corrupt_magic(world: World, oid: ObjectId) -> None:
    pwrite(world.file(oid), b"XXXX", 0)


def corrupt_crc(world: World, oid: ObjectId) -> None:
    body = _header_body(world, oid)
    body[64] ^= 0x01  # data_len, without fixing the CRC
    pwrite(world.file(oid), bytes(body), 0)


def corrupt_id(world: World, oid: ObjectId) -> None:
    body = _header_body(world, oid)
    body[16] ^= 0x01  # the nonce no longer derives the ID; the CRC is made to match
    pwrite(world.file(oid), _reseal(body), 0)


def corrupt_foreign(world: World, oid: ObjectId) -> None:
    # a perfectly valid header, of another object
    pwrite(world.file(oid), pread(world.file(world.bystander), 92, 0), 0)


def corrupt_zeroed(world: World, oid: ObjectId) -> None:
    pwrite(world.file(oid), bytes(4096), 0)


def corrupt_format(world: World, oid: ObjectId) -> None:
    body = _header_body(world, oid)
    body[8] = 9  # an unknown format version, correctly sealed
    pwrite(world.file(oid), _reseal(body), 0)


def corrupt_overlap(world: World, oid: ObjectId) -> None:
    body = _header_body(world, oid)
    struct.pack_into("<Q", body, 64, SIZE)  # data_len past the end, correctly sealed
    pwrite(world.file(oid), _reseal(body), 0)


HEADER_DAMAGE = {
    "magic": (corrupt_magic, "magic"),
    "crc": (corrupt_crc, "checksum"),
    "id": (corrupt_id, "does not match"),
    "foreign": (corrupt_foreign, "holds object"),
    "zeroed": (corrupt_zeroed, "empty"),
    "format": (corrupt_format, "format version"),
    "overlap": (corrupt_overlap, "overlap"),
}


@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
def test_corrupt_header_is_a_clear_error(world: World, damage: str) -> None:
    corrupt, message = HEADER_DAMAGE[damage]
    corrupt(world, world.target)
    data_before = pread(world.file(world.target), 64, DATA_START)
    with Store.open(world.path) as s:
        with pytest.raises(CorruptObject, match=message):
            s.get(world.target)
        with pytest.raises(CorruptObject):
            s.view(BadCell, world.target)
        with pytest.raises(CorruptObject):
            s.header(world.target)
        with s.transaction() as tx, pytest.raises(CorruptObject):
            tx.write(world.target, DATA_START, b"x")
        # following a good pointer into the corrupt object
        holder = s.view(BadCell, world.holder, world.cell)
        assert holder.value == 1
        with pytest.raises(CorruptObject):
            _ = holder.link
        assert world.target in set(s.object_ids())  # still listed: nothing was removed
        assert_healthy(s, world)
    assert pread(world.file(world.target), 64, DATA_START) == data_before
    reopen_and_check(world)


def test_corrupt_header_does_not_poison_the_log(world: World) -> None:
    # a transaction that touches a good object commits while a corrupt one sits by
    corrupt_crc(world, world.target)
    with Store.open(world.path) as s, s.transaction() as tx:
        tx.write(world.holder, DATA_START + 512, b"fine")
    with Store.open(world.path) as s:
        assert bytes(s.read(world.holder, DATA_START + 512, 4)) == b"fine"
        with pytest.raises(CorruptObject):
            s.get(world.target)


# -- corrupt FOT entries and object files ----------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        bytes(16) + struct.pack("<I", 1 << 7) + bytes(12),  # unknown flags
        bytes(16) + struct.pack("<I", 1 | 4) + b"\xff" * 12,  # reserved bytes
        b"\x01" * 16 + struct.pack("<I", 4) + bytes(12),  # not VALID, not empty
        b"\xff" * 32,
    ],
)
def test_corrupt_fot_entry(world: World, entry: bytes) -> None:
    pwrite(world.file(world.holder), entry, fot_entry_offset(SIZE, 1))
    with Store.open(world.path) as s:
        holder = s.view(BadCell, world.holder, world.cell)
        assert holder.value == 1  # the object itself is fine
        with pytest.raises(CorruptObject, match="FOT entry 1"):
            _ = holder.link
        with pytest.raises(CorruptObject):
            s.get(world.holder).follow(world.word)
        with s.transaction() as tx, pytest.raises(CorruptObject):
            tx.follow(world.holder, world.word)
        with s.transaction() as tx, pytest.raises(CorruptObject):
            tx.pointer_to(world.holder, world.target, DATA_START)  # scans the FOT
        # pointers inside the object do not use the FOT
        with s.transaction() as tx:
            tx.view(BadCell, world.holder, world.cell).link = tx.view(BadCell, world.holder)
        assert s.view(BadCell, world.holder, world.cell).link.value == 1
        assert_healthy(s, world)


def test_fot_entry_pointing_at_a_missing_object(world: World) -> None:
    entry = FotEntry.for_id(ObjectId(b"\x5a" * 16), FotFlags.READ).encode()
    pwrite(world.file(world.holder), entry, fot_entry_offset(SIZE, 1))
    with Store.open(world.path) as s:
        with pytest.raises(ObjectNotFound):
            _ = s.view(BadCell, world.holder, world.cell).link
        assert_healthy(s, world)


@pytest.mark.parametrize("length", [0, 50, 92, 4096, SIZE - 1, SIZE // 2])
def test_truncated_object_file(world: World, length: int) -> None:
    os.truncate(world.file(world.target), length)
    with Store.open(world.path) as s:
        with pytest.raises(CorruptObject):
            s.get(world.target)
        with pytest.raises(CorruptObject):
            _ = s.view(BadCell, world.holder, world.cell).link
        assert_healthy(s, world)


def test_object_file_longer_than_its_header_says(world: World) -> None:
    os.truncate(world.file(world.target), SIZE * 2)
    with Store.open(world.path) as s:
        with pytest.raises(CorruptObject, match="bytes on disk"):
            s.get(world.target)
        assert_healthy(s, world)


def test_object_file_that_is_a_folder(world: World) -> None:
    os.unlink(world.file(world.target))
    os.mkdir(world.file(world.target))
    with Store.open(world.path) as s:
        with pytest.raises(DtwzError):
            s.get(world.target)
        assert_healthy(s, world)


def test_stray_files_in_the_objects_folder_are_ignored(world: World) -> None:
    (world.path / "objects" / "ab" / ("z" * 32)).write_bytes(b"not an object")
    (world.path / "objects" / "ab" / "notes.txt").write_bytes(b"hello")
    with Store.open(world.path) as s:
        assert set(s.object_ids()) == {world.holder, world.target, world.bystander}
        assert_healthy(s, world)


# -- bad pointers ----------------------------------------------------------------------


def _store_word(s: Store, world: World, word: int) -> None:
    with s.transaction() as tx:
        tx.write_u64(world.holder, world.cell + 8, word)


@pytest.mark.parametrize(
    ("word", "error"),
    [
        (0, None),  # NULL reads as None through a view
        (make_pointer(2, DATA_START), BadFotIndex),
        (make_pointer(0xFFFF, DATA_START), BadFotIndex),
        (make_pointer(0, 8), PointerOutOfBounds),  # inside the header page
        (make_pointer(0, DATA_START - 1), PointerOutOfBounds),
        (make_pointer(1, 0), PointerOutOfBounds),  # offset 0 through an entry
        (make_pointer(1, 0x800), PointerOutOfBounds),
        (make_pointer(0, SIZE), PointerOutOfBounds),  # just past the object
        (make_pointer(1, SIZE + 4096), PointerOutOfBounds),
        (make_pointer(0, (1 << 48) - 1), PointerOutOfBounds),
        (make_pointer(0, SIZE - 8), PointerOutOfBounds),  # a BadCell does not fit there
    ],
)
def test_bad_pointers_through_views(
    opened: Store, world: World, word: int, error: type[Exception] | None
) -> None:
    _store_word(opened, world, word)
    view = opened.view(BadCell, world.holder, world.cell)
    if error is None:
        assert view.link is None
    else:
        with pytest.raises(error):
            _ = view.link
    with opened.transaction() as tx:
        tx_view = tx.view(BadCell, world.holder, world.cell)
        if error is None:
            assert tx_view.link is None
        else:
            with pytest.raises(error):
                _ = tx_view.link
    assert_healthy(opened, world)


@pytest.mark.parametrize(
    ("word", "error"),
    [
        (0, NullPointer),
        (make_pointer(2, DATA_START), BadFotIndex),
        (make_pointer(0, 16), PointerOutOfBounds),
        (make_pointer(1, 16), PointerOutOfBounds),
        (make_pointer(0, SIZE), PointerOutOfBounds),
        (make_pointer(1, SIZE), PointerOutOfBounds),
    ],
)
def test_bad_pointers_followed_directly(
    opened: Store, world: World, word: int, error: type[Exception]
) -> None:
    with pytest.raises(error):
        opened.get(world.holder).follow(word)
    with opened.transaction() as tx, pytest.raises(error):
        tx.follow(world.holder, word)
    # a good pointer still works afterwards
    target, _ = opened.get(world.holder).follow(world.word)
    assert target.object_id == world.target
    assert_healthy(opened, world)


def test_invalid_fot_entry(opened: Store, world: World) -> None:
    with opened.transaction() as tx:
        index = tx.add_fot_entry(world.holder, FotEntry(FotFlags.NONE))
        word = make_pointer(index, DATA_START)
        with pytest.raises(InvalidFotEntry):
            tx.follow(world.holder, word)  # before it is committed
    assert index == 2
    with pytest.raises(InvalidFotEntry):
        opened.get(world.holder).follow(word)
    _store_word(opened, world, word)
    with pytest.raises(InvalidFotEntry):
        _ = opened.view(BadCell, world.holder, world.cell).link
    assert_healthy(opened, world)


def test_unresolved_and_bad_names(world: World) -> None:
    with Store.open(world.path) as s:
        with s.transaction() as tx:
            word = tx.pointer_by_name(world.holder, "/nowhere", DATA_START)
        with pytest.raises(UnresolvedName):
            s.get(world.holder).follow(word)
    with Store.open(world.path, name_resolver=lambda name, holder: ObjectId(b"\1" * 16)) as s:
        with pytest.raises(ObjectNotFound):  # a name that resolves to nothing here
            s.get(world.holder).follow(word)
        index = word >> 48
        entry = s.get(world.holder).fot_entry(index)
        name_at = entry.name_offset
    # a name entry whose bytes are not UTF-8, and one that points outside the data
    pwrite(world.file(world.holder), b"\xff\xfe", name_at)
    outside = FotEntry.for_name(SIZE - 64, 8).encode()
    pwrite(world.file(world.holder), outside, fot_entry_offset(SIZE, 1))
    with Store.open(world.path, name_resolver=lambda name, holder: world.target) as s:
        with pytest.raises(CorruptObject, match="UTF-8"):
            s.get(world.holder).follow(word)
        with pytest.raises(FormatError, match="outside"):
            s.get(world.holder).follow(world.word)
        assert_healthy(s, world)


def test_unknown_object_ids(opened: Store, world: World) -> None:
    unknown = ObjectId(b"\x77" * 16)
    assert not opened.exists(unknown)
    with pytest.raises(ObjectNotFound):
        opened.get(unknown)
    with pytest.raises(ObjectNotFound):
        opened.read(unknown, DATA_START, 1)
    with pytest.raises(ObjectNotFound):
        opened.view(BadCell, unknown)
    with opened.transaction() as tx:
        for action in (
            lambda: tx.write(unknown, DATA_START, b"x"),
            lambda: tx.lock(unknown),
            lambda: tx.delete(unknown),
            lambda: tx.read(unknown, DATA_START, 1),
            lambda: tx.view(BadCell, unknown),
        ):
            with pytest.raises(ObjectNotFound):
                action()
        # a pointer may name an object that is not here (it may live on another node)
        tx.write_pointer(world.holder, world.cell + 8, unknown)
    with pytest.raises(ObjectNotFound):
        _ = opened.view(BadCell, world.holder, world.cell).link
    assert_healthy(opened, world)


def test_pointer_to_a_deleted_object(world: World) -> None:
    with Store.open(world.path) as s:
        assert s.view(BadCell, world.holder, world.cell).link.value == 2  # cached now
        with s.transaction() as tx:
            tx.delete(world.target)
        with pytest.raises(ObjectNotFound):
            _ = s.view(BadCell, world.holder, world.cell).link
    with Store.open(world.path) as s:
        with pytest.raises(ObjectNotFound):
            _ = s.view(BadCell, world.holder, world.cell).link
        assert_healthy(s, world)


# -- full objects and bad sizes --------------------------------------------------------


def test_full_objects(opened: Store, world: World) -> None:
    with opened.transaction() as tx:
        small = tx.create(8192)
        tx.alloc(small, 4096 - 64)
        tx.add_fot_entry(small, FotEntry.for_id(world.target))
        tx.add_fot_entry(small, FotEntry.for_id(world.holder))
    before = opened.header(small)
    with opened.transaction() as tx:
        with pytest.raises(ObjectFull):
            tx.alloc(small, 1)
        with pytest.raises(ObjectFull):
            tx.append(small, b"x")
        with pytest.raises(ObjectFull):
            tx.add_fot_entry(small, FotEntry.for_id(world.bystander))
        with pytest.raises(ObjectFull):
            tx.pointer_to(small, world.bystander, DATA_START)
        with pytest.raises(ObjectFull):
            tx.write(small, 8192 - 64, b"onto the FOT")
        # reusing an existing entry needs no room
        word = tx.pointer_to(small, world.target, DATA_START, FotFlags.READ)
        assert word == make_pointer(1, DATA_START)
    assert opened.header(small) == before
    assert_healthy(opened, world)


@pytest.mark.parametrize("size", [0, 1, 2048, 4097, 6144, 1 << 31, -1, 2.5, "4096", None])
def test_bad_object_sizes(opened: Store, world: World, size: object) -> None:
    with opened.transaction() as tx, pytest.raises(InvalidArgument):
        tx.create(size)  # type: ignore[arg-type]
    assert set(opened.object_ids()) == {world.holder, world.target, world.bystander}
    assert_healthy(opened, world)


@pytest.mark.parametrize(
    ("offset", "length"), [(0, 8), (DATA_START - 1, 2), (SIZE - 4, 8), (DATA_START, -1)]
)
def test_reads_outside_the_data_area(opened: Store, world: World, offset: int, length: int) -> None:
    with pytest.raises(PointerOutOfBounds):
        opened.read(world.holder, offset, length)
    with opened.transaction() as tx, pytest.raises(PointerOutOfBounds):
        tx.read(world.holder, offset, length)
    assert_healthy(opened, world)


# -- the store folder ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"format": 2, "store_id": "x"}',
        b'{"store_id": "x"}',
        b"null",
    ],
)
def test_corrupt_store_file(world: World, content: bytes) -> None:
    good = (world.path / "STORE").read_bytes()
    (world.path / "STORE").write_bytes(content)
    with pytest.raises(StoreError):
        Store.open(world.path)
    (world.path / "STORE").write_bytes(good)
    with Store.open(world.path) as s:  # nothing was lost meanwhile
        assert s.view(BadCell, world.holder, world.cell).link.value == 2
        assert_healthy(s, world)


def test_missing_store_file(world: World) -> None:
    good = (world.path / "STORE").read_bytes()
    (world.path / "STORE").unlink()
    with pytest.raises(StoreError, match="not a dtwz store"):
        Store.open(world.path)
    with pytest.raises(StoreError):
        Store.open(world.path / "objects")  # a folder inside a store is not a store
    (world.path / "STORE").write_bytes(good)
    assert json.loads(good)["format"] == 1
    with Store.open(world.path) as s:
        assert_healthy(s, world)


@pytest.mark.parametrize("damage", ["missing", "empty", "short", "magic", "folder"])
def test_corrupt_control_file(world: World, damage: str) -> None:
    ctl = world.path / "store.ctl"
    good = ctl.read_bytes()
    if damage == "missing":
        ctl.unlink()
    elif damage == "empty":
        ctl.write_bytes(b"")
    elif damage == "short":
        ctl.write_bytes(good[:100])
    elif damage == "magic":
        pwrite(ctl, b"NOTACTL!", 0)
    else:
        ctl.unlink()
        ctl.mkdir()
    with pytest.raises(StoreError):
        Store.open(world.path)
    if ctl.is_dir():
        ctl.rmdir()
    ctl.write_bytes(good)
    with Store.open(world.path) as s:
        assert s.view(BadCell, world.holder, world.cell).link.value == 2
        assert_healthy(s, world)


def test_missing_log_is_recreated(world: World) -> None:
    (world.path / "wal.log").unlink()
    with Store.open(world.path) as s:
        assert_healthy(s, world)


# -- the redo log ----------------------------------------------------------------------


def _salt(world: World) -> int:
    return int(struct.unpack_from("<Q", (world.path / "store.ctl").read_bytes(), SALT_OFFSET)[0])


def _forge_log(world: World, records: list[list[WriteOp]]) -> list[bytes]:
    """Write records to wal.log as a store would (so recovery will redo them)."""
    salt, out, at = _salt(world), [], 0
    for ops in records:
        out.append(encode_record(ops, lsn=at, salt=salt))
        at += len(out[-1])
    (world.path / "wal.log").write_bytes(b"".join(out))
    return out


def _log_writes(world: World) -> list[list[WriteOp]]:
    return [[WriteOp(world.target, DATA_START + 256 + 7 * i, b"record%d" % i)] for i in range(3)]


def test_recovery_redoes_an_intact_log(world: World) -> None:
    _forge_log(world, _log_writes(world))
    with Store.open(world.path) as s:
        assert os.path.getsize(world.path / "wal.log") == 0  # recovery emptied it
        assert s.stats["replayed_records"] == 3
        assert bytes(s.read(world.target, DATA_START + 256, 21)) == b"record0record1record2"
        assert_healthy(s, world)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"DTXR", b"\xff" * 7, b"DTXR" + b"\xff" * 100, os.urandom(4096)],
    ids=["zero", "magic", "ff", "magic-ff", "random"],
)
def test_torn_tail_is_ignored(world: World, garbage: bytes) -> None:
    _forge_log(world, _log_writes(world))
    with open(world.path / "wal.log", "ab") as f:
        f.write(garbage)
    with Store.open(world.path) as s:
        assert os.path.getsize(world.path / "wal.log") == 0  # recovery emptied it
        assert s.stats["replayed_records"] == 3
        assert bytes(s.read(world.target, DATA_START + 256, 21)) == b"record0record1record2"
        assert_healthy(s, world)
    reopen_and_check(world)


@pytest.mark.parametrize("cut", [1, 10, 31, 32, 40, -1])
def test_half_written_last_record_is_ignored(world: World, cut: int) -> None:
    records = _forge_log(world, _log_writes(world))
    whole = b"".join(records)
    keep = cut if cut > 0 else len(records[-1]) + cut  # -1: all but its last byte
    (world.path / "wal.log").write_bytes(whole[: len(whole) - len(records[-1]) + keep])
    with Store.open(world.path) as s:
        assert os.path.getsize(world.path / "wal.log") == 0  # recovery emptied it
        assert s.stats["replayed_records"] == 2
        assert bytes(s.read(world.target, DATA_START + 256, 21)) == b"record0record1" + bytes(7)
        assert_healthy(s, world)


@pytest.mark.parametrize("where", ["magic", "length", "crc", "lsn", "salt", "data"])
def test_corrupted_record_stops_recovery_there(world: World, where: str) -> None:
    records = _forge_log(world, _log_writes(world))
    at = len(records[0]) + {"magic": 0, "length": 4, "crc": 8, "lsn": 16, "salt": 24}.get(
        where, len(records[1]) - 2
    )
    pwrite(world.path / "wal.log", bytes([pread(world.path / "wal.log", 1, at)[0] ^ 0x40]), at)
    with Store.open(world.path) as s:
        # the first record is redone; the damaged one and everything after it are not
        assert s.stats["replayed_records"] == 1
        assert bytes(s.read(world.target, DATA_START + 256, 21)) == b"record0" + bytes(14)
        assert s.view(BadCell, world.holder, world.cell).link.value == 2
        assert_healthy(s, world)


def test_log_of_another_store_is_not_replayed(world: World, tmp_path: Path) -> None:
    with Store.open(tmp_path / "other", create=True) as other:
        salt = struct.unpack_from("<Q", (tmp_path / "other" / "store.ctl").read_bytes(), 40)[0]
    assert salt != _salt(world)
    rec = encode_record([WriteOp(world.target, DATA_START + 256, b"foreign")], salt=salt)
    (world.path / "wal.log").write_bytes(rec)
    with Store.open(world.path) as s:
        assert os.path.getsize(world.path / "wal.log") == 0  # recovery emptied it
        assert s.stats["replayed_records"] == 0
        assert bytes(s.read(world.target, DATA_START + 256, 7)) == bytes(7)
        assert_healthy(s, world)
    assert other is not None


def test_garbage_log_after_real_commits(world: World) -> None:
    # real commits stay in the log (no checkpoint at close); then a torn append
    with Store.open(world.path) as s:
        with s.transaction() as tx:
            tx.write(world.target, DATA_START + 512, b"committed")
        log_size = os.path.getsize(world.path / "wal.log")
        assert log_size > 0
    with open(world.path / "wal.log", "ab") as f:
        f.write(b"DTXR" + os.urandom(200))
    with Store.open(world.path) as s:
        assert os.path.getsize(world.path / "wal.log") == 0  # recovery emptied it
        assert s.stats["replayed_records"] == 1
        assert bytes(s.read(world.target, DATA_START + 512, 9)) == b"committed"
        assert s.header(world.target).version == 2
        assert_healthy(s, world)
