"""The Twizzler key-value store: one index object, many data objects, persistent pointers.

This is the case study of the Twizzler paper redone on dtwz. The *index object*
holds an open-addressing hash table whose slots are persistent pointers into
*data objects* that hold the keys and values. A lookup hashes the key, probes the
table, follows one cross-object pointer through the index object's FOT and
returns the value as a read-only memoryview straight into the mapping: no copy,
no (de)serialisation. Every change runs in a dtwz transaction, so the store is
crash-consistent by construction: a put, delete or table rebuild is in the
objects entirely or not at all.

Index object (its ID is the handle of the store)::

    0x1000   KVIndexHeader  magic "DTWZKVI1" | capacity u64 | live u64 | tombstones u64
                            | table ptr (same object) | data ptr (active data object)
                            | data_objects u32 | data_size_log2 u32
    ...      the table: capacity slots of 16 bytes, ``tag u64 | record ptr u64``
    ...      outgrown tables (left behind when the table doubles, never reused)
    top      FOT: one entry per data object

A slot is *empty* (tag 0), a *tombstone* (tag set, record NULL) or *live*.
``tag = h | 1`` where ``h`` is the little-endian 64-bit blake2b digest of the key,
and the key's home slot is ``(h >> 1) % capacity``; probing is linear. Tags make
a miss cost no pointer dereference and let the table be rebuilt without reading
a single key.

Data object::

    0x1000   KVDataHeader   magic "DTWZKVD1" | index ptr | prev ptr (older data object)
                            | records u64 | dead_bytes u64
    ...      records, 8-aligned: key_len u32 | value_len u32 | key | value
    top      FOT: the index object, the previous data object

Policies (documented choices):

- **growth**: when live entries plus tombstones would pass 3/4 of the capacity the
  table is rebuilt, in place at the same capacity when dropping tombstones is
  enough, otherwise at twice the capacity in fresh space of the index object.
  When the index object has no room left for that, ``put`` raises ``IndexFull``
  (create the store with a larger ``index_size``; objects are sparse, so a large
  index costs only the pages it uses).
- **data objects** fill up in order; a record that does not fit opens a new one.
  A record larger than an empty data object raises ``ValueTooLarge``.
- **overwrites** of a value with one of the same length happen in place (readers
  holding a memoryview see the new bytes once committed); other overwrites append
  a new record and count the old one in ``dead_bytes``. Space is not compacted.

Reads outside a transaction see committed data and take no locks; like any
zero-copy reader they are not isolated from a commit landing while they read.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from types import TracebackType

from dtwz import Layout, ObjectId, Pointer, Ref, Store, StoredObject, Transaction
from dtwz.errors import CorruptObject, FormatError, InvalidArgument, ObjectFull
from dtwz.format.layout import DATA_START, FOT_ENTRY_SIZE
from dtwz.format.pointers import split_pointer
from dtwz.format.views import U32, U64, Bytes

INDEX_MAGIC = b"DTWZKVI1"
DATA_MAGIC = b"DTWZKVD1"
DEFAULT_INDEX_SIZE = 16 << 20
DEFAULT_DATA_SIZE = 1 << 20
DEFAULT_CAPACITY = 1024
SLOT_SIZE = 16
MAX_LOAD = 0.75

_SLOT = struct.Struct("<QQ")
_RECORD = struct.Struct("<II")

KeyLike = bytes | bytearray | memoryview


class ValueTooLarge(InvalidArgument):
    """A key and value that would not fit even in an empty data object."""


class IndexFull(ObjectFull):
    """The index object has no room for a larger table (or another FOT entry)."""


class KVIndexHeader(Layout):
    magic = Bytes(8)
    capacity = U64()
    live = U64()
    tombstones = U64()
    table = Pointer()  # same object: FOT index 0
    data = Pointer("KVDataHeader")
    data_objects = U32()
    data_size_log2 = U32()


class KVDataHeader(Layout):
    magic = Bytes(8)
    index = Pointer(KVIndexHeader)
    prev = Pointer("KVDataHeader")
    records = U64()
    dead_bytes = U64()


class KVRecord(Layout):
    """The fixed head of a record; the key and then the value follow it."""

    key_len = U32()
    value_len = U32()


assert _RECORD.size == KVRecord.SIZE  # the hot paths unpack record heads with _RECORD


def key_hash(key: KeyLike) -> int:
    """A stable 64-bit hash of a key (the same on every node and every run)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _tag(key: KeyLike) -> int:
    return key_hash(key) | 1


