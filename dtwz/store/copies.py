"""Read-only copies of objects homed on other nodes.

A copy is the object's bytes in an anonymous, sparse mapping (header record, data
area, FOT: the parts that hold anything), wrapped in a ``StoredObject`` so that
reads and pointer dereferences work exactly as on local objects. Each copy is
tagged with the version its home served.

Invalidation races: the home may commit (and send ``Invalidate``) while a fetch
reply with the older version is still in flight. The cache therefore remembers
the highest version it was told about per object, even with no copy, and refuses
to install a copy older than that.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from dtwz.errors import CorruptObject
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.store.objects import ObjectSource, StoredObject


@dataclass(slots=True)
class ObjectCopy:
    obj: StoredObject
    version: int
    home: str


class CopyCache:
    """Copies held by this node, bounded by total bytes (least recently used first)."""

    def __init__(self, source: ObjectSource, max_bytes: int = 1 << 30) -> None:
        self._source = source
        self._copies: OrderedDict[bytes, ObjectCopy] = OrderedDict()
        self._invalidated: dict[bytes, int] = {}
        self._bytes = 0
        self.max_bytes = max_bytes
        self.stats = {"hits": 0, "misses": 0, "installs": 0, "invalidations": 0, "stale": 0}

    def __len__(self) -> int:
        return len(self._copies)

    def get(self, oid: ObjectId) -> ObjectCopy | None:
        copy = self._copies.get(oid)
        if copy is None:
            self.stats["misses"] += 1
            return None
        self._copies.move_to_end(oid)
        self.stats["hits"] += 1
        return copy

    def peek(self, oid: ObjectId) -> ObjectCopy | None:
        return self._copies.get(oid)

    def install(
        self,
        header_record: bytes,
        version: int,
        home: str,
        data: bytes | memoryview,
        fot: bytes | memoryview,
        expect: bytes | None = None,
    ) -> ObjectCopy | None:
        """Build a copy from fetched parts; None if an invalidation says it is stale.

        The header must decode and its ID must match its metadata, and be ``expect``
        when given (the ID asked for): a node that serves a forged or damaged object,
        or another object than the one asked for, is caught here (``CorruptObject``).
        """
        header = ObjectHeader.decode(header_record)
        if expect is not None and header.object_id != expect:
            raise CorruptObject(
                f"{home} served object {header.object_id.hex()} when asked for {expect.hex()}"
            )
        if header.version != version:
            raise CorruptObject(f"copy of {header.object_id.hex()}: header/version mismatch")
        if len(data) > header.data_len or len(fot) != header.max_size - header.fot_start:
            raise CorruptObject(f"copy of {header.object_id.hex()}: parts do not fit its layout")
        oid = header.object_id
        if self._invalidated.get(oid, 0) > version:
            self.stats["stale"] += 1
            return None
        # a bytearray, not an anonymous mmap: calloc'd memory is as sparse, and far
        # cheaper to set up and tear down for the many small copies a node holds
        mapping = bytearray(header.max_size)
        mapping[:HEADER_RECORD_SIZE] = header_record
        mapping[DATA_START : DATA_START + len(data)] = data
        if fot:
            mapping[header.fot_start :] = fot
        copy = ObjectCopy(StoredObject(self._source, oid, mapping), version, home)
        self._drop(oid)
        self._copies[oid] = copy
        self._bytes += header.max_size
        self.stats["installs"] += 1
        while self._bytes > self.max_bytes and len(self._copies) > 1:
            self._drop(next(iter(self._copies)))
        return copy

    def invalidate(self, oid: ObjectId, version: int) -> bool:
        """The home committed ``version``: drop an older copy. True if one was dropped."""
        if version > self._invalidated.get(oid, 0):
            self._invalidated[oid] = version
        copy = self._copies.get(oid)
        if copy is None or copy.version >= version:
            return False
        self._drop(oid)
        self.stats["invalidations"] += 1
        return True

    def discard(self, oid: ObjectId) -> bool:
        """Drop the copy, if any (its object came home here, or a caller asked)."""
        present = oid in self._copies
        self._drop(oid)
        return present

    def drop_home(self, home: str) -> int:
        """Forget every copy served by a node that died (it may come back changed)."""
        gone = [oid for oid, c in self._copies.items() if c.home == home]
        for oid in gone:
            self._drop(oid)
        return len(gone)

    def _drop(self, oid: bytes) -> None:
        copy = self._copies.pop(oid, None)
        if copy is not None:
            self._bytes -= copy.obj.max_size
            copy.obj.mark_deleted()  # pointers that cached this copy must look it up again
