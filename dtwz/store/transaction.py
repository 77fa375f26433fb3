"""Transactions: the only way to change objects.

A transaction locks each object the first time it touches it (held until commit
or abort), keeps its writes in memory and reads its own writes. ``commit`` turns
them into one redo record (each touched object also gets a new header with its
version bumped) and hands it to the store, which makes it durable and applies it.
Nothing of an aborted or interrupted transaction ever reaches an object.

Used as a context manager, a transaction commits when the block ends normally
and aborts when it raises. What a transaction needs of its store is the small
``CommitTarget`` protocol below, so this module does not import the store.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

from dtwz.errors import (
    BadFotIndex,
    CorruptObject,
    InvalidArgument,
    InvalidFotEntry,
    NullPointer,
    ObjectFull,
    PointerOutOfBounds,
    ReadOnlyObject,
    TransactionClosed,
    UnresolvedName,
)
from dtwz.format import views
from dtwz.format.ids import ZERO_ID, ObjectId, new_nonce
from dtwz.format.layout import (
    DATA_START,
    FOT_ENTRY_SIZE,
    FotEntry,
    FotFlags,
    ObjectHeader,
    Protection,
    fot_entry_offset,
    new_header,
)
from dtwz.format.pointers import make_pointer, split_pointer
from dtwz.store.locks import ObjectLocks, _Latch
from dtwz.store.objects import NameResolver, StoredObject
from dtwz.store.redo import CreateOp, DeleteOp, RedoOp, WriteOp

DEFAULT_OBJECT_SIZE = 1 << 20
DEFAULT_POINTER_FLAGS = FotFlags.READ | FotFlags.WRITE
_U64 = struct.Struct("<Q")
L = TypeVar("L", bound=views.Layout)


class CommitTarget(Protocol):
    """What a transaction needs of its store (``dtwz.store.store.Store``)."""

    @property
    def name_resolver(self) -> NameResolver | None: ...

    @property
    def object_locks(self) -> ObjectLocks: ...

    def get(self, oid: ObjectId) -> StoredObject: ...

    def exists(self, oid: ObjectId) -> bool: ...

    def commit(self, ops: list[RedoOp]) -> None:
        """Append, make durable and apply one redo record; the caller holds the
        locks of every object the ops write."""
        ...


class _Pending:
    """What one transaction has done to one object so far."""

    __slots__ = (
        "base",
        "created",
        "deleted",
        "header",
        "latch",
        "new_fot",
        "new_fot_targets",
        "obj",
        "writes",
    )

    def __init__(self, header: ObjectHeader, obj: StoredObject | None, latch: _Latch | None):
        self.header = header
        self.base = header  # as committed when the lock was taken
        self.obj = obj
        self.latch = latch
        self.created = obj is None
        self.deleted = False
        self.writes: list[tuple[int, bytes]] = []
        self.new_fot: dict[tuple[bytes, int], int] = {}
        self.new_fot_targets: dict[int, ObjectId] = {}


class Transaction:
    def __init__(self, store: CommitTarget) -> None:
        self._store = store
        self._pending: dict[bytes, _Pending] = {}
        self._open = True

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._open:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # -- objects ---------------------------------------------------------------

    def create(
        self,
        max_size: int = DEFAULT_OBJECT_SIZE,
        *,
        flags: int = 0,
        default_prot: int = Protection.READ | Protection.WRITE,
        kuid: ObjectId = ZERO_ID,
        nonce: bytes | None = None,
    ) -> ObjectId:
        """A new, empty object; it exists for others once this transaction commits.

        ``nonce`` (16 bytes) fixes the ID instead of a random nonce, for objects every
        node must be able to name in advance (the root directory). Such an object
        must not exist yet: the caller serialises creations of one fixed ID.
        """
        self._check_open()
        if nonce is not None and len(nonce) != 16:
            raise InvalidArgument(f"a nonce is 16 bytes, got {len(nonce)}")
        header = new_header(nonce or new_nonce(), kuid, flags, default_prot, max_size)
        if nonce is not None and (
            header.object_id in self._pending or self._store.exists(header.object_id)
        ):
            raise InvalidArgument(f"object {header.object_id.hex()} exists already")
        self._pending[header.object_id] = _Pending(header, None, None)
        return header.object_id

    def restore(
        self, header: ObjectHeader, data: bytes | memoryview, fot: bytes | memoryview
    ) -> ObjectId:
        """Recreate an object from its image (a migration's arrival): the same ID,
        metadata, bytes and version as at its old home. ``header`` must have been
        decoded with its ID checked; the object must not exist here yet."""
        self._check_open()
        oid = header.object_id
        if oid in self._pending or self._store.exists(oid):
            raise InvalidArgument(f"object {oid.hex()} exists already")
        if len(data) > header.data_len or len(fot) != header.max_size - header.fot_start:
            raise CorruptObject(f"image of {oid.hex()}: parts do not fit its layout")
        # commit writes the header with version + 1: start one below the image's
        pending = _Pending(header.evolve(version=max(0, header.version - 1)), None, None)
        if len(data):
            pending.writes.append((DATA_START, bytes(data)))
        if len(fot):
            pending.writes.append((header.fot_start, bytes(fot)))
        self._pending[oid] = pending
        return oid

    def lock(self, oid: ObjectId) -> ObjectHeader:
        """Lock an object for the rest of the transaction (consistent reads); its header."""
        return self._touch(oid).header

    def header(self, oid: ObjectId) -> ObjectHeader:
        """The object's header as this transaction sees it."""
        return self._touch(oid).header

    def delete(self, oid: ObjectId) -> None:
        pending = self._touch(oid)
        pending.deleted = True

    def _touch(self, oid: ObjectId) -> _Pending:
        pending = self._pending.get(oid)
        if pending is not None:
            if pending.deleted:
                raise InvalidArgument(f"object {oid.hex()} is deleted in this transaction")
            return pending
        self._check_open()
        obj = self._store.get(oid)  # ObjectNotFound before we take any lock
        holding = any(p.latch is not None for p in self._pending.values())
        latch = self._store.object_locks.acquire(obj.object_id, holding_others=holding)
        try:
            pending = _Pending(obj.header(), obj, latch)  # read under the lock: current
        except BaseException:
            self._store.object_locks.release(obj.object_id, latch)
            raise
        self._pending[obj.object_id] = pending
        return pending

    def _writable(self, oid: ObjectId) -> _Pending:
        pending = self._touch(oid)
        if pending.header.immutable and not pending.created:
            raise ReadOnlyObject(f"object {oid.hex()} is immutable")
        return pending

    # -- bytes -----------------------------------------------------------------

    def read(self, oid: ObjectId, offset: int, length: int) -> bytes:
        """Bytes as this transaction sees them (committed bytes plus its own writes)."""
        # reading locks the object too (two-phase locking): a read-modify-write that
        # read without the lock would lose concurrent updates
        pending = self._pending.get(oid) or self._touch(oid)
        if offset < DATA_START or length < 0 or offset + length > pending.header.max_size:
            raise PointerOutOfBounds(f"read of {length} bytes at {offset:#x} is outside the object")
        if pending.obj is not None:
            out = bytearray(pending.obj.view[offset : offset + length])
        else:
            out = bytearray(length)
        end = offset + length
        for at, data in pending.writes:
            lo, hi = max(at, offset), min(at + len(data), end)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - at : hi - at]
        return bytes(out)

    def read_u64(self, oid: ObjectId, offset: int) -> int:
        return int(_U64.unpack(self.read(oid, offset, 8))[0])

    def write(self, oid: ObjectId, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes into the data area (anywhere below the FOT)."""
        pending = self._writable(oid)
        header = pending.header
        end = offset + len(data)
        if offset < DATA_START or end > header.max_size:
            raise PointerOutOfBounds(
                f"write of {len(data)} bytes at {offset:#x} is outside the data area of {oid.hex()}"
            )
        if end > header.fot_start:
            raise ObjectFull(f"write at {offset:#x}..{end:#x} would overwrite the FOT")
        pending.writes.append((offset, bytes(data)))
        # keep the allocator above everything written; a new header marks the object dirty
        pending.header = header.evolve(data_len=max(header.data_len, end - DATA_START))

    def write_u64(self, oid: ObjectId, offset: int, value: int) -> None:
        self.write(oid, offset, _U64.pack(value))

    def alloc(self, oid: ObjectId, size: int, align: int = 8) -> int:
        """Reserve ``size`` zeroed bytes in the data area; their offset."""
        if size < 0 or align < 1 or align & (align - 1):
            raise InvalidArgument(f"bad allocation size {size} or alignment {align}")
        pending = self._writable(oid)
        header = pending.header
        start = -(-header.data_end // align) * align
        if start + size > header.fot_start:
            raise ObjectFull(
                f"object {oid.hex()} has {header.fot_start - header.data_end} bytes free, "
                f"{size} asked"
            )
        pending.header = header.evolve(data_len=start + size - DATA_START)
        return start

    def append(self, oid: ObjectId, data: bytes | bytearray | memoryview, align: int = 8) -> int:
        """Allocate and write ``data``; its offset."""
        offset = self.alloc(oid, len(data), align)
        self.write(oid, offset, data)
        return offset

    # -- FOT and pointers ------------------------------------------------------

    def add_fot_entry(self, oid: ObjectId, entry: FotEntry) -> int:
        """Append an FOT entry; its index."""
        pending = self._writable(oid)
        header = pending.header
        index = header.fot_count + 1
        if index >= 1 << 16:
            raise ObjectFull(f"object {oid.hex()} has no FOT index left")
        at = fot_entry_offset(header.max_size, index)
        if at < header.data_end:
            raise ObjectFull(f"object {oid.hex()} has no room for another FOT entry")
        pending.writes.append((at, entry.encode()))
        pending.header = header.evolve(fot_count=index)
        return index

    def pointer_to(
        self,
        source: ObjectId,
        target: ObjectId,
        offset: int,
        flags: FotFlags = DEFAULT_POINTER_FLAGS,
    ) -> int:
        """The pointer word that, stored in ``source``, points at ``target + offset``.

        A cross-object pointer reuses an ID entry with the same target and flags or
        adds one; the entry commits atomically with whatever stores the pointer.
        """
        if offset < DATA_START:
            raise InvalidArgument(f"a pointer cannot target the header page (offset {offset:#x})")
        if target == source:
            return make_pointer(0, offset)
        pending = self._writable(source)
        key = (bytes(target), int(FotFlags.VALID | flags))
        index = pending.new_fot.get(key)
        if index is None and pending.obj is not None:
            index = pending.obj.find_fot_entry(target, key[1])
        if index is None:
            index = self.add_fot_entry(source, FotEntry.for_id(ObjectId(target), flags))
            pending.new_fot[key] = index
            pending.new_fot_targets[index] = ObjectId(target)
        return make_pointer(index, offset)

    def pointer_by_name(
        self, source: ObjectId, name: str, offset: int, flags: FotFlags = FotFlags.READ
    ) -> int:
        """A late-bound pointer: the name is resolved each time it is followed."""
        raw = name.encode("utf-8")
        if not raw:
            raise InvalidArgument("a name entry needs a non-empty name")
        at = self.append(source, raw, align=1)
        index = self.add_fot_entry(source, FotEntry.for_name(at, len(raw), flags))
        return make_pointer(index, offset)

    def write_pointer(
        self,
        source: ObjectId,
        at: int,
        target: ObjectId | None,
        offset: int = DATA_START,
        flags: FotFlags = DEFAULT_POINTER_FLAGS,
    ) -> int:
        """Store at ``source + at`` a pointer to ``target + offset`` (None stores NULL)."""
        word = 0 if target is None else self.pointer_to(source, target, offset, flags)
        self.write_u64(source, at, word)
        return word

    def follow(self, source: ObjectId, word: int) -> tuple[ObjectId, int]:
        """Dereference a pointer stored in ``source`` as this transaction sees it."""
        index, offset = split_pointer(word)
        pending = self._pending.get(source)
        target = pending.new_fot_targets.get(index) if pending is not None else None
        if target is None and index == 0:
            if not word:
                raise NullPointer("dereference of a NULL pointer")
            target = ObjectId(source)
        if target is None and pending is not None and index > pending.base.fot_count:
            target = self._own_fot_target(pending, source, index)  # added by this tx
        if target is None:
            if pending is not None and pending.obj is None:
                raise BadFotIndex(f"FOT index {index} not in this new object's FOT")
            obj, offset = self._store.get(source).follow(word)
            return obj.object_id, offset
        if offset < DATA_START or offset >= self.header(target).max_size:
            raise PointerOutOfBounds(f"pointer {index}:{offset:#x} is outside its target")
        return target, offset

    def _own_fot_target(self, pending: _Pending, source: ObjectId, index: int) -> ObjectId:
        """Resolve an FOT entry that this transaction added (not in the object yet)."""
        header = pending.header
        if index > header.fot_count:
            raise BadFotIndex(f"FOT index {index} not in 1..{header.fot_count} of {source.hex()}")
        raw = self.read(source, fot_entry_offset(header.max_size, index), FOT_ENTRY_SIZE)
        entry = FotEntry.decode(raw)
        if not entry.is_valid:
            raise InvalidFotEntry(f"FOT entry {index} of {source.hex()} is not valid")
        if entry.target is not None:
            return entry.target
        entry.check_name_bounds(header)
        try:
            name = self.read(source, entry.name_offset, entry.name_length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptObject("FOT name entry is not UTF-8") from exc
        resolver = self._store.name_resolver
        if resolver is None:
            raise UnresolvedName(f"no resolver for name {name!r} (FOT entry {index})")
        return resolver(name, ObjectId(source))

    # -- typed views (dtwz.format.views) ---------------------------------------

    def view(self, layout: type[L], oid: ObjectId, offset: int = DATA_START) -> L:
        """A writable typed view at ``oid + offset``."""
        return views.tx_view(self, layout, oid, offset)  # type: ignore[no-any-return]

    def new(self, layout: type[L], oid: ObjectId, **values: Any) -> L:
        """Allocate a ``layout`` in ``oid``, set ``values``; its writable view."""
        return views.tx_new(self, layout, oid, **values)  # type: ignore[no-any-return]

    # -- end -------------------------------------------------------------------

    @property
    def touched(self) -> Iterator[ObjectId]:
        return (ObjectId(oid) for oid in self._pending)

    def commit(self) -> None:
        """Make every write durable and visible, all together; then release the locks."""
        self._check_open()
        try:
            ops: list[RedoOp] = []
            for oid, pending in self._pending.items():
                object_id = ObjectId(oid)
                if pending.deleted:
                    ops.append(DeleteOp(object_id))
                    continue
                if (
                    pending.obj is not None
                    and not pending.writes
                    and (pending.header.data_len == pending.obj.header().data_len)
                ):
                    continue  # locked or read, never changed
                if pending.created:
                    ops.append(CreateOp(object_id, pending.header.size_log2))
                ops.extend(WriteOp(object_id, at, data) for at, data in pending.writes)
                header = pending.header.evolve(version=pending.header.version + 1)
                ops.append(WriteOp(object_id, 0, header.encode()))
            if ops:
                self._store.commit(ops)
        finally:
            self._finish()

    def abort(self) -> None:
        """Forget every write and release the locks."""
        if self._open:
            self._finish()

    def _finish(self) -> None:
        self._open = False
        locks = self._store.object_locks
        for oid, pending in self._pending.items():
            if pending.latch is not None:
                locks.release(ObjectId(oid), pending.latch)
        self._pending.clear()

    def _check_open(self) -> None:
        if not self._open:
            raise TransactionClosed("the transaction has already committed or aborted")


__all__ = ["DEFAULT_OBJECT_SIZE", "FOT_ENTRY_SIZE", "Transaction"]
