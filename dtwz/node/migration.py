"""Migration: moving an object's home to another node (docs/ARCHITECTURE.md, "A
migration").

Theory of operation
-------------------
The old home orders every write of the object, so it also orders the move:

1. **Freeze**: new writes of the objects wait (``ObjectService.frozen``) and the
   old home waits until the writes already running have committed.
2. **Intent**: it appends ``out pending`` records to its migration log (fsync'd),
   so a crash from here on resumes the move instead of forgetting it.
3. **Ship**: ``MigrateIn`` carries each object's image (header, data, FOT, all of
   one commit), a directory epoch one higher than the object's, the nodes that
   hold copies, and the transactions already applied to the objects with their
   answers. The new home restores the objects in one local transaction, logs
   ``in`` records with the epoch, seeds its duplicate table with those answers,
   publishes the new directory records and acknowledges. ``txn_id`` makes a
   repeated ``MigrateIn`` harmless.
4. **Hand over**: the old home logs ``out done``, deletes its objects, and
   releases the frozen writes, which now fail with ``ObjectMoved`` naming the new
   home and epoch; requesters learn the new location and retry there with the
   same transaction ID.

No write is lost (writes that got in before the freeze are in the image; the
others are redirected) and none is applied twice (a retry of one that got in is
answered from the shipped duplicate table). If the new home does not answer, the
outcome is unknown: the objects stay frozen and the old home keeps re-sending
the same ``MigrateIn`` in the background until it gets an answer, so the object
never has two homes taking writes. A definite refusal unfreezes them.

The log (``migrations.jsonl`` in the node's data folder) is small: one line per
object moved in or out, a ``MoveRecord`` as JSON. On start-up the last line per
object wins. An object's moves out go through these states, and only these::

    PENDING --shipped and acknowledged--> DONE        (the object forwards to its new home)
    PENDING --refused-------------------> ABANDONED   (the object stays, takes writes again)

A move in has no state: it is logged once the objects are restored, with the
epoch they arrived under.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from dtwz.errors import (
    DtwzError,
    InvalidArgument,
    MigrationError,
    PeerUnavailable,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, ObjectHeader
from dtwz.node.dispatch import HandlerTable
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import (
    Ack,
    AppliedTxn,
    HomeRecord,
    Message,
    Migrate,
    Migrated,
    MigrateIn,
    ObjectImage,
    ObjectVersion,
    TransactResult,
)

log = logging.getLogger(__name__)

SHIP_TIMEOUT = 30.0  # seconds for the new home to restore and publish the objects
WRITES_DRAIN = 30.0  # seconds to wait for writes already running when frozen
RETRY_EVERY = 1.0  # seconds between re-sends of a migration whose outcome is unknown


class MigrationCluster(Protocol):
    node_id: str

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    async def publish_created(self, record: HomeRecord) -> None: ...

    def learn_location(self, record: HomeRecord) -> None: ...

    def is_alive(self, node_id: str) -> bool: ...

    def pinned(self, oid: ObjectId) -> bool: ...


class Direction(StrEnum):
    OUT = "out"  # this node was the object's home and gave it away
    IN = "in"  # this node became the object's home


class MoveState(StrEnum):
    """Where a move out stands (the diagram in the module docstring)."""

    PENDING = "pending"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """One line of the migration log: an object moved out (with its state) or in."""

    object_id: bytes
    direction: Direction
    epoch: int  # the object's directory epoch at its new home (out: kept on abandon)
    state: MoveState | None = None  # moves out only
    to: str = ""  # moves out: the new home ("" once abandoned)
    txn_id: bytes | None = None  # pending moves out: the MigrateIn's transaction ID

    @classmethod
    def pending(cls, oid: bytes, to: str, epoch: int, txn_id: bytes) -> MoveRecord:
        return cls(oid, Direction.OUT, epoch, MoveState.PENDING, to, txn_id)

    @classmethod
    def done(cls, oid: bytes, to: str, epoch: int) -> MoveRecord:
        return cls(oid, Direction.OUT, epoch, MoveState.DONE, to)

    @classmethod
    def abandoned(cls, oid: bytes, epoch: int) -> MoveRecord:
        return cls(oid, Direction.OUT, epoch, MoveState.ABANDONED)

    @classmethod
    def arrived(cls, oid: bytes, epoch: int) -> MoveRecord:
        return cls(oid, Direction.IN, epoch)

    def is_out(self, state: MoveState) -> bool:
        return self.direction is Direction.OUT and self.state is state

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.object_id.hex(), "op": self.direction.value}
        doc["epoch"] = self.epoch
        if self.direction is Direction.OUT:
            assert self.state is not None
            doc["state"] = self.state.value
            doc["to"] = self.to
            if self.txn_id is not None:
                doc["txn"] = self.txn_id.hex()
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> MoveRecord:
        """The record of one line; ValueError, KeyError or TypeError if it is damaged."""
        oid, direction, epoch = bytes.fromhex(doc["id"]), Direction(doc["op"]), int(doc["epoch"])
        if direction is Direction.IN:
            return cls.arrived(oid, epoch)
        state = MoveState(doc["state"])
        txn = bytes.fromhex(doc["txn"]) if state is MoveState.PENDING else None
        return cls(oid, direction, epoch, state, str(doc["to"]), txn)


class MigrationLog:
    """The persistent table: objects moved away (with their new home) and in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[bytes, MoveRecord] = {}
        if path.exists():
            for line in path.read_text("utf-8").splitlines():
                try:
                    record = MoveRecord.from_json(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("%s: skipping a damaged line", path)  # a torn last write
                    continue
                self.entries[record.object_id] = record

    def append(self, records: Sequence[MoveRecord]) -> None:
        text = "".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in records)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        for r in records:
            self.entries[r.object_id] = r

    def forwarding(self, oid: bytes) -> tuple[str, int] | None:
        """(new home, epoch) of an object that moved away from here."""
        entry = self.entries.get(oid)
        if entry is None or not entry.is_out(MoveState.DONE):
            return None
        return entry.to, entry.epoch

    def epochs(self) -> dict[bytes, int]:
        """The epochs of the objects that moved here."""
        return {oid: e.epoch for oid, e in self.entries.items() if e.direction is Direction.IN}

    def pending(self) -> dict[bytes, MoveRecord]:
        """Moves out logged but not handed over (a crash came between)."""
        return {oid: e for oid, e in self.entries.items() if e.is_out(MoveState.PENDING)}


