"""Object operations across the cluster, as one node serves them.

Theory of operation
-------------------
Each object has one home: the node whose store holds it. The home orders every
write (transactions run there) and remembers which nodes hold copies.

- **Reads** of a remote object fetch it from its home (in chunks for large
  objects, several in flight) and keep a read-only copy tagged with the home's
  version. Later reads use the copy; a read that asks for the latest version
  first checks the home's version (one round trip) and refetches if needed.
- **Writes** run at the home as a local transaction. The home then invalidates
  every registered copy and waits (bounded) for the holders to drop them before
  it answers, so after an acknowledged write no node serves an older copy unless
  it is cut off. Each request carries a transaction ID; a home that already ran
  that ID answers again with the first result instead of applying it twice.
- The home copies bytes out under the object's seqlock (``StoredObject.snapshot``)
  so a fetch never returns half of a commit; immutable objects are sent straight
  from the mapping, zero-copy.

The service does not know sockets: it asks its ``Cluster`` (the node) to locate
objects and to send messages to other nodes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from dtwz.errors import (
    ClusterError,
    CorruptObject,
    DtwzError,
    HomeUnreachable,
    InvalidArgument,
    ObjectMoved,
    ObjectNotFound,
    PeerUnavailable,
    PointerOutOfBounds,
    StaleLocation,
    TransactionConflict,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.format.names import split_path
from dtwz.store.copies import CopyCache
from dtwz.store.objects import NameResolver, StoredObject
from dtwz.store.store import Store
from dtwz.store.transaction import Transaction
from dtwz.wire.kinds import TxOpKind
from dtwz.wire.messages import (
    Ack,
    Create,
    Created,
    Fetch,
    FetchMany,
    HomeRecord,
    Invalidate,
    Message,
    ObjectBatch,
    ObjectData,
    ObjectImage,
    ObjectVersion,
    Transact,
    TransactResult,
    TxOp,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
WINDOW = 4
WHOLE_COPY_MAX = 16 << 20  # data bytes: larger remote objects are read by range
FREEZE_WAIT = 30.0  # seconds a write waits for a migration of its object to finish
EDGE_USES_MAX = 200_000  # (source, target) pairs counted; the rarest go when full
# the op kinds (dtwz.wire.kinds.TxOpKind) under their old names
OP_WRITE, OP_APPEND, OP_POINTER = TxOpKind.WRITE, TxOpKind.APPEND, TxOpKind.POINTER
OP_ALLOC, OP_NAME_POINTER = TxOpKind.ALLOC, TxOpKind.NAME_POINTER
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


class Cluster(Protocol):
    """What the service needs from its node."""

    node_id: str

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord: ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    async def publish_created(self, record: HomeRecord) -> None: ...

    def learn_location(self, record: HomeRecord) -> None: ...


class ObjectService:
    def __init__(self, store: Store, cluster: Cluster, *, invalidate_timeout: float = 1.0) -> None:
        self.store = store
        self.cluster = cluster
        self.name_resolver: NameResolver | None = None
        self.copies = CopyCache(self)
        self.holders: dict[bytes, set[str]] = {}
        # txn_id -> outcome of requests already run here (or running), for retries
        self._applied: OrderedDict[bytes, asyncio.Future[Message]] = OrderedDict()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dtwz-commit")
        self.invalidate_timeout = invalidate_timeout
        self._large: set[bytes] = set()  # remote objects read by range, never copied whole
        # migration: objects being shipped away (writes wait), forwarding addresses
        # of objects that left (set by dtwz.node.migration), directory epochs
        self.frozen: dict[bytes, asyncio.Event] = {}
        self.forwarding: Callable[[bytes], tuple[str, int] | None] = lambda oid: None
        self.epochs: dict[bytes, int] = {}
        self._writing: dict[bytes, int] = {}
        self.deletions = 0  # objects deleted here (moved away): code workers re-map
        # called with each copy fetched on demand (the neighbour prefetch policy)
        self.on_fetched: Callable[[StoredObject], None] | None = None
        # (source, target) -> dereferences that had to fetch the target (co-location)
        self.edge_uses: dict[tuple[bytes, bytes], int] = {}
        self.stats = {
            "remote_reads": 0,
            "local_reads": 0,
            "copy_reads": 0,
            "fetches_served": 0,
            "transactions": 0,
            "duplicates": 0,
            "invalidations_sent": 0,
            "range_reads": 0,
            "batch_fetches_served": 0,
            "prefetched": 0,
            "moved_redirects": 0,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- ObjectSource: what pointers in local objects and copies resolve against -------

    def get(self, oid: ObjectId) -> StoredObject:
        """A local object or a copy already held; never a network round trip."""
        copy = self.copies.peek(oid)
        if copy is not None:
            return copy.obj
        return self.store.get(oid)

    def is_home(self, oid: ObjectId) -> bool:
        return self.store.exists(oid)

    def epoch_of(self, oid: bytes) -> int:
        """The directory epoch of an object homed here (1 unless it migrated in)."""
        return self.epochs.get(oid, 1)

    # -- client-facing operations ------------------------------------------------------

    async def create(
        self,
        max_size: int,
        flags: int = 0,
        default_prot: int = 3,
        data: bytes = b"",
        txn_id: bytes | None = None,
        *,
        kuid: ObjectId = ZERO_ID,
        nonce: bytes | None = None,
    ) -> Created:
        """Create an object homed on this node; publish its location before answering.

        With a ``txn_id``, a retried create returns the first object instead of
        making a second one. ``kuid`` names the owner's key object; ``nonce`` fixes
        the ID (key objects: their ID is a content ID).
        """

        def run() -> Created:
            with self.store.transaction() as tx:
                oid = tx.create(
                    max_size, flags=flags, default_prot=default_prot, kuid=kuid, nonce=nonce
                )
                offset = tx.append(oid, data) if data else 0
            return Created(oid, 1, offset)

        async def create_and_publish() -> Created:
            created = await self._in_thread(run)
            record = HomeRecord(created.object_id, self.cluster.node_id, 1, 1)
            await self.cluster.publish_created(record)
            return created

        if txn_id:
            return await self._once(txn_id, create_and_publish)
        return await create_and_publish()

    async def open(
        self, oid: ObjectId, *, latest: bool = False, whole_limit: int | None = None
    ) -> tuple[StoredObject, int, str] | None:
        """The object (local, or a whole copy fetched on demand), its version and its home.

        With ``whole_limit``, a remote object whose data is larger is not copied
        (None is returned; its size is remembered) so the caller can read ranges.
        """
        copy = self.copies.get(oid)  # before is_home: a copy is never of a local object
        if copy is not None and not latest:
            self.stats["copy_reads"] += 1
            return copy.obj, copy.version, copy.home
        if self.is_home(oid):
            obj = self.store.get(oid)
            self.stats["local_reads"] += 1
            return obj, obj.header().version, self.cluster.node_id
        record = await self.cluster.locate(oid)
        try:
            if copy is not None:  # latest asked: one round trip to compare versions
                layout = await self._fetch(record.home, oid, 0, 0, with_fot=False)
                if layout.version == copy.version:
                    return copy.obj, copy.version, copy.home
            return await self._fetch_copy(record.home, oid, whole_limit)
        except (ObjectNotFound, StaleLocation) as exc:
            # the home no longer has it (the location was stale, or it migrated)
            record = await self._relocate(oid, exc)
            if record.home == self.cluster.node_id:
                obj = self.store.get(oid)
                return obj, obj.header().version, self.cluster.node_id
            return await self._fetch_copy(record.home, oid, whole_limit)

    async def _relocate(self, oid: ObjectId, exc: Exception) -> HomeRecord:
        """Where ``oid`` lives after a home said it does not: the forwarding address
        an ``ObjectMoved`` carries, else a fresh directory lookup."""
        if not isinstance(exc, ObjectMoved) or exc.home is None:
            return await self.cluster.locate(oid, refresh=True)
        self.stats["moved_redirects"] += 1
        record = HomeRecord(oid, exc.home, 0, exc.epoch or 0)
        self.cluster.learn_location(record)
        return record

    async def open_whole(
        self, oid: ObjectId, *, latest: bool = False
    ) -> tuple[StoredObject, int, str]:
        opened = await self.open(oid, latest=latest)
        assert opened is not None
        return opened

    async def read(
        self, oid: ObjectId, offset: int, length: int, *, latest: bool = False
    ) -> tuple[memoryview, int, str]:
        """Bytes of an object wherever it lives. Remote objects up to WHOLE_COPY_MAX
        bytes of data are copied whole (later reads are local); larger ones are read
        by range, without a copy."""
        if oid not in self._large:
            opened = await self.open(oid, latest=latest, whole_limit=WHOLE_COPY_MAX)
            if opened is not None:
                obj, version, home = opened
                return obj.read(offset, length), version, home
        return await self._read_range(oid, offset, length)

    async def header_of(self, oid: ObjectId) -> ObjectHeader:
        """An object's header, its ID checked: from the store or a copy, else one
        small fetch from its home (no copy kept). Access checks read kuid and default
        protections from it; both are part of the ID, so they never change."""
        copy = self.copies.peek(oid)
        if copy is not None:
            return copy.obj.header()
        if self.is_home(oid):
            return self.store.get(oid).header()
        record = await self.cluster.locate(oid)
        try:
            reply = await self._fetch(
                record.home, oid, DATA_START, 0, with_fot=False, register=False
            )
        except (ObjectNotFound, StaleLocation) as exc:
            record = await self._relocate(oid, exc)
            if record.home == self.cluster.node_id:
                return self.store.get(oid).header()
            reply = await self._fetch(
                record.home, oid, DATA_START, 0, with_fot=False, register=False
            )
        header = ObjectHeader.decode(reply.header)  # checks the ID against the metadata
        if header.object_id != oid:
            raise CorruptObject(f"home {record.home} served the header of {header.object_id}")
        return header

    async def peek(self, oid: ObjectId, offset: int, length: int) -> bytes:
        """A few bytes of an object without keeping a copy of it: from the store or a
        copy held, else one range fetch from its home (``ObjectNotFound`` if none)."""
        copy = self.copies.peek(oid)
        if copy is not None:
            return bytes(copy.obj.read(offset, length))
        if self.is_home(oid):
            return bytes(self.store.read(oid, offset, length))
        data, _, _ = await self._read_range(oid, offset, length)
        return bytes(data)

    async def _read_range(
        self, oid: ObjectId, offset: int, length: int
    ) -> tuple[memoryview, int, str]:
        if offset < DATA_START or length < 0:
            raise PointerOutOfBounds(f"read of {length} bytes at {offset:#x} is outside the data")
        home = (await self.cluster.locate(oid)).home
        for _ in range(5):
            first = await self._fetch(
                home, oid, offset, min(length, CHUNK), with_fot=False, register=False
            )
            if offset + length > first.max_size:
                raise PointerOutOfBounds(
                    f"read of {length} bytes at {offset:#x} is outside object {oid.hex()}"
                )
            starts = range(offset + CHUNK, offset + length, CHUNK)
            chunks = await self._fetch_chunks(home, oid, starts, register=False) if starts else []
            if any(c.version != first.version for c in chunks):
                continue  # a commit landed mid-read: read again
            out = bytearray(length)  # past data_end an object reads as zeros
            for part in (first, *chunks):
                at = part.offset - offset
                size = min(len(part.data), length - at)
                out[at : at + size] = part.data[:size]
            self.stats["range_reads"] += 1
            return memoryview(out).toreadonly(), first.version, home
        raise TransactionConflict(f"object {oid.hex()} kept changing while read")

    async def transact(self, ops: Sequence[TxOp], txn_id: bytes | None = None) -> TransactResult:
        """Run ops atomically at the home of the objects they change (one home only)."""
        if not ops:
            raise InvalidArgument("a transaction needs at least one operation")
        txn_id = txn_id or os.urandom(16)
        oids = {op.object_id for op in ops}
        for redirects in range(4):  # a home that moved the objects says where they went
            try:
                reply = await self._transact_once(ops, oids, txn_id)
                break
            except StaleLocation as exc:
                if redirects == 3:
                    raise
                for oid in oids:
                    await self._relocate(oid, exc)
        for ov in reply.versions:
            self.copies.invalidate(ov.object_id, ov.version)
        return reply

    async def _transact_once(
        self, ops: Sequence[TxOp], oids: set[ObjectId], txn_id: bytes
    ) -> TransactResult:
        if all(self.is_home(oid) for oid in oids):
            return await self.run_local(ops, txn_id)
        homes = {(await self.cluster.locate(oid)).home for oid in oids}
        if len(homes) != 1:
            raise ClusterError(
                f"a transaction must change objects of one home; these live on {sorted(homes)}"
            )
        (home,) = homes
        if home == self.cluster.node_id:
            raise ObjectNotFound("the directory names this node as home of an object it lacks")
        message = Transact(txn_id, list(ops))
        for attempt in range(2):  # a retry with the same txn_id is never applied twice
            try:
                reply = await self.cluster.request(home, message)
                break
            except ObjectNotFound as exc:  # not (or no longer) there: a stale location
                raise StaleLocation(f"node {home} does not home these objects: {exc}") from exc
            except PeerUnavailable as exc:
                if attempt:
                    raise HomeUnreachable(
                        f"home {home} of the objects did not answer: the outcome is unknown; "
                        "retry with the same transaction ID to apply it at most once"
                    ) from exc
        assert isinstance(reply, TransactResult)
        return reply

    async def run_local(self, ops: Sequence[TxOp], txn_id: bytes) -> TransactResult:
        """Run at this home, once per ``txn_id``: a retry, even one that arrives while
        the first attempt still runs, gets the first attempt's result."""
        return await self._once(txn_id, lambda: self._run_and_invalidate(ops))

    async def _run_and_invalidate(self, ops: Sequence[TxOp]) -> TransactResult:
        oids = {op.object_id for op in ops}
        await self._admit_writes(oids)
        try:
            result = await self._in_thread(lambda: self._run_ops(ops))
        finally:
            self._done_writing(oids)
        self.stats["transactions"] += 1
        await self._invalidate_copies(result.versions)
        return result

    async def _admit_writes(self, oids: set[ObjectId]) -> None:
        """Let a write of ``oids`` run here: wait while a migration ships any of them,
        refuse (``ObjectMoved``) once one has left, count it as in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FREEZE_WAIT
        while waits := [self.frozen[o] for o in oids if o in self.frozen]:
            left = deadline - loop.time()
            if left <= 0:
                raise TransactionConflict("objects stayed frozen by a migration; retry later")
            await asyncio.wait_for(asyncio.gather(*(w.wait() for w in waits)), left)
        for oid in oids:
            self.check_here(oid)
        for oid in oids:
            self._writing[oid] = self._writing.get(oid, 0) + 1

    def _done_writing(self, oids: set[ObjectId]) -> None:
        for oid in oids:
            left = self._writing.pop(oid, 1) - 1
            if left:
                self._writing[oid] = left

    def writes_in_flight(self, oids: Sequence[bytes]) -> int:
        return sum(self._writing.get(o, 0) for o in oids)

    def check_here(self, oid: ObjectId) -> None:
        """``ObjectMoved`` if the object left this node, ``ObjectNotFound`` if absent."""
        if self.is_home(oid):
            return
        forward = self.forwarding(oid)
        if forward is not None:
            raise ObjectMoved(f"object {oid.hex()}", home=forward[0], epoch=forward[1])
        raise ObjectNotFound(f"object {oid.hex()} is not homed on {self.cluster.node_id}")

    async def once(self, txn_id: bytes, run: Callable[[], Awaitable[_M]]) -> _M:
        """Run ``run`` once per ``txn_id`` (see ``run_local``)."""
        return await self._once(txn_id, run)

    def applied_items(self) -> list[tuple[bytes, asyncio.Future[Message]]]:
        return list(self._applied.items())

    def remember_applied(self, txn_id: bytes, result: Message) -> None:
        """A transaction applied elsewhere (before its objects migrated here): a retry
        of it is answered with ``result``, not applied again."""
        if txn_id in self._applied:
            return
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        future.set_result(result)
        self._applied[txn_id] = future

    async def run_in_thread(self, fn: Callable[[], _T]) -> _T:
        return await self._in_thread(fn)

    async def delete_local(self, oids: Sequence[ObjectId]) -> None:
        """Delete objects homed here (they migrated away), in one transaction."""

        def delete() -> None:
            with self.store.transaction() as tx:
                for oid in oids:
                    tx.delete(oid)

        await self._in_thread(delete)
        self.deletions += len(oids)

    async def _once(self, txn_id: bytes, run: Callable[[], Awaitable[_M]]) -> _M:
        known = self._applied.get(txn_id)
        if known is not None:
            self.stats["duplicates"] += 1
            return await asyncio.shield(known)  # type: ignore[arg-type]
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._applied[txn_id] = future
        while len(self._applied) > 100_000:
            self._applied.popitem(last=False)
        try:
            result = await run()
        except BaseException as exc:
            # not applied: forget the ID so that a retry runs it again
            self._applied.pop(txn_id, None)
            future.set_exception(exc if isinstance(exc, Exception) else DtwzError("cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        future.set_result(result)
        return result

    async def run_at_home(
        self,
        txn_id: bytes,
        body: Callable[[Transaction], _T],
        reply: Callable[[_T, list[ObjectVersion]], _M],
    ) -> _M:
        """Run ``body`` in one local transaction, once per ``txn_id`` (as ``run_local``),
        invalidate the copies of what it changed, and answer ``reply(result, versions)``.

        For operations richer than ``TxOp``s that must run where the object is ordered
        (the namespace's directory edits).
        """

        async def run() -> _M:
            value, versions = await self._in_thread(lambda: self._run_in_tx(body))
            self.stats["transactions"] += 1
            await self._invalidate_copies(versions)
            return reply(value, versions)

        return await self._once(txn_id, run)

    def _run_in_tx(self, body: Callable[[Transaction], _T]) -> tuple[_T, list[ObjectVersion]]:
        for attempt in range(20):
            try:
                with self.store.transaction() as tx:
                    result = body(tx)
                    touched = list(tx.touched)
                break
            except TransactionConflict:
                if attempt == 19:
                    raise
        versions = [ObjectVersion(oid, self.store.get(oid).header().version) for oid in touched]
        return result, versions

    def _run_ops(self, ops: Sequence[TxOp]) -> TransactResult:
        results, versions = self._run_in_tx(lambda tx: [self._run_op(tx, op) for op in ops])
        return TransactResult(results, versions)

    @staticmethod
    def _run_op(tx: Transaction, op: TxOp) -> int:
        if op.kind == OP_WRITE:
            tx.write(op.object_id, op.offset, op.data)
            return 0
        if op.kind == OP_APPEND:
            return tx.append(op.object_id, op.data)
        if op.kind == OP_POINTER:
            return tx.write_pointer(op.object_id, op.offset, op.target, op.target_offset)
        if op.kind == OP_ALLOC:
            return tx.alloc(op.object_id, op.size)
        if op.kind == OP_NAME_POINTER:  # a late-bound pointer: the name is resolved when followed
            name = _pointer_name(op.data)
            # the slot first: the name is appended above the data end, which must not
            # be where the pointer goes
            tx.write_u64(op.object_id, op.offset, 0)
            word = tx.pointer_by_name(op.object_id, name, op.target_offset)
            tx.write_u64(op.object_id, op.offset, word)
            return word
        raise InvalidArgument(f"unknown transaction op kind {op.kind}")

    async def _invalidate_copies(self, versions: Sequence[ObjectVersion]) -> None:
        sends: list[Awaitable[Message]] = []
        for ov in versions:
            for holder in self.holders.pop(ov.object_id, ()):
                message = Invalidate(ov.object_id, ov.version)
                sends.append(self.cluster.request(holder, message, self.invalidate_timeout))
        if sends:
            self.stats["invalidations_sent"] += len(sends)
            results = await asyncio.gather(*sends, return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):  # the holder is gone or cut off
                    log.info("invalidation not acknowledged: %s", r)

    # -- fetching from a home --------------------------------------------------------

    async def _fetch(
        self,
        home: str,
        oid: ObjectId,
        offset: int,
        length: int,
        *,
        with_fot: bool,
        register: bool = True,
    ) -> ObjectData:
        message = Fetch(oid, offset, length, with_fot, register, self.cluster.node_id)
        try:
            reply = await self.cluster.request(home, message)
        except PeerUnavailable as exc:
            raise HomeUnreachable(f"home {home} of {oid.hex()} did not answer") from exc
        if not isinstance(reply, ObjectData) or reply.object_id != oid:
            raise CorruptObject(f"home {home} answered a fetch of {oid.hex()} with {reply!r}")
        return reply

    async def _fetch_copy(
        self, home: str, oid: ObjectId, whole_limit: int | None = None
    ) -> tuple[StoredObject, int, str] | None:
        for _ in range(5):
            first = await self._fetch(home, oid, DATA_START, CHUNK, with_fot=True)
            if whole_limit is not None and first.data_end - DATA_START > whole_limit:
                self._large.add(oid)
                return None
            parts = [first.data]
            rest = range(DATA_START + CHUNK, first.data_end, CHUNK)
            if rest:
                chunks = await self._fetch_chunks(home, oid, rest)
                if any(c.version != first.version for c in chunks):
                    continue  # a commit landed mid-fetch: start again
                parts += [c.data for c in chunks]
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            copy = self.copies.install(
                first.header, first.version, home, data, first.fot, expect=oid
            )
            self.stats["remote_reads"] += 1
            if copy is None:
                continue  # invalidated while in flight
            if self.on_fetched is not None:
                self.on_fetched(copy.obj)
            return copy.obj, copy.version, home
        raise TransactionConflict(f"object {oid.hex()} kept changing while fetched")

    async def _fetch_chunks(
        self, home: str, oid: ObjectId, starts: range, *, register: bool = True
    ) -> list[ObjectData]:
        """Fetch CHUNK-sized ranges, at most WINDOW in flight (flow control)."""
        gate = asyncio.Semaphore(WINDOW)

        async def chunk(at: int) -> ObjectData:
            async with gate:
                return await self._fetch(home, oid, at, CHUNK, with_fot=False, register=register)

        return list(await asyncio.gather(*(chunk(at) for at in starts)))

    # -- peer handlers (this node as home) -------------------------------------------

    async def on_fetch(self, m: Fetch) -> ObjectData:
        self.check_here(m.object_id)  # else the requester's location is stale
        obj = self.store.get(m.object_id)
        if m.register_copy:  # before reading: a commit after this point invalidates it
            self.holders.setdefault(m.object_id, set()).add(m.requester)
        header = ObjectHeader.decode(obj.view[:HEADER_RECORD_SIZE], check_id=False)
        start = max(m.offset, DATA_START)
        end = min(m.offset + m.length, header.data_end)
        ranges = [(0, HEADER_RECORD_SIZE)]
        if end > start:
            ranges.append((start, end))
        if m.with_fot:
            ranges.append((header.fot_start, header.max_size))
        if header.immutable:  # never changes: send straight from the mapping
            parts: list[bytes | memoryview] = [obj.view[a:b] for a, b in ranges]
            parts[0] = bytes(parts[0])
        else:
            parts = list(obj.snapshot(ranges))
        header = ObjectHeader.decode(parts[0], check_id=False)
        data = parts[1] if end > start else b""
        fot = parts[-1] if m.with_fot else b""
        self.stats["fetches_served"] += 1
        return ObjectData(
            m.object_id,
            header.version,
            header.max_size,
            header.data_end,
            header.fot_start,
            start,
            bytes(parts[0]),
            data,
            fot,
        )

    async def on_transact(self, m: Transact) -> TransactResult:
        # not homed here: checked after the txn_id, so that a retry of a transaction
        # applied before its objects migrated away gets its first answer
        return await self.run_local(m.ops, m.txn_id)

    # -- batches, images and edge counts (the graph service) ---------------------------

    def image(self, oid: ObjectId) -> ObjectImage:
        """The object (local or a copy held) as header record, data and FOT, all of one
        commit."""
        obj = self.get(oid)
        for _ in range(100):
            header = ObjectHeader.decode(obj.view[:HEADER_RECORD_SIZE], check_id=False)
            raw, data, fot = obj.snapshot(
                [
                    (0, HEADER_RECORD_SIZE),
                    (DATA_START, header.data_end),
                    (header.fot_start, header.max_size),
                ]
            )
            if ObjectHeader.decode(raw, check_id=False) == header:
                return ObjectImage(oid, header.version, raw, data, fot)
        raise TransactionConflict(f"object {oid.hex()} kept changing while copied")

    async def on_fetch_many(self, m: FetchMany) -> ObjectBatch:
        images, missing = [], []
        for oid in m.object_ids:
            if not self.is_home(oid):
                missing.append(oid)
                continue
            if m.register_copy:  # before reading, as for Fetch
                self.holders.setdefault(oid, set()).add(m.requester)
            images.append(self.image(oid))
        self.stats["batch_fetches_served"] += 1
        self.stats["fetches_served"] += len(images)
        return ObjectBatch(images, missing)

    def install_image(self, home: str, image: ObjectImage) -> bool:
        """Hold a fetched image as a copy; False if an invalidation made it stale."""
        copy = self.copies.install(
            image.header, image.version, home, image.data, image.fot, expect=image.object_id
        )
        return copy is not None

    def note_edge(self, source: ObjectId, target: ObjectId) -> None:
        """A pointer from ``source`` to ``target`` was followed and had to fetch it."""
        uses = self.edge_uses
        key = (bytes(source), bytes(target))
        uses[key] = uses.get(key, 0) + 1
        if len(uses) > EDGE_USES_MAX:  # keep the most used half
            keep = sorted(uses.items(), key=lambda kv: kv[1], reverse=True)[: EDGE_USES_MAX // 2]
            self.edge_uses = dict(keep)

    async def on_invalidate(self, m: Invalidate) -> Ack:
        return Ack(1 if self.copies.invalidate(m.object_id, m.version) else 0)

    async def on_create(self, m: Create) -> Created:
        return await self.create(
            m.max_size, m.flags, m.default_prot, bytes(m.data), m.txn_id, kuid=m.kuid
        )

    def drop_holder(self, node_id: str) -> None:
        """A node died: it holds no copies any more (it refetches after a restart)."""
        for holders in self.holders.values():
            holders.discard(node_id)

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)


def _pointer_name(raw: bytes) -> str:
    """The name of a late-bound pointer: an absolute path of the namespace."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("a pointer's name must be UTF-8") from exc
    split_path(name)  # InvalidName for anything the resolver could never resolve
    return name
