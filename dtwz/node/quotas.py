"""Per-identity quotas and the bound on enrolled keys, as one home enforces them
(docs/SECURITY.md §10).

**What counts.** An identity's usage is what the objects it owns (their header's
kuid) take: one object each, and their *allocated* bytes (``used_bytes``): the
header page, the data area up to its end and the FOT, whatever a commit wrote or
reserved there; never the sparse maximum size. A write far into an object counts
the bytes below it too (they are allocated to the object, if not on disk), so the
count is an upper bound of what the object takes on disk.

**Where it is counted.** Every change happens at an object's home, so each home
keeps the usage of the objects it homes: counted from the headers in its store at
start (``scan``), then kept by every commit there. The object service calls
``charge`` with each transaction's headers before and after, just before it
commits (``dtwz.service.home.Usage``): growth past the share raises
``QuotaExceeded`` and the transaction is aborted, so nothing of it happens.
Creations, writes, appends, pointers, directory edits and migrations in all pass
there; objects deleted here (moved away) are credited.

**The share.** A home enforces the cluster's limit divided by the number of nodes
(the admitted nodes, or the live members if there are more), rounded up. With the
membership fixed, an identity's total over the cluster is therefore within the
limit, with no message between nodes and nothing to rebuild after a restart or a
failure. The price, and what this does not cover, are in docs/SECURITY.md §10.

The admin, the nodes and unowned objects (kuid 0, which only nodes make: key
objects, directories made by nodes) are exempt. Key objects homed here count
against this node's share of ``max_keys`` (``reserve_key``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dtwz.errors import DtwzError, QuotaExceeded
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import ObjectHeader
from dtwz.security.keys import KEY_MAGIC, KEY_OBJECT_FLAGS, KEY_OBJECT_PROT
from dtwz.store.store import Store

HeaderChange = tuple[ObjectHeader | None, ObjectHeader | None]  # (before, after); None: absent


@dataclass(frozen=True)
class Limits:
    """The cluster's limits (``NodeConfig``); 0 is no limit."""

    objects: int = 100_000  # objects per identity
    bytes: int = 10 << 30  # allocated bytes per identity
    keys: int = 10_000  # enrolled keys


def used_bytes(header: ObjectHeader | None) -> int:
    """What an object takes: its size less the free gap between data and FOT."""
    return 0 if header is None else header.max_size - header.free_bytes


def is_key_object(header: ObjectHeader, head: bytes) -> bool:
    """Whether an object is a key object (``head``: the first bytes of its data)."""
    return (
        header.kuid == ZERO_ID
        and int(header.flags) == int(KEY_OBJECT_FLAGS)
        and int(header.default_prot) == int(KEY_OBJECT_PROT)
        and head[: len(KEY_MAGIC)] == KEY_MAGIC
    )


