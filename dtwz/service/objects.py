"""Object operations across the cluster, as one node serves them: the facade.

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

``ObjectService`` is what the node, the resolver and the graph service use. It
holds the reads and the routing of transactions to their home, and hands the
rest to its parts: ``dtwz.service.fetching`` (fetching copies and ranges),
``dtwz.service.home`` (this node as home: transactions, fetches served,
creation), ``dtwz.service.writes`` (admission of writes, invalidation of copies)
and ``dtwz.service.applied`` (at most once per transaction ID). The service does
not know sockets: it asks its ``Cluster`` (the node) to locate objects and to
send messages to other nodes (docs/ARCHITECTURE.md, docs/PROTOCOL.md §8).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from dtwz.errors import (
    ClusterError,
    CorruptObject,
    HomeUnreachable,
    InvalidArgument,
    ObjectMoved,
    ObjectNotFound,
    PeerUnavailable,
    StaleLocation,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START, ObjectHeader
from dtwz.service.applied import AppliedTransactions
from dtwz.service.cluster import Cluster
from dtwz.service.fetching import CHUNK, WINDOW, CopyFetcher
from dtwz.service.home import ObjectHome, image_of
from dtwz.service.writes import FREEZE_WAIT, CopyHolders, WriteAdmission
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

__all__ = [
    "CHUNK",
    "EDGE_USES_MAX",
    "FREEZE_WAIT",
    "OP_ALLOC",
    "OP_APPEND",
    "OP_NAME_POINTER",
    "OP_POINTER",
    "OP_WRITE",
    "WHOLE_COPY_MAX",
    "WINDOW",
    "Cluster",
    "ObjectService",
]

WHOLE_COPY_MAX = 16 << 20  # data bytes: larger remote objects are read by range
EDGE_USES_MAX = 200_000  # (source, target) pairs counted; the rarest go when full
# the op kinds (dtwz.wire.kinds.TxOpKind) under their old names
OP_WRITE, OP_APPEND, OP_POINTER = TxOpKind.WRITE, TxOpKind.APPEND, TxOpKind.POINTER
OP_ALLOC, OP_NAME_POINTER = TxOpKind.ALLOC, TxOpKind.NAME_POINTER
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


class ObjectService:
    """Objects wherever they live, as this node reads, writes and serves them."""

    def __init__(self, store: Store, cluster: Cluster, *, invalidate_timeout: float = 1.0) -> None:
        self.store = store
        self.cluster = cluster
        # what name entries in local objects and copies resolve through (the namespace)
        self.name_resolver: NameResolver | None = None
        self.copies = CopyCache(self)
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
        self.fetcher = CopyFetcher(cluster, self.copies, self.stats)
        self.admission = WriteAdmission(cluster, self.is_home)
        self.copy_holders = CopyHolders(cluster, self.stats, invalidate_timeout)
        self.applied = AppliedTransactions(self.stats)
        self.home = ObjectHome(
            store, cluster, self.applied, self.admission, self.copy_holders, self.stats
        )
        # directory epochs of objects that migrated in (set by dtwz.node.migration)
        self.epochs: dict[bytes, int] = {}
        # (source, target) -> dereferences that had to fetch the target (co-location)
        self.edge_uses: dict[tuple[bytes, bytes], int] = {}

    def close(self) -> None:
        self.home.close()

    # -- the parts' state, under the names the node and migration use -----------------

    @property
    def holders(self) -> dict[bytes, set[str]]:
        """Nodes holding a copy of each object homed here."""
        return self.copy_holders.by_object

    @property
    def invalidate_timeout(self) -> float:
        """Seconds a home waits for each holder to acknowledge an invalidation."""
        return self.copy_holders.timeout

    @invalidate_timeout.setter
    def invalidate_timeout(self, seconds: float) -> None:
        self.copy_holders.timeout = seconds

    @property
    def frozen(self) -> dict[bytes, asyncio.Event]:
        """Objects a migration is shipping away: their writes wait."""
        return self.admission.frozen

    @property
    def forwarding(self) -> Callable[[bytes], tuple[str, int] | None]:
        """Where an object that left this node went: (home, epoch), or None."""
        return self.admission.forwarding

    @forwarding.setter
    def forwarding(self, lookup: Callable[[bytes], tuple[str, int] | None]) -> None:
        self.admission.forwarding = lookup

    @property
    def on_fetched(self) -> Callable[[StoredObject], None] | None:
        """Called with each copy fetched on demand (the neighbour prefetch policy)."""
        return self.fetcher.on_fetched

    @on_fetched.setter
    def on_fetched(self, policy: Callable[[StoredObject], None] | None) -> None:
        self.fetcher.on_fetched = policy

    @property
    def deletions(self) -> int:
        """Objects deleted here (moved away): code workers re-map."""
        return self.home.deletions

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
        return await self.home.create(
            max_size, flags, default_prot, data, txn_id, kuid=kuid, nonce=nonce
        )

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
                layout = await self.fetcher.fetch(record.home, oid, 0, 0, with_fot=False)
                if layout.version == copy.version:
                    return copy.obj, copy.version, copy.home
            return await self.fetcher.fetch_copy(record.home, oid, whole_limit)
        except (ObjectNotFound, StaleLocation) as exc:
            # the home no longer has it (the location was stale, or it migrated)
            record = await self._relocate(oid, exc)
            if record.home == self.cluster.node_id:
                obj = self.store.get(oid)
                return obj, obj.header().version, self.cluster.node_id
            return await self.fetcher.fetch_copy(record.home, oid, whole_limit)

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
        if oid not in self.fetcher.large:
            opened = await self.open(oid, latest=latest, whole_limit=WHOLE_COPY_MAX)
            if opened is not None:
                obj, version, home = opened
                return obj.read(offset, length), version, home
        return await self.fetcher.read_range(oid, offset, length)

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
            reply = await self.fetcher.fetch(
                record.home, oid, DATA_START, 0, with_fot=False, register=False
            )
        except (ObjectNotFound, StaleLocation) as exc:
            record = await self._relocate(oid, exc)
            if record.home == self.cluster.node_id:
                return self.store.get(oid).header()
            reply = await self.fetcher.fetch(
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
        data, _, _ = await self.fetcher.read_range(oid, offset, length)
        return bytes(data)

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
            return await self.home.run_local(ops, txn_id)
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

    # -- this node as home -------------------------------------------------------------

    async def run_local(self, ops: Sequence[TxOp], txn_id: bytes) -> TransactResult:
        """Run at this home, once per ``txn_id``: a retry, even one that arrives while
        the first attempt still runs, gets the first attempt's result."""
        return await self.home.run_local(ops, txn_id)

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
        return await self.home.run_at_home(txn_id, body, reply)

    async def delete_local(self, oids: Sequence[ObjectId]) -> None:
        """Delete objects homed here (they migrated away), in one transaction."""
        await self.home.delete_local(oids)

    async def run_in_thread(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in the service's thread pool, off the event loop."""
        return await self.home.in_thread(fn)

    def check_here(self, oid: ObjectId) -> None:
        """``ObjectMoved`` if the object left this node, ``ObjectNotFound`` if absent."""
        self.admission.check_here(oid)

    def writes_in_flight(self, oids: Sequence[bytes]) -> int:
        return self.admission.in_flight(oids)

    def drop_holder(self, node_id: str) -> None:
        """A node died: it holds no copies any more (it refetches after a restart)."""
        self.copy_holders.drop(node_id)

    # -- at most once ------------------------------------------------------------------

    async def once(self, txn_id: bytes, run: Callable[[], Awaitable[_M]]) -> _M:
        """Run ``run`` once per ``txn_id`` (see ``run_local``)."""
        return await self.applied.once(txn_id, run)

    def applied_items(self) -> list[tuple[bytes, asyncio.Future[Message]]]:
        return self.applied.items()

    def remember_applied(self, txn_id: bytes, result: Message) -> None:
        """A transaction applied elsewhere (before its objects migrated here): a retry
        of it is answered with ``result``, not applied again."""
        self.applied.remember(txn_id, result)

    # -- peer handlers -----------------------------------------------------------------

    async def on_fetch(self, m: Fetch) -> ObjectData:
        return await self.home.on_fetch(m)

    async def on_fetch_many(self, m: FetchMany) -> ObjectBatch:
        return await self.home.on_fetch_many(m)

    async def on_transact(self, m: Transact) -> TransactResult:
        # not homed here: checked after the txn_id, so that a retry of a transaction
        # applied before its objects migrated away gets its first answer
        return await self.home.run_local(m.ops, m.txn_id)

    async def on_invalidate(self, m: Invalidate) -> Ack:
        return Ack(1 if self.copies.invalidate(m.object_id, m.version) else 0)

    async def on_create(self, m: Create) -> Created:
        return await self.create(
            m.max_size, m.flags, m.default_prot, bytes(m.data), m.txn_id, kuid=m.kuid
        )

    # -- images and edge counts (the graph service) ------------------------------------

    def image(self, oid: ObjectId) -> ObjectImage:
        """The object (local or a copy held) as header record, data and FOT, all of one
        commit."""
        return image_of(self.get(oid), oid)

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