class Migrations:
    """Both ends of a migration, as one node runs them."""

    def __init__(self, data_dir: Path, service: ObjectService, cluster: MigrationCluster) -> None:
        self.service = service
        self.cluster = cluster
        self.log = MigrationLog(data_dir / "migrations.jsonl")
        service.forwarding = self.log.forwarding
        service.epochs.update(self.log.epochs())
        self._retries: set[asyncio.Task[None]] = set()
        self.stats = {"migrated_out": 0, "migrated_in": 0, "in_doubt": 0}

    def resume(self) -> None:
        """After a restart: finish the moves that were shipped but not handed over."""
        by_move: dict[tuple[bytes, str, int], list[ObjectId]] = {}
        for oid, entry in self.log.pending().items():
            assert entry.txn_id is not None  # a pending move always names its transaction
            key = (entry.txn_id, entry.to, entry.epoch)
            by_move.setdefault(key, []).append(ObjectId(oid))
        for (txn_id, to_node, epoch), oids in by_move.items():
            present = [o for o in oids if self.service.is_home(o)]
            if not present:
                continue
            self._freeze(present)
            message = self._message(txn_id, epoch, present)
            self._retry_in_background(to_node, message, present)

    async def close(self) -> None:
        for task in list(self._retries):
            task.cancel()
        await asyncio.gather(*self._retries, return_exceptions=True)

    def handlers(self) -> HandlerTable:
        return {Migrate: self.on_migrate, MigrateIn: self.on_migrate_in}

    async def on_migrate(self, m: Migrate) -> Migrated:
        """A ``Migrate`` request: move objects homed here (``migrate``)."""
        return await self.migrate(m.object_ids, m.to_node, m.txn_id)

    # -- the old home ----------------------------------------------------------------

    async def migrate(self, oids: Sequence[ObjectId], to_node: str, txn_id: bytes) -> Migrated:
        """Move ``oids`` (all homed here) to ``to_node``; their versions and new epoch."""
        oids = list(dict.fromkeys(oids))
        if not oids:
            raise InvalidArgument("nothing to migrate")
        me = self.cluster.node_id
        for oid in oids:
            self.service.check_here(oid)  # ObjectMoved / ObjectNotFound
            if self.cluster.pinned(oid):
                raise MigrationError(f"object {oid.hex()} is a directory: it stays at its home")
        if to_node == me:
            versions = [self._version(o) for o in oids]
            return Migrated(versions, max(self.service.epoch_of(o) for o in oids))
        if not self.cluster.is_alive(to_node):
            raise MigrationError(f"node {to_node} is not a live member of the cluster")
        if any(o in self.service.frozen for o in oids):
            raise MigrationError("some of these objects are being migrated already")
        self._freeze(oids)
        try:
            await self._drain(oids)
            epoch = max(self.service.epoch_of(o) for o in oids) + 1
            message = self._message(txn_id, epoch, oids)
        except BaseException:
            self._thaw(oids)
            raise
        self.log.append([MoveRecord.pending(o, to_node, epoch, txn_id) for o in oids])
        try:
            await self._ship(to_node, message)
        except PeerUnavailable as exc:
            self.stats["in_doubt"] += 1
            self._retry_in_background(to_node, message, oids)
            raise MigrationError(
                f"node {to_node} did not answer: the move's outcome is unknown; the objects "
                "take no writes until it is known (the old home keeps asking)"
            ) from exc
        except BaseException as exc:
            self._abandon(oids)
            if isinstance(exc, DtwzError):
                raise MigrationError(f"node {to_node} refused the objects: {exc}") from exc
            raise
        await self._hand_over(oids, to_node, epoch)
        return Migrated([ObjectVersion(i.object_id, i.version) for i in message.images], epoch)

    def _message(self, txn_id: bytes, epoch: int, oids: Sequence[ObjectId]) -> MigrateIn:
        service = self.service
        images = [service.image(o) for o in oids]
        holders = sorted({h for o in oids for h in service.holders.get(o, ())})
        return MigrateIn(txn_id, epoch, images, holders, self._applied(set(oids)))

    def _applied(self, oids: set[bytes]) -> list[AppliedTxn]:
        out = []
        for txn_id, future in self.service.applied_items():
            if not future.done() or future.cancelled() or future.exception() is not None:
                continue
            result = future.result()
            if isinstance(result, TransactResult) and any(
                v.object_id in oids for v in result.versions
            ):
                out.append(AppliedTxn(txn_id, list(result.results), list(result.versions)))
        return out

    async def _ship(self, to_node: str, message: MigrateIn) -> None:
        reply = await self.cluster.request(to_node, message, SHIP_TIMEOUT)
        # the count must match: the objects are deleted here only once they are there
        if not isinstance(reply, Ack) or reply.count != len(message.images):
            raise MigrationError(f"node {to_node} answered a migration with {reply!r}")

    async def _hand_over(self, oids: Sequence[ObjectId], to_node: str, epoch: int) -> None:
        self.log.append([MoveRecord.done(o, to_node, epoch) for o in oids])
        await self.service.delete_local(oids)
        for oid in oids:
            self.service.holders.pop(oid, None)
            self.service.epochs.pop(oid, None)
            self.cluster.learn_location(HomeRecord(oid, to_node, 0, epoch))
        self.stats["migrated_out"] += len(oids)
        self._thaw(oids)  # frozen writers now get ObjectMoved

    def _abandon(self, oids: Sequence[ObjectId]) -> None:
        self.log.append([MoveRecord.abandoned(o, self.service.epoch_of(o)) for o in oids])
        self._thaw(oids)

    def _retry_in_background(
        self, to_node: str, message: MigrateIn, oids: Sequence[ObjectId]
    ) -> None:
        async def retry() -> None:
            while True:
                await asyncio.sleep(RETRY_EVERY)
                try:
                    await self._ship(to_node, message)
                except PeerUnavailable:
                    continue
                except DtwzError as exc:
                    log.warning("migration to %s refused: %s", to_node, exc)
                    self._abandon(oids)
                    return
                await self._hand_over(oids, to_node, message.epoch)
                return

        task = asyncio.ensure_future(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _freeze(self, oids: Sequence[ObjectId]) -> None:
        for oid in oids:
            self.service.frozen[oid] = asyncio.Event()

    def _thaw(self, oids: Sequence[ObjectId]) -> None:
        for oid in oids:
            event = self.service.frozen.pop(oid, None)
            if event is not None:
                event.set()

    async def _drain(self, oids: Sequence[ObjectId]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITES_DRAIN
        while self.service.writes_in_flight(oids):
            if loop.time() > deadline:
                raise MigrationError("writes of these objects did not finish in time")
            await asyncio.sleep(0.002)

    def _version(self, oid: ObjectId) -> ObjectVersion:
        return ObjectVersion(oid, self.service.store.get(oid).header().version)

    # -- the new home ----------------------------------------------------------------

    async def on_migrate_in(self, m: MigrateIn) -> Ack:
        # once per (transaction, objects): two homes moving objects under one
        # transaction ID are two arrivals, not a retry
        key = hashlib.sha256(m.txn_id + b"".join(i.object_id for i in m.images)).digest()[:16]
        return await self.service.once(key, lambda: self._arrive(m))

    async def _arrive(self, m: MigrateIn) -> Ack:
        service = self.service
        me = self.cluster.node_id
        headers = [_checked_header(image) for image in m.images]

        def restore() -> None:
            with service.store.transaction() as tx:
                for header, image in zip(headers, m.images, strict=True):
                    if service.is_home(header.object_id):
                        continue  # an earlier attempt restored it (then this node restarted)
                    tx.restore(header, image.data, image.fot)
                service.home.commit(tx)  # the owners' quotas here (docs/SECURITY.md §10)

        await service.run_in_thread(restore)
        self.log.append([MoveRecord.arrived(i.object_id, m.epoch) for i in m.images])
        for image in m.images:
            oid = image.object_id
            service.epochs[oid] = m.epoch
            service.copies.discard(oid)  # the object itself is here now
            holders = set(m.holders) - {me}
            if holders:
                service.holders[oid] = holders
        for applied in m.applied:
            service.remember_applied(
                applied.txn_id, TransactResult(list(applied.results), list(applied.versions))
            )
        await asyncio.gather(
            *(
                self.cluster.publish_created(HomeRecord(i.object_id, me, i.version, m.epoch))
                for i in m.images
            )
        )
        self.stats["migrated_in"] += len(m.images)
        return Ack(len(m.images))


def _checked_header(image: ObjectImage) -> ObjectHeader:
    """The image's header, its ID recomputed from its metadata: a node that ships a
    forged or damaged object is refused (``CorruptObject``)."""
    header = ObjectHeader.decode(image.header)
    if header.object_id != image.object_id or header.version != image.version:
        raise MigrationError(f"image of {image.object_id.hex()} does not match its header")
    if len(image.data) > header.data_end - DATA_START:
        raise MigrationError(f"image of {image.object_id.hex()} has more data than its header")
    return header
