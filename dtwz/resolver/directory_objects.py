"""Directory objects: the on-object layout of the namespace and its edits. No I/O.

A directory is an ordinary dtwz object whose data area holds a header and a table
of entries (docs/NAMES.md has the bytes)::

    DATA_START        DirHeader   magic "DTWZDIR\\x01", format, flags, table_end, live, dead
    DATA_START + 32   DirEntry    state u8 | kind u8 | name_len u16 | text_len u32 | target u64
                      name bytes, then link text bytes, padded to 8
                      DirEntry    ...
    table_end         (end of the table; bytes beyond it mean nothing)

An entry's ``target`` is a persistent pointer (``fot_index << 48 | DATA_START``)
through an FOT *ID* entry of the directory, so a directory names its children the
way any object names another. Symbolic links keep their text after the name and a
NULL target.

Invariants:
- Entries are found by scanning ``[DATA_START + 32, table_end)``; ``table_end`` is
  8-aligned and never beyond the data area.
- Unbinding turns an entry into a tombstone (state 2) in place; rebinding a name
  rewrites its target in place. A live name appears at most once in a directory.
- When the table would run into the FOT, live entries are packed down over the
  tombstones (their pointer words stay valid: the FOT is not touched).
- Every edit runs inside one transaction at the directory's home, which is what
  orders concurrent binds of one name: the second finds the first and fails.
- These edits are the only way a directory's bytes change: the object service
  refuses every raw write, append and pointer into an object that starts with
  ``DIRECTORY_MAGIC`` (``dtwz.service.home.run_op``).

Reading works on anything with the ``StoredObject`` read interface (a local object,
a node's copy, a client's copy); edits work on a ``Transaction``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from dtwz.errors import (
    CorruptObject,
    InvalidArgument,
    NameExists,
    NameNotFound,
    NotADirectory,
    ObjectFull,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, FOT_ENTRY_SIZE, FotEntry, FotFlags, fot_entry_offset
from dtwz.format.names import DIRECTORY_MAGIC
from dtwz.format.pointers import OFFSET_BITS
from dtwz.format.views import U8, U16, U32, U64, Bytes, Layout, Pointer

if TYPE_CHECKING:
    from dtwz.store.objects import StoredObject
    from dtwz.store.transaction import Transaction

__all__ = [
    "DIRECTORY_MAGIC",
    "DIRECTORY_SIZE",
    "DirEntry",
    "DirHeader",
    "Entry",
    "EntryKind",
    "bind",
    "empty_directory",
    "entries",
    "find",
    "init_directory",
    "is_directory",
    "symlink",
    "unbind",
]

DIRECTORY_FORMAT = 1
DIRECTORY_SIZE = 1 << 20  # sparse: a directory costs the pages its entries use
TARGET_FLAGS = FotFlags.READ | FotFlags.WRITE


class EntryKind(IntEnum):
    OBJECT = 1
    DIRECTORY = 2
    SYMLINK = 3


class EntryState(IntEnum):
    LIVE = 1
    TOMBSTONE = 2


class DirHeader(Layout):
    """The first bytes of a directory's data area."""

    magic = Bytes(8)
    format = U32()
    flags = U32()
    table_end = U64()  # offset just past the last entry
    live = U32()  # live entries
    dead = U32()  # tombstones


class DirEntry(Layout):
    """One entry's fixed part; the name and link text follow it."""

    state = U8()
    kind = U8()
    name_len = U16()
    text_len = U32()
    target = Pointer()


TABLE_START = DATA_START + DirHeader.SIZE
_HEAD = struct.Struct("<8sIIQII")
_ENTRY = struct.Struct("<BBHIQ")  # DirEntry, unpacked in one call on the scan's hot path
assert _HEAD.size == DirHeader.SIZE == 32 and _ENTRY.size == DirEntry.SIZE == 16


