"""This node as the home of its objects: it creates them, runs their transactions
and serves their bytes.

- **Transactions** run here as local store transactions, in a thread pool (never
  on the event loop), once per transaction ID (``AppliedTransactions``), after
  admission (``WriteAdmission``: migrations, objects that left), and are answered
  only once the copies other nodes hold have been invalidated (``CopyHolders``).
- **Fetches** register the requester as a holder *before* reading, then copy the
  bytes out under the object's seqlock (``StoredObject.snapshot``) so a reply
  never mixes two commits; immutable objects go straight from the mapping,
  zero-copy.
- **Creation** publishes the new object's location before it answers.
- **Usage**: every commit here goes through ``commit``, which first hands the
  headers it changes to ``usage`` (the node's quotas, docs/SECURITY.md §10); a
  ``QuotaExceeded`` from it aborts the transaction, so nothing of it happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from dtwz.errors import AccessDenied, InvalidArgument, TransactionConflict
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.format.names import DIRECTORY_MAGIC, split_path
from dtwz.service.applied import AppliedTransactions
from dtwz.service.cluster import Cluster
from dtwz.service.writes import CopyHolders, WriteAdmission
from dtwz.store.objects import StoredObject
from dtwz.store.store import Store
from dtwz.store.transaction import Transaction
from dtwz.wire.kinds import TxOpKind
from dtwz.wire.messages import (
    Created,
    Fetch,
    FetchMany,
    HomeRecord,
    Message,
    ObjectBatch,
    ObjectData,
    ObjectImage,
    ObjectVersion,
    TransactResult,
    TxOp,
)

CONFLICT_RETRIES = 20  # local runs of one transaction that lost a lock race
_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


HeaderChange = tuple[ObjectHeader | None, ObjectHeader | None]  # (before, after); None: absent


class Usage(Protocol):
    """Who pays for what a commit here adds (``dtwz.node.quotas.Quotas``)."""

    def charge(self, changes: Sequence[HeaderChange]) -> Callable[[], None]:
        """Record the changes of one transaction, or raise (``QuotaExceeded``) to
        refuse it; returns what undoes the record if the commit then fails."""
        ...


def header_changes(store: Store, tx: Transaction) -> list[HeaderChange]:
    """Each object of ``tx`` as committed (None: not in the store yet) and as ``tx``
    leaves it (None: deleted). ``tx`` holds their locks, so the store's are current."""
    changes: list[HeaderChange] = []
    for oid in list(tx.touched):
        before = store.header(oid) if store.exists(oid) else None
        try:
            after: ObjectHeader | None = tx.header(oid)
        except InvalidArgument:  # deleted in this transaction
            after = None
        changes.append((before, after))
    return changes


