"""The location directory: which nodes hold an object's home record, and caches of it. Pure.

Theory of operation
-------------------
A ``HomeRecord`` says where an object lives: its home node, the version the home
last published and the record's epoch (raised each time the home moves). Records
are soft state: the home publishes them, and publishes them again, so whatever the
directory loses to a failure comes back.

**Placement.** The records of an object live on ``copies`` nodes chosen by
rendezvous (highest-random-weight) hashing: every live node gets the score
``blake2b(object_id || node_id)`` and the ``copies`` highest win. Every node computes
the same owners from the same member list without talking to anyone, and a change
of membership moves only what it must: when a node leaves, only the objects it owned
get one new owner each; when one joins, it takes only the objects it now wins.

**Who does what.**

- ``DirectoryShard``: the records this node holds as one of the owners. It keeps, for
  each object, the record with the highest (epoch, version): a late, stale publish
  never overwrites a newer one. After a membership change ``drop_not_owned`` forgets
  what moved elsewhere.
- ``HomePublisher``: the records this node is home of. After a membership change
  ``records_to_publish`` says which owners are new for which records; a periodic
  ``all_records_by_owner`` republishes everything, so the directory heals.
- ``LocationCache``: what a node or client learned about locations. A lookup is one
  dict probe. An entry is only ever replaced by a record with a higher (epoch,
  version); a caller that found an entry stale (the "home" said it is not home any
  more) invalidates *that epoch*, so a newer record learned meanwhile survives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from hashlib import blake2b
from itertools import islice

from dtwz.errors import InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.wire.messages import HomeRecord

__all__ = [
    "DirectoryShard",
    "HomePublisher",
    "LocationCache",
    "rendezvous_owners",
]

_Nodes = tuple[tuple[str, bytes], ...]


def _nodes(node_ids: Iterable[str]) -> _Nodes:
    """Distinct node IDs with their encoded form, computed once per placement run."""
    return tuple((n, n.encode("utf-8")) for n in sorted(set(node_ids)))


def _owners(object_id: bytes, nodes: _Nodes, copies: int) -> list[str]:
    # Object IDs have a fixed length, so object_id || node_id is unambiguous. Big-endian
    # digests of one length compare as the integers they encode; hashing the object ID
    # once and copying the state is the cheapest way to score many nodes.
    prefix = blake2b(object_id, digest_size=8)
    scored = []
    for node, raw in nodes:
        h = prefix.copy()
        h.update(raw)
        scored.append((h.digest(), node))
    scored.sort(reverse=True)
    return [node for _, node in scored[:copies]]


def _check_copies(copies: int) -> None:
    if copies < 0:
        raise InvalidArgument(f"copies must be >= 0, got {copies}")


def rendezvous_owners(object_id: bytes, node_ids: Iterable[str], copies: int) -> list[str]:
    """The ``min(copies, n)`` distinct nodes that hold ``object_id``'s record.

    Ordered by score, highest first (the first is the natural primary); equal scores
    (practically impossible with 64-bit hashes) put the greater node ID first. Deterministic:
    the same on every node for the same set of IDs, whatever their order.
    """
    _check_copies(copies)
    return _owners(object_id, _nodes(node_ids), copies)


def _newer(record: HomeRecord, than: HomeRecord | None) -> bool:
    """Whether ``record`` may replace ``than``: a higher epoch, or the same and version >=."""
    return than is None or (record.epoch, record.version) >= (than.epoch, than.version)


class DirectoryShard:
    """The home records this node holds as one of the directory's copies."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[bytes, HomeRecord] = {}

    def put(self, record: HomeRecord) -> bool:
        """Store ``record`` unless the one held is newer; return whether it was stored."""
        if not _newer(record, self._records.get(record.object_id)):
            return False
        self._records[record.object_id] = record
        return True

    def put_all(self, records: Iterable[HomeRecord]) -> int:
        """``put`` each record (a ``Publish``); return how many were stored."""
        return sum(self.put(r) for r in records)

    def get(self, object_id: bytes) -> HomeRecord | None:
        return self._records.get(object_id)

    def drop_not_owned(self, my_id: str, alive_ids: Iterable[str], copies: int) -> int:
        """Forget the records ``my_id`` no longer owns among ``alive_ids``; return how many."""
        _check_copies(copies)
        nodes = _nodes(alive_ids)
        gone = [oid for oid in self._records if my_id not in _owners(oid, nodes, copies)]
        for oid in gone:
            del self._records[oid]
        return len(gone)

    def records(self) -> list[HomeRecord]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._records