@dataclass(frozen=True, slots=True)
class Entry:
    """A live entry as read: ``target`` is None for symbolic links, ``text`` their link."""

    offset: int
    kind: EntryKind
    name: str
    target: ObjectId | None
    text: str = ""

    @property
    def size(self) -> int:
        return _entry_size(len(self.name.encode()), len(self.text.encode()))


def _entry_size(name_len: int, text_len: int) -> int:
    return -(-(_ENTRY.size + name_len + text_len) // 8) * 8


def empty_directory() -> bytes:
    """The data of a new, empty directory (what ``Create`` appends at DATA_START)."""
    return _HEAD.pack(DIRECTORY_MAGIC, DIRECTORY_FORMAT, 0, TABLE_START, 0, 0)


# -- reading ----------------------------------------------------------------------------


def _table_end(raw: bytes | memoryview, oid: ObjectId, data_end: int) -> int:
    magic, fmt, _, table_end, _, _ = _HEAD.unpack_from(raw, 0)
    if magic != DIRECTORY_MAGIC:
        raise NotADirectory(f"object {oid.hex()} is not a directory")
    if fmt != DIRECTORY_FORMAT:
        raise CorruptObject(f"directory {oid.hex()} has unknown format {fmt}")
    if not TABLE_START <= table_end <= data_end or table_end % 8:
        raise CorruptObject(f"directory {oid.hex()}: table end {table_end:#x} out of range")
    return int(table_end)


def is_directory(obj: StoredObject) -> bool:
    header = obj.header()
    if header.data_end < TABLE_START:
        return False
    return bytes(obj.read(DATA_START, 8)) == DIRECTORY_MAGIC


def _table(obj: StoredObject) -> memoryview:
    header = obj.header()
    if header.data_end < TABLE_START:
        raise NotADirectory(f"object {obj.object_id.hex()} is not a directory")
    end = _table_end(obj.read(DATA_START, _HEAD.size), obj.object_id, header.data_end)
    return obj.read(DATA_START, end - DATA_START)


def _scan(
    table: bytes | memoryview, oid: ObjectId
) -> Iterator[tuple[int, int, int, bytes | memoryview, bytes | memoryview, int]]:
    """(offset, state, kind, name, text, target word) of every entry, tombstones too."""
    at = TABLE_START - DATA_START
    end = len(table)
    while at < end:
        if at + _ENTRY.size > end:
            raise CorruptObject(f"directory {oid.hex()}: entry at {DATA_START + at:#x} is cut")
        state, kind, name_len, text_len, word = _ENTRY.unpack_from(table, at)
        size = _entry_size(name_len, text_len)
        if (
            state not in (EntryState.LIVE, EntryState.TOMBSTONE)
            or kind not in (EntryKind.OBJECT, EntryKind.DIRECTORY, EntryKind.SYMLINK)
            or name_len == 0
            or at + size > end
        ):
            raise CorruptObject(f"directory {oid.hex()}: bad entry at {DATA_START + at:#x}")
        name_at = at + _ENTRY.size
        text_at = name_at + name_len
        yield (
            DATA_START + at,
            state,
            kind,
            table[name_at:text_at],
            table[text_at : text_at + text_len],
            word,
        )
        at += size


def _decode(raw: bytes | memoryview, oid: ObjectId) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptObject(f"directory {oid.hex()} holds a name that is not UTF-8") from exc


def _entry(
    oid: ObjectId,
    offset: int,
    kind: int,
    name: bytes | memoryview,
    text: bytes | memoryview,
    word: int,
    target_of: Callable[[int], ObjectId],
) -> Entry:
    if kind == EntryKind.SYMLINK:
        return Entry(offset, EntryKind.SYMLINK, _decode(name, oid), None, _decode(text, oid))
    return Entry(offset, EntryKind(kind), _decode(name, oid), target_of(word))


def _target_in(obj: StoredObject) -> Callable[[int], ObjectId]:
    def target_of(word: int) -> ObjectId:
        index = word >> OFFSET_BITS
        if index == 0:
            raise CorruptObject(f"directory {obj.object_id.hex()}: an entry points into itself")
        entry = obj.fot_entry(index)  # BadFotIndex / CorruptObject for a damaged table
        if entry.target is None:
            raise CorruptObject(f"directory {obj.object_id.hex()}: entry target is not an ID")
        return entry.target

    return target_of


def entries(obj: StoredObject) -> list[Entry]:
    """Every live entry of a directory, in table order (``NotADirectory`` if it is none)."""
    oid = obj.object_id
    target_of = _target_in(obj)
    return [
        _entry(oid, offset, kind, name, text, word, target_of)
        for offset, state, kind, name, text, word in _scan(_table(obj), oid)
        if state == EntryState.LIVE
    ]


def find(obj: StoredObject, name: str) -> Entry | None:
    """The live entry called ``name``, if any (``NotADirectory`` if ``obj`` is none)."""
    oid = obj.object_id
    wanted = name.encode()
    for offset, state, kind, raw, text, word in _scan(_table(obj), oid):
        if state == EntryState.LIVE and raw == wanted:
            return _entry(oid, offset, kind, raw, text, word, _target_in(obj))
    return None


# -- edits (inside a transaction at the directory's home) --------------------------------


def init_directory(tx: Transaction, oid: ObjectId) -> None:
    """Make the new, empty object ``oid`` an empty directory."""
    offset = tx.append(oid, empty_directory())
    if offset != DATA_START:
        raise CorruptObject(f"object {oid.hex()} is not empty: cannot make it a directory")


def _tx_table(tx: Transaction, oid: ObjectId) -> bytes:
    header = tx.lock(oid)
    if header.data_end < TABLE_START:
        raise NotADirectory(f"object {oid.hex()} is not a directory")
    end = _table_end(tx.read(oid, DATA_START, _HEAD.size), oid, header.data_end)
    return tx.read(oid, DATA_START, end - DATA_START)


def _tx_target(tx: Transaction, oid: ObjectId) -> Callable[[int], ObjectId]:
    def target_of(word: int) -> ObjectId:
        # the FOT entry's bytes, not ``tx.follow``: the target may live on another node
        index = word >> OFFSET_BITS
        header = tx.header(oid)
        if not 1 <= index <= header.fot_count:
            raise CorruptObject(f"directory {oid.hex()}: entry has FOT index {index}")
        raw = tx.read(oid, fot_entry_offset(header.max_size, index), FOT_ENTRY_SIZE)
        entry = FotEntry.decode(raw)
        if entry.target is None:
            raise CorruptObject(f"directory {oid.hex()}: entry target is not an ID")
        return entry.target

    return target_of


def tx_find(tx: Transaction, oid: ObjectId, name: str) -> Entry | None:
    """``find`` as the transaction sees the directory (locks it)."""
    wanted = name.encode()
    for offset, state, kind, raw, text, word in _scan(_tx_table(tx, oid), oid):
        if state == EntryState.LIVE and raw == wanted:
            return _entry(oid, offset, kind, raw, text, word, _tx_target(tx, oid))
    return None


def tx_entries(tx: Transaction, oid: ObjectId) -> list[Entry]:
    target_of = _tx_target(tx, oid)
    return [
        _entry(oid, offset, kind, name, text, word, target_of)
        for offset, state, kind, name, text, word in _scan(_tx_table(tx, oid), oid)
        if state == EntryState.LIVE
    ]


def _append(tx: Transaction, oid: ObjectId, head: bytes, name: bytes, text: bytes) -> None:
    """Write one entry at the end of the table, packing tombstones away if it must."""
    size = _entry_size(len(name), len(text))
    dirh = tx.view(DirHeader, oid, DATA_START)
    end = dirh.table_end
    # room for the entry and for one more FOT entry (a new target)
    if end + size + FOT_ENTRY_SIZE > tx.header(oid).fot_start and dirh.dead:
        end = _compact(tx, oid)
    if end + size + FOT_ENTRY_SIZE > tx.header(oid).fot_start:
        raise ObjectFull(f"directory {oid.hex()} is full")
    tx.write(oid, end, (head + name + text).ljust(size, b"\0"))
    dirh.table_end = end + size
    dirh.live = dirh.live + 1


def _compact(tx: Transaction, oid: ObjectId) -> int:
    """Pack the live entries down over the tombstones; the new table end."""
    table = _tx_table(tx, oid)
    packed = bytearray()
    for offset, state, _, name, text, _ in _scan(table, oid):
        if state == EntryState.LIVE:
            start = offset - DATA_START
            packed += table[start : start + _entry_size(len(name), len(text))]
    tx.write(oid, TABLE_START, bytes(packed))
    dirh = tx.view(DirHeader, oid, DATA_START)
    dirh.table_end = TABLE_START + len(packed)
    dirh.dead = 0
    return TABLE_START + len(packed)


def bind(
    tx: Transaction,
    oid: ObjectId,
    name: str,
    target: ObjectId,
    kind: EntryKind = EntryKind.OBJECT,
    *,
    replace: bool = False,
) -> ObjectId | None:
    """Bind ``name`` in directory ``oid`` to ``target``; the target it replaced, if any.

    A bound name is ``NameExists`` unless ``replace``, and a directory or a symbolic
    link is never replaced (unbind it first).
    """
    if kind == EntryKind.SYMLINK:
        raise InvalidArgument("symbolic links are made with symlink()")
    old = tx_find(tx, oid, name)
    if old is not None and (not replace or old.kind != EntryKind.OBJECT):
        what = {EntryKind.DIRECTORY: "a directory", EntryKind.SYMLINK: "a symbolic link"}
        raise NameExists(f"{name!r} is bound already{_to(old, what)}")
    word = tx.pointer_to(oid, target, DATA_START, TARGET_FLAGS)
    if old is not None:
        view = tx.view(DirEntry, oid, old.offset)
        view.kind = int(kind)
        tx.write_u64(oid, old.offset + DirEntry.FIELDS["target"].offset, word)
        return old.target
    head = _ENTRY.pack(EntryState.LIVE, kind, len(name.encode()), 0, word)
    _append(tx, oid, head, name.encode(), b"")
    return None


def _to(entry: Entry, what: dict[EntryKind, str]) -> str:
    if entry.kind in what:
        return f" to {what[entry.kind]}"
    return f" to {entry.target.hex()}" if entry.target is not None else ""


def symlink(tx: Transaction, oid: ObjectId, name: str, text: str) -> None:
    """Bind ``name`` in directory ``oid`` to a symbolic link holding ``text``."""
    if tx_find(tx, oid, name) is not None:
        raise NameExists(f"{name!r} is bound already")
    raw_name, raw_text = name.encode(), text.encode()
    head = _ENTRY.pack(EntryState.LIVE, EntryKind.SYMLINK, len(raw_name), len(raw_text), 0)
    _append(tx, oid, head, raw_name, raw_text)


def unbind(tx: Transaction, oid: ObjectId, name: str) -> Entry:
    """Turn the entry ``name`` into a tombstone; the entry it was."""
    old = tx_find(tx, oid, name)
    if old is None:
        raise NameNotFound(f"{name!r} is not bound")
    tx.view(DirEntry, oid, old.offset).state = int(EntryState.TOMBSTONE)
    dirh = tx.view(DirHeader, oid, DATA_START)
    dirh.live = dirh.live - 1
    dirh.dead = dirh.dead + 1
    return old


def rebind_entry(tx: Transaction, oid: ObjectId, name: str, entry: Entry) -> None:
    """Bind ``name`` in ``oid`` to what ``entry`` (read from some directory) held."""
    if entry.kind == EntryKind.SYMLINK:
        symlink(tx, oid, name, entry.text)
    else:
        assert entry.target is not None
        bind(tx, oid, name, entry.target, entry.kind)