class Quotas:
    """The usage of the objects homed on one node, per owner, and the limits it
    enforces (see the module docstring). Thread-safe: commits run in a pool."""

    def __init__(
        self,
        node_id: str,
        limits: Limits,
        *,
        open_enrollment: bool = False,
        exempt: Callable[[ObjectId], bool],
        members: Callable[[], int],
    ) -> None:
        self.node_id = node_id
        self.limits = limits
        self.open_enrollment = open_enrollment  # any key may register, no consent needed
        self._exempt = exempt  # the admin and the nodes
        self._members = members  # how many nodes share the limits
        self._usage: dict[ObjectId, list[int]] = {}  # owner -> [objects, bytes]
        self._keys = 0  # key objects homed here
        self._lock = threading.Lock()
        self.refused = 0

    # -- what this node allows -----------------------------------------------------

    def share(self, limit: int) -> int:
        """This node's part of a cluster-wide ``limit`` (0: no limit)."""
        if limit <= 0:
            return 0
        nodes = max(1, self._members())
        return -(-limit // nodes)

    def usage(self, owner: ObjectId) -> tuple[int, int]:
        """(objects, bytes) that ``owner``'s objects homed here take."""
        with self._lock:
            objects, used = self._usage.get(owner, (0, 0))
        return objects, used

    @property
    def keys(self) -> int:
        return self._keys

    def stats(self) -> dict[str, int]:
        nodes = max(1, self._members())
        return {
            "owners": len(self._usage),
            "keys": self._keys,
            "nodes_sharing": nodes,
            "objects_share": self.share(self.limits.objects),
            "bytes_share": self.share(self.limits.bytes),
            "keys_share": self.share(self.limits.keys),
            "refused": self.refused,
        }

    # -- counting ------------------------------------------------------------------

    def scan(self, store: Store) -> int:
        """Count what the store holds (at start, before anything is served); the
        number of objects read."""
        count = 0
        for oid in store.object_ids():
            try:
                header, _, head = store.metadata(oid, len(KEY_MAGIC))
            except DtwzError:
                continue  # gone meanwhile, or damaged: the store reports it when used
            count += 1
            self._add(header, 1)
            if is_key_object(header, head):
                self._keys += 1
        return count

    def charge(self, changes: Sequence[HeaderChange]) -> Callable[[], None]:
        """Record what a transaction adds and takes, per owner, or raise
        ``QuotaExceeded`` (nothing recorded) if it grows an owner past this node's
        share. Returns what undoes the record (the commit failed)."""
        deltas: dict[ObjectId, list[int]] = {}
        for before, after in changes:
            header = after if after is not None else before
            if header is None:
                continue
            owner = ObjectId(header.kuid)
            if owner == ZERO_ID or self._exempt(owner):
                continue
            delta = deltas.setdefault(owner, [0, 0])
            delta[0] += (after is not None) - (before is not None)
            delta[1] += used_bytes(after) - used_bytes(before)
        deltas = {k: v for k, v in deltas.items() if v != [0, 0]}
        if not deltas:
            return _nothing
        with self._lock:
            for owner, (objects, used) in deltas.items():
                self._check(owner, objects, used)
            for owner, (objects, used) in deltas.items():
                self._apply(owner, objects, used)

        def undo() -> None:
            with self._lock:
                for owner, (objects, used) in deltas.items():
                    self._apply(owner, -objects, -used)

        return undo

    def reserve_key(self) -> Callable[[], None]:
        """Count one more key object homed here, or raise ``QuotaExceeded`` when this
        node homes its share of ``max_keys``; returns what gives the place back."""
        with self._lock:
            share = self.share(self.limits.keys)
            if share and self._keys >= share:
                self.refused += 1
                raise QuotaExceeded(
                    f"the cluster enrolls at most {self.limits.keys} keys and node "
                    f"{self.node_id} homes its share ({share} over "
                    f"{max(1, self._members())} nodes): no more keys can be enrolled here "
                    "(the admin may raise --max-keys on every node)"
                )
            self._keys += 1

        def release() -> None:
            with self._lock:
                self._keys -= 1

        return release

    def _check(self, owner: ObjectId, objects: int, used: int) -> None:
        have_objects, have_bytes = self._usage.get(owner, (0, 0))
        nodes = max(1, self._members())
        share = self.share(self.limits.objects)
        if objects > 0 and share and have_objects + objects > share:
            self.refused += 1
            raise QuotaExceeded(
                f"identity {owner} would own {have_objects + objects} objects on node "
                f"{self.node_id}, over its share there of the cluster's quota: {share} of "
                f"{self.limits.objects} objects per identity, split over {nodes} nodes; "
                "nothing was done"
            )
        share = self.share(self.limits.bytes)
        if used > 0 and share and have_bytes + used > share:
            self.refused += 1
            raise QuotaExceeded(
                f"identity {owner} would own {have_bytes + used} allocated bytes on node "
                f"{self.node_id}, over its share there of the cluster's quota: {share} of "
                f"{self.limits.bytes} bytes per identity, split over {nodes} nodes; "
                "nothing was done"
            )

    def _apply(self, owner: ObjectId, objects: int, used: int) -> None:
        row = self._usage.setdefault(owner, [0, 0])
        row[0] += objects
        row[1] += used
        if row[0] <= 0 and row[1] <= 0:
            del self._usage[owner]  # per-owner state only for owners with objects here

    def _add(self, header: ObjectHeader, sign: int) -> None:
        owner = ObjectId(header.kuid)
        if owner == ZERO_ID or self._exempt(owner):
            return
        with self._lock:
            self._apply(owner, sign, sign * used_bytes(header))


def _nothing() -> None:
    return None