def max_record_size(data_size: int) -> int:
    """The most bytes (record head, key and value) one data object can hold."""
    start = DATA_START + KVDataHeader.SIZE
    return data_size - start - 2 * FOT_ENTRY_SIZE  # FOT: the index and the previous object


def _as_bytes(what: str, raw: KeyLike) -> bytes:
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidArgument(f"{what} must be bytes, got {type(raw).__name__}")
    return bytes(raw)


class KVStore:
    """A key-value store living in ``store``; ``index_id`` is its handle."""

    def __init__(self, store: Store, index_id: ObjectId) -> None:
        self.store = store
        self.index_id = ObjectId(index_id)
        header = store.view(KVIndexHeader, self.index_id)
        if bytes(header.magic) != INDEX_MAGIC:
            raise FormatError(f"object {self.index_id} is not a KV index (bad magic)")
        self.data_size = 1 << header.data_size_log2
        self.max_record = max_record_size(self.data_size)

    # -- life cycle ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        store: Store,
        *,
        index_size: int = DEFAULT_INDEX_SIZE,
        data_size: int = DEFAULT_DATA_SIZE,
        capacity: int = DEFAULT_CAPACITY,
    ) -> KVStore:
        """A new, empty KV store: an index object and its first data object."""
        if capacity < 8 or capacity & (capacity - 1):
            raise InvalidArgument(f"capacity must be a power of two >= 8, got {capacity}")
        with store.transaction() as tx:
            index = tx.create(index_size)
            data = tx.create(data_size)
            header = tx.new(KVIndexHeader, index, magic=INDEX_MAGIC, capacity=capacity)
            try:
                table = tx.alloc(index, capacity * SLOT_SIZE)
            except ObjectFull as exc:
                raise InvalidArgument(
                    f"an index of {index_size} bytes cannot hold {capacity} slots"
                ) from exc
            header.table = Ref(index, table)
            header.data = _new_data_object(tx, data, header, None)
            header.data_objects = 1
            header.data_size_log2 = data_size.bit_length() - 1
        return cls(store, index)

    @classmethod
    def open(cls, store: Store, index_id: ObjectId) -> KVStore:
        return cls(store, index_id)

    # -- reads: committed data, zero-copy --------------------------------------

    def get(self, key: KeyLike) -> memoryview | None:
        """The value of ``key`` as a read-only memoryview into the mapping, or None."""
        index = self.store.get(self.index_id)
        found = _probe_committed(index, key)
        if found is None:
            return None
        obj, at, key_len, value_len = found
        start = at + _RECORD.size + key_len
        return obj.view[start : start + value_len]

    def locate(self, key: KeyLike) -> Ref | None:
        """Where the record of ``key`` lives: its data object and offset."""
        index = self.store.get(self.index_id)
        found = _probe_committed(index, key)
        if found is None:
            return None
        obj, at, _, _ = found
        return Ref(obj.object_id, at)

    def __getitem__(self, key: KeyLike) -> memoryview:
        value = self.get(key)
        if value is None:
            raise KeyError(bytes(key))
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes | bytearray | memoryview) and self.get(key) is not None

    def __len__(self) -> int:
        return int(self.store.view(KVIndexHeader, self.index_id).live)

    def __iter__(self) -> Iterator[bytes]:
        for key, _ in self.items():
            yield key

    def items(self) -> Iterator[tuple[bytes, memoryview]]:
        """``(key, value)`` of every live entry, in table order; values are zero-copy."""
        index = self.store.get(self.index_id)
        capacity, table = _table_of(index.view)
        for i in range(capacity):
            _, word = _SLOT.unpack_from(index.view, table + i * SLOT_SIZE)
            if word:
                obj, at = index.follow(word)
                key_len, value_len = _record_head(obj.view, at)
                key_at = at + _RECORD.size
                yield (
                    bytes(obj.view[key_at : key_at + key_len]),
                    obj.view[key_at + key_len : key_at + key_len + value_len],
                )

    def data_objects(self) -> list[ObjectId]:
        """The data objects, newest first (following the ``prev`` chain)."""
        out: list[ObjectId] = []
        block: KVDataHeader | None = self.store.view(KVIndexHeader, self.index_id).data
        while block is not None:
            out.append(block.object_id)
            block = block.prev
        return out

    def stats(self) -> dict[str, int]:
        header = self.store.view(KVIndexHeader, self.index_id)
        return {
            "capacity": header.capacity,
            "live": header.live,
            "tombstones": header.tombstones,
            "data_objects": header.data_objects,
        }

    # -- writes: each call is a transaction ------------------------------------

    def batch(self, tx: Transaction | None = None) -> KVBatch:
        """Group changes into one transaction (``tx``, or a new one committed at exit)."""
        return KVBatch(self, tx)

    def put(self, key: KeyLike, value: KeyLike, *, tx: Transaction | None = None) -> None:
        with self.batch(tx) as batch:
            batch.put(key, value)

    def delete(self, key: KeyLike, *, tx: Transaction | None = None) -> bool:
        """Remove ``key``; False when it was not there."""
        with self.batch(tx) as batch:
            return batch.delete(key)

    def put_many(self, items: Iterable[tuple[KeyLike, KeyLike]]) -> None:
        with self.batch() as batch:
            for key, value in items:
                batch.put(key, value)

    def __repr__(self) -> str:
        return f"KVStore({self.index_id})"