class ObjectHome:
    """Creation, transactions and fetches of the objects homed on this node."""

    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        applied: AppliedTransactions,
        admission: WriteAdmission,
        holders: CopyHolders,
        stats: dict[str, int],
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.applied = applied
        self.admission = admission
        self.holders = holders
        self._stats = stats  # the service's counters
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="dtwz-commit")
        self.deletions = 0  # objects deleted here (moved away): code workers re-map
        self.usage: Usage | None = None  # the node's quotas (security on)

    def commit(self, tx: Transaction) -> None:
        """Commit ``tx`` once ``usage`` accepts what it changes (else abort it and
        raise): the one way transactions of this home end."""
        if self.usage is None:
            tx.commit()
            return
        try:
            undo = self.usage.charge(header_changes(self.store, tx))
        except BaseException:
            tx.abort()
            raise
        try:
            tx.commit()
        except BaseException:
            undo()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    async def in_thread(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in the store's thread pool: store work never blocks the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # -- creating and deleting -------------------------------------------------------

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
        """Create an object homed on this node; publish its location before answering
        (see ``ObjectService.create``)."""

        def run() -> Created:
            with self.store.transaction() as tx:
                oid = tx.create(
                    max_size, flags=flags, default_prot=default_prot, kuid=kuid, nonce=nonce
                )
                offset = tx.append(oid, data) if data else 0
                self.commit(tx)
            return Created(oid, 1, offset)

        async def create_and_publish() -> Created:
            created = await self.in_thread(run)
            record = HomeRecord(created.object_id, self.cluster.node_id, 1, 1)
            await self.cluster.publish_created(record)
            return created

        if txn_id:
            return await self.applied.once(txn_id, create_and_publish)
        return await create_and_publish()

    async def delete_local(self, oids: Sequence[ObjectId]) -> None:
        """Delete objects homed here (they migrated away), in one transaction."""

        def delete() -> None:
            with self.store.transaction() as tx:
                for oid in oids:
                    tx.delete(oid)
                self.commit(tx)

        await self.in_thread(delete)
        self.deletions += len(oids)

    # -- transactions ----------------------------------------------------------------

    async def run_local(self, ops: Sequence[TxOp], txn_id: bytes) -> TransactResult:
        """Run at this home, once per ``txn_id``: a retry, even one that arrives while
        the first attempt still runs, gets the first attempt's result."""
        return await self.applied.once(txn_id, lambda: self._run_and_invalidate(ops))

    async def _run_and_invalidate(self, ops: Sequence[TxOp]) -> TransactResult:
        oids = {op.object_id for op in ops}
        await self.admission.admit(oids)
        try:
            result = await self.in_thread(lambda: self._run_ops(ops))
        finally:
            self.admission.done(oids)
        self._stats["transactions"] += 1
        await self.holders.invalidate(result.versions)
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
            value, versions = await self.in_thread(lambda: self._run_in_tx(body))
            self._stats["transactions"] += 1
            await self.holders.invalidate(versions)
            return reply(value, versions)

        return await self.applied.once(txn_id, run)

    def _run_in_tx(self, body: Callable[[Transaction], _T]) -> tuple[_T, list[ObjectVersion]]:
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self.store.transaction() as tx:
                    result = body(tx)
                    touched = list(tx.touched)
                    self.commit(tx)
                break
            except TransactionConflict:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
        versions = [ObjectVersion(oid, self.store.get(oid).header().version) for oid in touched]
        return result, versions

    def _run_ops(self, ops: Sequence[TxOp]) -> TransactResult:
        results, versions = self._run_in_tx(lambda tx: [run_op(tx, op) for op in ops])
        return TransactResult(results, versions)

    # -- serving bytes ---------------------------------------------------------------

    async def on_fetch(self, m: Fetch) -> ObjectData:
        self.admission.check_here(m.object_id)  # else the requester's location is stale
        obj = self.store.get(m.object_id)
        if m.register_copy:  # before reading: a commit after this point invalidates it
            self.holders.register(m.object_id, m.requester)
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
        self._stats["fetches_served"] += 1
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

    async def on_fetch_many(self, m: FetchMany) -> ObjectBatch:
        images, missing = [], []
        for oid in m.object_ids:
            if not self.store.exists(oid):
                missing.append(oid)
                continue
            if m.register_copy:  # before reading, as for Fetch
                self.holders.register(oid, m.requester)
            images.append(image_of(self.store.get(oid), oid))
        self._stats["batch_fetches_served"] += 1
        self._stats["fetches_served"] += len(images)
        return ObjectBatch(images, missing)


def image_of(obj: StoredObject, oid: ObjectId) -> ObjectImage:
    """``obj`` as header record, data and FOT, all of one commit."""
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


def run_op(tx: Transaction, op: TxOp) -> int:
    """Apply one ``TxOp`` in ``tx``; its result (an offset, a pointer word or 0).

    A directory of the namespace takes no ``TxOp``: its bytes change only through
    name operations (``DirOp``, docs/NAMES.md), whoever asks, so that no raw write
    can break the namespace (``AccessDenied``)."""
    _refuse_directory(tx, op.object_id)
    if op.kind == TxOpKind.WRITE:
        tx.write(op.object_id, op.offset, op.data)
        return 0
    if op.kind == TxOpKind.APPEND:
        return tx.append(op.object_id, op.data)
    if op.kind == TxOpKind.POINTER:
        return tx.write_pointer(op.object_id, op.offset, op.target, op.target_offset)
    if op.kind == TxOpKind.ALLOC:
        return tx.alloc(op.object_id, op.size)
    if op.kind == TxOpKind.NAME_POINTER:  # a late-bound pointer: resolved when followed
        name = _pointer_name(op.data)
        # the slot first: the name is appended above the data end, which must not
        # be where the pointer goes
        tx.write_u64(op.object_id, op.offset, 0)
        word = tx.pointer_by_name(op.object_id, name, op.target_offset)
        tx.write_u64(op.object_id, op.offset, word)
        return word
    raise InvalidArgument(f"unknown transaction op kind {op.kind}")


def _refuse_directory(tx: Transaction, oid: ObjectId) -> None:
    magic = len(DIRECTORY_MAGIC)
    if (
        tx.header(oid).data_end >= DATA_START + magic
        and tx.read(oid, DATA_START, magic) == DIRECTORY_MAGIC
    ):
        raise AccessDenied(
            f"object {oid.hex()} is a directory of the namespace: its bytes change only "
            "through name operations (mkdir, bind, symlink, rename, unbind), never through "
            "writes, appends or pointers"
        )


def _pointer_name(raw: bytes) -> str:
    """The name of a late-bound pointer: an absolute path of the namespace."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("a pointer's name must be UTF-8") from exc
    split_path(name)  # InvalidName for anything the resolver could never resolve
    return name
