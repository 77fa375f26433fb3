"""What a write at its home must respect: admission, then invalidation of copies.

**Admission** (``WriteAdmission``). A write runs only where its objects live and
only while they stay: a write of an object that a migration is shipping away
waits (``frozen``, at most ``FREEZE_WAIT``), a write of an object that has left
fails with ``ObjectMoved`` naming its new home and epoch (``forwarding``, set by
``dtwz.node.migration``), and writes admitted are counted until they finish, so
that a migration can wait for those in flight.

**Invalidation** (``CopyHolders``). The home remembers which nodes fetched each
object with ``register_copy``; it registers a holder *before* it reads the
bytes, so any commit after the read invalidates that copy. After a commit it
sends ``Invalidate(oid, version)`` to each holder, in parallel, and waits for
them (each at most ``timeout``) before the writer gets its answer: once a write
is acknowledged, no node serves an older copy unless it is cut off. Registration
is one-shot: the holder's next fetch registers it again (docs/PROTOCOL.md §8).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from dtwz.errors import ObjectMoved, ObjectNotFound, TransactionConflict
from dtwz.format.ids import ObjectId
from dtwz.service.cluster import Cluster
from dtwz.wire.messages import Invalidate, Message, ObjectVersion

log = logging.getLogger(__name__)

FREEZE_WAIT = 30.0  # seconds a write waits for a migration of its object to finish


class WriteAdmission:
    """Which writes may run here now, and how many are running."""

    def __init__(self, cluster: Cluster, is_home: Callable[[ObjectId], bool]) -> None:
        self.cluster = cluster
        self.is_home = is_home
        # objects being shipped away by a migration: their writes wait on the event
        self.frozen: dict[bytes, asyncio.Event] = {}
        # where an object that left went: (home, epoch), or None
        self.forwarding: Callable[[bytes], tuple[str, int] | None] = lambda oid: None
        self._writing: dict[bytes, int] = {}

    async def admit(self, oids: set[ObjectId]) -> None:
        """Let a write of ``oids`` run here: wait while a migration ships any of them,
        refuse (``ObjectMoved``) once one has left, count it as in flight until
        ``done``."""
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

    def done(self, oids: Iterable[ObjectId]) -> None:
        """The write of ``oids`` admitted by ``admit`` has finished (or failed)."""
        for oid in oids:
            left = self._writing.pop(oid, 1) - 1
            if left:
                self._writing[oid] = left

    def in_flight(self, oids: Sequence[bytes]) -> int:
        """How many admitted writes of ``oids`` have not finished."""
        return sum(self._writing.get(o, 0) for o in oids)

    def check_here(self, oid: ObjectId) -> None:
        """``ObjectMoved`` if the object left this node, ``ObjectNotFound`` if absent."""
        if self.is_home(oid):
            return
        forward = self.forwarding(oid)
        if forward is not None:
            raise ObjectMoved(f"object {oid.hex()}", home=forward[0], epoch=forward[1])
        raise ObjectNotFound(f"object {oid.hex()} is not homed on {self.cluster.node_id}")


class CopyHolders:
    """The nodes holding a copy of each object homed here, and their invalidation."""

    def __init__(self, cluster: Cluster, stats: dict[str, int], timeout: float = 1.0) -> None:
        self.cluster = cluster
        self.by_object: dict[bytes, set[str]] = {}
        self.timeout = timeout
        self._stats = stats  # the service's counters: "invalidations_sent"

    def register(self, oid: ObjectId, node_id: str) -> None:
        """``node_id`` is about to read ``oid`` for a copy (call before reading)."""
        self.by_object.setdefault(oid, set()).add(node_id)

    async def invalidate(self, versions: Sequence[ObjectVersion]) -> None:
        """Tell every holder of these objects their new versions; wait for each (at
        most ``timeout``). A holder that does not answer is logged, not retried."""
        sends: list[Awaitable[Message]] = []
        for ov in versions:
            for holder in self.by_object.pop(ov.object_id, ()):
                message = Invalidate(ov.object_id, ov.version)
                sends.append(self.cluster.request(holder, message, self.timeout))
        if sends:
            self._stats["invalidations_sent"] += len(sends)
            results = await asyncio.gather(*sends, return_exceptions=True)
            for r in results:
                if isinstance(r, Exception):  # the holder is gone or cut off
                    log.info("invalidation not acknowledged: %s", r)

    def drop(self, node_id: str) -> None:
        """A node died: it holds no copies any more (it refetches after a restart)."""
        for holders in self.by_object.values():
            holders.discard(node_id)


__all__ = ["FREEZE_WAIT", "CopyHolders", "WriteAdmission"]