def _record_head(view: memoryview, at: int) -> tuple[int, int]:
    if at + _RECORD.size > len(view):
        raise CorruptObject(f"KV record at {at:#x} runs past its object")
    key_len, value_len = _RECORD.unpack_from(view, at)
    if at + _RECORD.size + key_len + value_len > len(view):
        raise CorruptObject(f"KV record at {at:#x} runs past its object")
    return key_len, value_len


def _probe_committed(
    index: StoredObject, key: KeyLike
) -> tuple[StoredObject, int, int, int] | None:
    """Find ``key`` in the committed table: (record's object, offset, key and value lengths)."""
    view = index.view
    capacity, table = _table_of(view)
    mask = capacity - 1
    tag = _tag(key)
    i = (tag >> 1) & mask
    for _ in range(capacity):
        slot_tag, word = _SLOT.unpack_from(view, table + i * SLOT_SIZE)
        if not slot_tag:
            return None
        if word and slot_tag == tag:
            obj, at = index.follow(word)
            key_len, value_len = _record_head(obj.view, at)
            key_at = at + _RECORD.size
            if obj.view[key_at : key_at + key_len] == key:
                return obj, at, key_len, value_len
        i = (i + 1) & mask
    return None


_HEADER_CAPACITY = KVIndexHeader.FIELDS["capacity"].offset
_HEADER_TABLE = KVIndexHeader.FIELDS["table"].offset
_U64 = struct.Struct("<Q")


def _table_of(view: memoryview) -> tuple[int, int]:
    """(capacity, table offset) straight from the mapped index header: the hot path."""
    capacity = _U64.unpack_from(view, DATA_START + _HEADER_CAPACITY)[0]
    fot_index, table = split_pointer(_U64.unpack_from(view, DATA_START + _HEADER_TABLE)[0])
    if (
        capacity < 1
        or capacity & (capacity - 1)
        or fot_index
        or table < DATA_START
        or table + capacity * SLOT_SIZE > len(view)
    ):
        raise CorruptObject("KV index header has a bad table pointer or capacity")
    return capacity, table


def _new_data_object(
    tx: Transaction, oid: ObjectId, index: KVIndexHeader, prev: Ref | None
) -> KVDataHeader:
    block = tx.new(KVDataHeader, oid, magic=DATA_MAGIC)
    block.index = index
    block.prev = prev
    return block