class LocationCache:
    """Cached home records, looked up on every remote dereference.

    ``max_entries`` bounds the size: when full, the oldest eighth of the entries (by
    first insertion) is dropped in one go, which keeps eviction cheap per insert.
    """

    __slots__ = ("_records", "max_entries")

    def __init__(self, max_entries: int | None = None) -> None:
        if max_entries is not None and max_entries < 1:
            raise InvalidArgument(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._records: dict[bytes, HomeRecord] = {}

    def get(self, object_id: bytes) -> HomeRecord | None:
        return self._records.get(object_id)

    def put(self, record: HomeRecord) -> bool:
        """Keep ``record`` unless a higher (epoch, version) is cached; return whether kept."""
        records = self._records
        held = records.get(record.object_id)
        if not _newer(record, held):
            return False
        if held is None and self.max_entries is not None and len(records) >= self.max_entries:
            for oid in list(islice(records, max(1, self.max_entries // 8))):
                del records[oid]
        records[record.object_id] = record
        return True

    def invalidate(self, object_id: bytes, stale_epoch: int | None = None) -> bool:
        """Drop the entry, but with ``stale_epoch`` only if its epoch is <= that one.

        A caller that found the record of epoch E wrong passes E: a record of a
        higher epoch, learned while it was finding out, is the correction and stays.
        """
        held = self._records.get(object_id)
        if held is None or (stale_epoch is not None and held.epoch > stale_epoch):
            return False
        del self._records[object_id]
        return True

    def drop_home(self, node_id: str) -> int:
        """Forget every entry whose home is ``node_id`` (it died); return how many."""
        gone = [oid for oid, r in self._records.items() if r.home == node_id]
        for oid in gone:
            del self._records[oid]
        return len(gone)

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._records


class HomePublisher:
    """The records of the objects this node is home of, and where they must go.

    ``owners`` results may name this node itself: those records go into its own
    ``DirectoryShard`` rather than over the wire.
    """

    __slots__ = ("_records", "home")

    def __init__(self, home: str, records: Iterable[HomeRecord] = ()) -> None:
        self.home = home
        self._records: dict[bytes, HomeRecord] = {}
        for r in records:
            self.update(r)

    def set(self, object_id: ObjectId, version: int, epoch: int) -> HomeRecord:
        """Record that this node homes ``object_id`` at ``version`` and ``epoch``."""
        record = HomeRecord(object_id, self.home, version, epoch)
        self._records[object_id] = record
        return record

    def update(self, record: HomeRecord) -> None:
        if record.home != self.home:
            raise InvalidArgument(f"record homed at {record.home!r}, this is {self.home!r}")
        self._records[record.object_id] = record

    def discard(self, object_id: bytes) -> None:
        """This node is no longer home of ``object_id`` (deleted, or migrated away)."""
        self._records.pop(object_id, None)

    def get(self, object_id: bytes) -> HomeRecord | None:
        return self._records.get(object_id)

    def records(self) -> list[HomeRecord]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[HomeRecord]:
        return iter(list(self._records.values()))

    def records_to_publish(
        self, old_alive: Iterable[str], new_alive: Iterable[str], copies: int
    ) -> dict[str, list[HomeRecord]]:
        """For each owner that is new for some records after a membership change, those.

        Owners that held a record before the change already have it; owners that lost
        it drop it themselves (``DirectoryShard.drop_not_owned``).
        """
        _check_copies(copies)
        old_nodes, new_nodes = _nodes(old_alive), _nodes(new_alive)
        out: dict[str, list[HomeRecord]] = {}
        if old_nodes == new_nodes:
            return out
        for oid, record in self._records.items():
            before = _owners(oid, old_nodes, copies)
            for owner in _owners(oid, new_nodes, copies):
                if owner not in before:
                    out.setdefault(owner, []).append(record)
        return out

    def all_records_by_owner(
        self, alive: Iterable[str], copies: int
    ) -> dict[str, list[HomeRecord]]:
        """Every record, grouped by each of its owners: the periodic full republication."""
        _check_copies(copies)
        nodes = _nodes(alive)
        out: dict[str, list[HomeRecord]] = {}
        for oid, record in self._records.items():
            for owner in _owners(oid, nodes, copies):
                out.setdefault(owner, []).append(record)
        return out
