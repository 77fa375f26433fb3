"""A mapped object: zero-copy reads and bounds-checked pointer dereference.

A ``StoredObject`` is one object file mapped shared into this process. Readers get
read-only memoryviews straight into the mapping (no copy); only the store's commit
path writes through the mapping, and only after the transaction's redo record is
durable. FOT entries are append-only, so an entry once resolved to an object stays
resolved: ``follow`` caches the target per index and the hot path is a list index,
a mask and two comparisons.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from dtwz.errors import (
    BadFotIndex,
    CorruptObject,
    FormatError,
    InvalidFotEntry,
    NullPointer,
    PointerOutOfBounds,
    TransactionConflict,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import (
    DATA_START,
    FOT_ENTRY_SIZE,
    HEADER_RECORD_SIZE,
    FotEntry,
    ObjectHeader,
    fot_entry_offset,
)
from dtwz.format.pointers import OFFSET_BITS, OFFSET_MASK

NameResolver = Callable[[str, ObjectId], ObjectId]
"""Turns a name held in a name FOT entry (and the object holding it) into an ID."""


class ObjectSource(Protocol):
    """Where a mapped object finds the targets of its pointers: a local store, a
    node's store plus its copies of remote objects, or a client's cache."""

    name_resolver: NameResolver | None

    def get(self, oid: ObjectId) -> StoredObject: ...


_U64 = struct.Struct("<Q")
TRANSLATIONS_MAX = 4096  # pointer words remembered per object
# objects whose translations are not empty, to forget them all when an object goes
_TRANSLATING: weakref.WeakSet[StoredObject] = weakref.WeakSet()


class StoredObject:
    """One object of a store, mapped into this process."""

    __slots__ = (
        "__weakref__",
        "_fot_lookup",
        "_fot_scanned",
        "_fot_targets",
        "_map",
        "_seq",
        "_store",
        "deleted",
        "max_size",
        "object_id",
        "translations",
        "view",
    )

    def __init__(
        self,
        store: ObjectSource,
        object_id: ObjectId,
        mapping: mmap.mmap | bytearray | ctypes.Array[ctypes.c_char],
    ) -> None:
        self._store = store
        self.object_id = object_id
        whole = memoryview(mapping)
        if whole.format != "B":  # a ctypes mapping exports chars
            whole = whole.cast("B")
        self._map = whole  # writes (the store's commit path) and u64 reads go through it
        self.max_size = len(whole)
        self.view = whole.toreadonly()
        # index -> resolved target (ID entries only). Index 0 means this object but
        # holds None: a reference to self would make a cycle that only the garbage
        # collector frees, keeping the mapping (and its descriptor) alive
        self._fot_targets: list[StoredObject | None] = [None]
        # (target ID, flags) -> index, for reuse when storing pointers
        self._fot_lookup: dict[tuple[bytes, int], int] = {}
        self._fot_scanned = 0
        # odd while this process applies a commit to the object (a seqlock for readers
        # that copy bytes out, such as a node serving a fetch)
        self._seq = 0
        self.deleted = False  # set by the store when this process deletes the object
        self.translations: dict[int, tuple[StoredObject, int]] = {}

    # -- reading ---------------------------------------------------------------

    def header(self) -> ObjectHeader:
        """The header as committed now (re-read every call: other writers move it)."""
        return ObjectHeader.decode(self.view[:HEADER_RECORD_SIZE], check_id=False)

    def read(self, offset: int, length: int) -> memoryview:
        """A zero-copy, read-only view of ``length`` bytes at ``offset``."""
        if offset < DATA_START or length < 0 or offset + length > self.max_size:
            raise PointerOutOfBounds(
                f"read of {length} bytes at {offset:#x} is outside object "
                f"{self.object_id.hex()} (data {DATA_START:#x}..{self.max_size:#x})"
            )
        return self.view[offset : offset + length]

    def read_u64(self, offset: int) -> int:
        if offset < DATA_START or offset + 8 > self.max_size:
            raise PointerOutOfBounds(f"u64 at {offset:#x} is outside the object")
        return int(_U64.unpack_from(self._map, offset)[0])

    def fot_entry(self, index: int) -> FotEntry:
        header = self.header()
        if not 1 <= index <= header.fot_count:
            raise BadFotIndex(
                f"FOT index {index} not in 1..{header.fot_count} of object {self.object_id.hex()}"
            )
        at = fot_entry_offset(self.max_size, index)
        try:
            return FotEntry.decode(self.view[at : at + FOT_ENTRY_SIZE])
        except FormatError as exc:
            raise CorruptObject(f"FOT entry {index} of {self.object_id.hex()}: {exc}") from exc

    def fot_entries(self) -> list[tuple[int, FotEntry]]:
        return [(i, self.fot_entry(i)) for i in range(1, self.header().fot_count + 1)]

    def entry_name(self, entry: FotEntry) -> str:
        entry.check_name_bounds(self.header())
        raw = bytes(self.view[entry.name_offset : entry.name_offset + entry.name_length])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptObject("FOT name entry is not UTF-8") from exc

    # -- pointers --------------------------------------------------------------

    def follow(self, word: int) -> tuple[StoredObject, int]:
        """Dereference a pointer stored in this object: ``(target object, offset)``.

        A pointer word that follows to an ID entry (or inside the object) always
        leads to the same place: FOT entries never change and sizes are fixed. Its
        checked result is kept in ``translations`` (a small software TLB), so hot
        loops may look a word up there first and call ``follow`` only on a miss.
        Name entries are late-bound and never kept.
        """
        hit = self.translations.get(word)
        if hit is not None:
            return hit
        index = word >> OFFSET_BITS
        offset = word & OFFSET_MASK
        if index:
            targets = self._fot_targets
            target = targets[index] if index < len(targets) else None
            if target is None or target.deleted:  # no stale cached target
                target = self._resolve(index)
        else:
            target = self
        if offset < DATA_START or offset >= target.max_size:
            if not word:
                raise NullPointer("dereference of a NULL pointer")
            raise PointerOutOfBounds(
                f"pointer {index}:{offset:#x} is outside object {target.object_id.hex()} "
                f"(data {DATA_START:#x}..{target.max_size:#x})"
            )
        targets = self._fot_targets
        if not index or (index < len(targets) and targets[index] is target):
            memo = self.translations
            if len(memo) >= TRANSLATIONS_MAX:
                memo.clear()
            if not memo:
                _TRANSLATING.add(self)
            memo[word] = (target, offset)
        return target, offset

    def forget_targets(self) -> None:
        """Drop every resolved pointer target (the store evicted this mapping): a
        chain of objects must not keep each other mapped past the store's budget."""
        self._fot_targets = [None]
        self.translations.clear()

    def forget_foreign(self) -> None:
        """Forget resolved pointer targets that are not of this object's own store
        (copies a client fetched): their holder may be gone, or they may be stale."""
        own = self._store
        targets = self._fot_targets
        for i, target in enumerate(targets):
            if target is not None and target._store is not own:
                targets[i] = None
        if any(target._store is not own for target, _ in self.translations.values()):
            self.translations.clear()

    def mark_deleted(self) -> None:
        """This object is gone (deleted here, or a copy dropped): no pointer may lead
        to it any more, so every translation in this process is forgotten."""
        self.deleted = True
        for obj in list(_TRANSLATING):
            obj.translations.clear()
        _TRANSLATING.clear()

    def _resolve(self, index: int) -> StoredObject:
        entry = self.fot_entry(index)  # raises BadFotIndex for a bad index
        if not entry.is_valid:
            raise InvalidFotEntry(f"FOT entry {index} of {self.object_id.hex()} is not valid")
        if entry.is_name:
            name = self.entry_name(entry)
            resolver = self._store.name_resolver
            if resolver is None:
                raise UnresolvedName(f"no resolver for name {name!r} (FOT entry {index})")
            # late binding: never cached here, the resolver owns name caching
            return self._store.get(resolver(name, self.object_id))
        assert entry.target is not None
        linked = getattr(self._store, "get_linked", None)  # a client: counts edge uses
        target = linked(entry.target, self.object_id) if linked else self._store.get(entry.target)
        targets = self._fot_targets
        if len(targets) <= index:
            targets.extend([None] * (index + 1 - len(targets)))
        targets[index] = target
        return target

    def find_fot_entry(self, target: ObjectId, flags: int) -> int | None:
        """Index of an existing ID entry for ``target`` with exactly ``flags``, if any."""
        count = self.header().fot_count
        lookup = self._fot_lookup
        # entries are append-only: scan only those added since the last call
        for index in range(self._fot_scanned + 1, count + 1):
            entry = self.fot_entry(index)
            if entry.target is not None:
                lookup.setdefault((bytes(entry.target), int(entry.flags)), index)
        self._fot_scanned = max(self._fot_scanned, count)
        return lookup.get((bytes(target), flags))

    def snapshot(self, ranges: list[tuple[int, int]], attempts: int = 100) -> list[bytes]:
        """Copies of byte ranges all from one commit (retried while one is being applied)."""
        for _ in range(attempts):
            seq = self._seq
            if not seq & 1:
                out = [bytes(self.view[a:b]) for a, b in ranges]
                if self._seq == seq:
                    return out
            time.sleep(0)  # let the committing thread finish
        raise TransactionConflict(f"object {self.object_id.hex()} kept changing while copied")

    # -- commit path (store only) ----------------------------------------------

    def _apply(self, offset: int, data: bytes) -> None:
        self._map[offset : offset + len(data)] = data

    def __repr__(self) -> str:
        return f"StoredObject({self.object_id.hex()}, max_size={self.max_size})"