class KVBatch:
    """Changes to one KV store inside one transaction.

    Table slots and header counters are kept here and written once, at ``flush``
    (the end of the ``with`` block): a transaction's reads scan its own pending
    writes, so writing each slot as it changes would make a large batch quadratic.
    """

    def __init__(self, kv: KVStore, tx: Transaction | None = None) -> None:
        self.kv = kv
        self._own_tx = tx is None
        self.tx = kv.store.transaction() if tx is None else tx
        self._index = kv.index_id
        self._flushed = False
        try:
            self.tx.lock(self._index)  # index first, then data objects: one lock order
            header = self.tx.view(KVIndexHeader, self._index)
            if bytes(header.magic) != INDEX_MAGIC:
                raise FormatError(f"object {self._index} is not a KV index (bad magic)")
            self._header = header
            self._capacity = int(header.capacity)
            self._live = int(header.live)
            self._tombstones = int(header.tombstones)
            table = header.table
            assert table is not None
            self._table = int(table.offset)
            data = header.data
            assert data is not None
            self._data: ObjectId = data.object_id
            self._data_objects = int(header.data_objects)
        except BaseException:
            if self._own_tx:
                self.tx.abort()
            raise
        self._slots: dict[int, tuple[int, int]] = {}  # slot -> (tag, word), unwritten
        self._fresh_table = False  # a rebuilt table: slots not in _slots are empty
        self._records: dict[ObjectId, list[int]] = {}  # data object -> [records, dead bytes]

    def __enter__(self) -> KVBatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.flush()
            if self._own_tx:
                self.tx.commit()
        elif self._own_tx:
            self.tx.abort()

    # -- operations ------------------------------------------------------------

    def put(self, key: KeyLike, value: KeyLike) -> None:
        key = _as_bytes("a key", key)
        value = _as_bytes("a value", value)
        size = _RECORD.size + len(key) + len(value)
        if size > self.kv.max_record:
            raise ValueTooLarge(
                f"a {len(key)}-byte key with a {len(value)}-byte value needs {size} bytes; "
                f"a data object of {self.kv.data_size} bytes holds at most {self.kv.max_record}"
            )
        tag = _tag(key)
        slot, word, free = self._find(key, tag)
        if word:
            oid, at = self.tx.follow(self._index, word)
            key_len, value_len = _RECORD.unpack(self.tx.read(oid, at, _RECORD.size))
            if value_len == len(value):  # same length: overwrite in place
                self.tx.write(oid, at + _RECORD.size + key_len, value)
                return
            self._count(oid, 0, _RECORD.size + key_len + value_len)
            self._slots[slot] = (tag, self._append(key, value))
            return
        if self._live + self._tombstones + 1 > self._capacity * MAX_LOAD and free is None:
            self._rebuild(self._live + 1)
            slot, _, free = self._find(key, tag)
        new_word = self._append(key, value)
        if free is not None:  # reuse a tombstone
            slot = free
            self._tombstones -= 1
        self._slots[slot] = (tag, new_word)
        self._live += 1

    def delete(self, key: KeyLike) -> bool:
        key = _as_bytes("a key", key)
        tag = _tag(key)
        slot, word, _ = self._find(key, tag)
        if not word:
            return False
        oid, at = self.tx.follow(self._index, word)
        key_len, value_len = _RECORD.unpack(self.tx.read(oid, at, _RECORD.size))
        self._count(oid, 0, _RECORD.size + key_len + value_len)
        self._slots[slot] = (tag, 0)
        self._live -= 1
        self._tombstones += 1
        return True

    def get(self, key: KeyLike) -> bytes | None:
        """The value as this batch sees it (a copy: it may not be committed yet)."""
        key = _as_bytes("a key", key)
        _, word, _ = self._find(key, _tag(key))
        if not word:
            return None
        oid, at = self.tx.follow(self._index, word)
        key_len, value_len = _RECORD.unpack(self.tx.read(oid, at, _RECORD.size))
        return self.tx.read(oid, at + _RECORD.size + key_len, value_len)

    def flush(self) -> None:
        """Write the slots and counters this batch changed into the transaction."""
        if self._flushed:
            return
        self._flushed = True
        tx = self.tx
        if self._fresh_table:
            table = bytearray(self._capacity * SLOT_SIZE)
            for i, (tag, word) in self._slots.items():
                _SLOT.pack_into(table, i * SLOT_SIZE, tag, word)
            tx.write(self._index, self._table, table)
        else:
            for i, (tag, word) in sorted(self._slots.items()):
                tx.write(self._index, self._table + i * SLOT_SIZE, _SLOT.pack(tag, word))
        header = self._header
        for name, value in (
            ("capacity", self._capacity),
            ("live", self._live),
            ("tombstones", self._tombstones),
            ("data_objects", self._data_objects),
        ):
            if getattr(header, name) != value:
                setattr(header, name, value)
        if self._fresh_table:
            header.table = Ref(self._index, self._table)
        for oid, (records, dead) in self._records.items():
            block = tx.view(KVDataHeader, oid)
            if records:
                block.records = block.records + records
            if dead:
                block.dead_bytes = block.dead_bytes + dead

    # -- the table -------------------------------------------------------------

    def _slot(self, i: int) -> tuple[int, int]:
        cached = self._slots.get(i)
        if cached is not None:
            return cached
        if self._fresh_table:
            return 0, 0
        raw = self.tx.read(self._index, self._table + i * SLOT_SIZE, SLOT_SIZE)
        tag, word = _SLOT.unpack(raw)
        return int(tag), int(word)

    def _find(self, key: bytes, tag: int) -> tuple[int, int, int | None]:
        """(slot, record word, first tombstone seen): word 0 and the empty slot on a miss."""
        mask = self._capacity - 1
        i = (tag >> 1) & mask
        free: int | None = None
        for _ in range(self._capacity):
            slot_tag, word = self._slot(i)
            if not slot_tag:
                return i, 0, free
            if not word:
                if free is None:
                    free = i
            elif slot_tag == tag and self._record_key(word) == key:
                return i, word, free
            i = (i + 1) & mask
        if free is None:
            raise IndexFull(f"KV index {self._index} has no free slot")  # never at load < 1
        return free, 0, free

    def _record_key(self, word: int) -> bytes:
        oid, at = self.tx.follow(self._index, word)
        key_len, _ = _RECORD.unpack(self.tx.read(oid, at, _RECORD.size))
        return self.tx.read(oid, at + _RECORD.size, key_len)

    def _rebuild(self, need: int) -> None:
        """Rehash into a table with room for ``need`` entries, dropping tombstones."""
        old = [self._slot(i) for i in range(self._capacity)]
        capacity = self._capacity
        while need > capacity * MAX_LOAD:
            capacity *= 2
        if capacity == self._capacity:
            table = self._table  # tombstones made the room: rebuild in place
        else:
            try:
                table = self.tx.alloc(self._index, capacity * SLOT_SIZE)
            except ObjectFull as exc:
                raise IndexFull(
                    f"KV index {self._index} has no room for a table of {capacity} slots "
                    f"({self._live} live entries); create the store with a larger index_size"
                ) from exc
        mask = capacity - 1
        slots: dict[int, tuple[int, int]] = {}
        for tag, word in old:
            if word:
                i = (tag >> 1) & mask
                while i in slots:
                    i = (i + 1) & mask
                slots[i] = (tag, word)
        self._slots = slots
        self._fresh_table = True
        self._capacity = capacity
        self._table = table
        self._tombstones = 0

    # -- the data objects ------------------------------------------------------

    def _append(self, key: bytes, value: bytes) -> int:
        """Write a record into the active data object (opening a new one when full);
        the pointer word to it, stored in the index object."""
        record = _RECORD.pack(len(key), len(value)) + key + value
        try:
            at = self.tx.alloc(self._data, len(record))
        except ObjectFull:
            self._open_data_object()
            at = self.tx.alloc(self._data, len(record))
        self.tx.write(self._data, at, record)
        self._count(self._data, 1, 0)
        try:
            return self.tx.pointer_to(self._index, self._data, at)
        except ObjectFull as exc:
            raise IndexFull(f"KV index {self._index} has no room for another FOT entry") from exc

    def _open_data_object(self) -> None:
        oid = self.tx.create(self.kv.data_size)
        _new_data_object(self.tx, oid, self._header, Ref(self._data, DATA_START))
        try:
            self._header.data = Ref(oid, DATA_START)
        except ObjectFull as exc:
            raise IndexFull(f"KV index {self._index} has no room for another FOT entry") from exc
        self._data = oid
        self._data_objects += 1

    def _count(self, oid: ObjectId, records: int, dead: int) -> None:
        counts = self._records.setdefault(oid, [0, 0])
        counts[0] += records
        counts[1] += dead
