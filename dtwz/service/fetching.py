"""Fetching from a home: whole copies, and ranges of objects too large to copy.

A node never asks a home for more than ``CHUNK`` bytes of data per message. A
copy is fetched as a first ``Fetch`` (header, version, data end, first chunk and
the whole FOT) and then the rest of the data in chunks, at most ``WINDOW`` in
flight. Every reply carries the version it was read at: if a chunk's version
differs from the first one's, a commit landed mid-fetch and the fetch starts
again. The copy is installed only if no invalidation of a newer version arrived
meanwhile (``CopyCache.install`` refuses it); then too it starts again. After
five attempts, ``TransactionConflict`` (docs/PROTOCOL.md §8).

Objects whose data passes the caller's ``whole_limit`` are never copied: they
are remembered as large and read by range (``read_range``), with no copy kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dtwz.errors import (
    CorruptObject,
    HomeUnreachable,
    PeerUnavailable,
    PointerOutOfBounds,
    TransactionConflict,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.service.cluster import Cluster
from dtwz.store.copies import CopyCache
from dtwz.store.objects import StoredObject
from dtwz.wire.messages import Fetch, ObjectData

CHUNK = 1 << 20  # data bytes per Fetch
WINDOW = 4  # Fetches of one object in flight at once
ATTEMPTS = 5  # fetches of one object before a commit mid-fetch is a conflict


class CopyFetcher:
    """Reads objects from their homes for this node, keeping copies in ``copies``."""

    def __init__(self, cluster: Cluster, copies: CopyCache, stats: dict[str, int]) -> None:
        self.cluster = cluster
        self.copies = copies
        self._stats = stats  # the service's counters: "remote_reads", "range_reads"
        self.large: set[bytes] = set()  # remote objects read by range, never copied whole
        # called with each copy fetched on demand (the neighbour prefetch policy)
        self.on_fetched: Callable[[StoredObject], None] | None = None

    async def fetch(
        self,
        home: str,
        oid: ObjectId,
        offset: int,
        length: int,
        *,
        with_fot: bool,
        register: bool = True,
    ) -> ObjectData:
        """One ``Fetch`` of ``oid`` from ``home``; the reply checked to be of ``oid``."""
        message = Fetch(oid, offset, length, with_fot, register, self.cluster.node_id)
        try:
            reply = await self.cluster.request(home, message)
        except PeerUnavailable as exc:
            raise HomeUnreachable(f"home {home} of {oid.hex()} did not answer") from exc
        if not isinstance(reply, ObjectData) or reply.object_id != oid:
            raise CorruptObject(f"home {home} answered a fetch of {oid.hex()} with {reply!r}")
        return reply

    async def fetch_copy(
        self, home: str, oid: ObjectId, whole_limit: int | None = None
    ) -> tuple[StoredObject, int, str] | None:
        """A whole copy of ``oid`` from ``home``: (object, version, home). None, and
        ``oid`` remembered as large, if its data passes ``whole_limit``."""
        for _ in range(ATTEMPTS):
            first = await self.fetch(home, oid, DATA_START, CHUNK, with_fot=True)
            if whole_limit is not None and first.data_end - DATA_START > whole_limit:
                self.large.add(oid)
                return None
            parts = [first.data]
            rest = range(DATA_START + CHUNK, first.data_end, CHUNK)
            if rest:
                chunks = await self.fetch_chunks(home, oid, rest)
                if any(c.version != first.version for c in chunks):
                    continue  # a commit landed mid-fetch: start again
                parts += [c.data for c in chunks]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            copy = self.copies.install(
                first.header, first.version, home, data, first.fot, expect=oid
            )
            self._stats["remote_reads"] += 1
            if copy is None:
                continue  # invalidated while in flight
            if self.on_fetched is not None:
                self.on_fetched(copy.obj)
            return copy.obj, copy.version, home
        raise TransactionConflict(f"object {oid.hex()} kept changing while fetched")

    async def fetch_chunks(
        self, home: str, oid: ObjectId, starts: range, *, register: bool = True
    ) -> list[ObjectData]:
        """Fetch CHUNK-sized ranges, at most WINDOW in flight (flow control)."""
        gate = asyncio.Semaphore(WINDOW)

        async def chunk(at: int) -> ObjectData:
            async with gate:
                return await self.fetch(home, oid, at, CHUNK, with_fot=False, register=register)

        return list(await asyncio.gather(*(chunk(at) for at in starts)))

    async def read_range(
        self, oid: ObjectId, offset: int, length: int
    ) -> tuple[memoryview, int, str]:
        """Bytes of a remote object, all of one commit, without keeping a copy:
        (bytes, version, home). Past the object's data end they read as zeros."""
        if offset < DATA_START or length < 0:
            raise PointerOutOfBounds(f"read of {length} bytes at {offset:#x} is outside the data")
        home = (await self.cluster.locate(oid)).home
        for _ in range(ATTEMPTS):
            first = await self.fetch(
                home, oid, offset, min(length, CHUNK), with_fot=False, register=False
            )
            if offset + length > first.max_size:
                raise PointerOutOfBounds(
                    f"read of {length} bytes at {offset:#x} is outside object {oid.hex()}"
                )
            starts = range(offset + CHUNK, offset + length, CHUNK)
            chunks = await self.fetch_chunks(home, oid, starts, register=False) if starts else []
            if any(c.version != first.version for c in chunks):
                continue  # a commit landed mid-read: read again
            out = bytearray(length)  # past data_end an object reads as zeros
            for part in (first, *chunks):
                at = part.offset - offset
                size = min(len(part.data), length - at)
                out[at : at + size] = part.data[:size]
            self._stats["range_reads"] += 1
            return memoryview(out).toreadonly(), first.version, home
        raise TransactionConflict(f"object {oid.hex()} kept changing while read")
