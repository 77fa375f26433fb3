"""The location directory: where each object's home is, kept by the cluster.

The tables are pure (``dtwz.resolver.locations``: ``DirectoryShard``, the records
this node keeps for others; ``LocationCache``, what it learnt); this module keeps
them current and answers lookups:

- **publish**: each object's record (home, version, epoch) is kept by the
  ``directory_copies`` live members that rendezvous hashing picks for its ID. A
  home publishes the record of an object it creates, and republishes all of its
  records whenever the membership changes (``wanted``) and every
  ``REPUBLISH_EVERY`` seconds, in batches of ``PUBLISH_BATCH``;
- **locate**: local objects answer at once; otherwise the location cache, then
  the directory owners (this node's own shard first), then, while the directory
  heals, every live member (and the answer is published again);
- **describe**: the home's own word on an object: version and copy holders.

Invariants: the records are soft state. Nothing here is written to disk; a lost
record comes back at the next republish, so the directory heals after joins,
leaves and failures. A record's epoch orders the homes an object has had
(migration raises it): a higher epoch wins everywhere. A record naming a home
that is not alive is never handed out (``HomeUnreachable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from dtwz.errors import DtwzError, HomeUnreachable, ObjectNotFound, PeerUnavailable
from dtwz.format.ids import ObjectId
from dtwz.node.dispatch import HandlerTable
from dtwz.resolver.locations import DirectoryShard, LocationCache, rendezvous_owners
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import (
    Ack,
    Fetch,
    HomeRecord,
    Locate,
    Location,
    Message,
    ObjectData,
    Publish,
)

log = logging.getLogger(__name__)

REPUBLISH_EVERY = 30.0
PUBLISH_BATCH = 1024  # records per Publish: encoding one must not stall the loop
_NO_RECORD = HomeRecord(ObjectId(bytes(16)), "", 0, 0)

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


class Members(Protocol):
    """The live members and requests to them (``dtwz.node.gossip.Gossip``)."""

    def peers(self) -> list[str]: ...

    def alive_ids(self) -> list[str]: ...

    def is_alive(self, node_id: str) -> bool: ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...


class LocationDirectory:
    """This node's part of the location directory (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        service: ObjectService,
        members: Members,
        *,
        copies: int,
        settle: float,
        shard: DirectoryShard,
        cache: LocationCache,
        stats: dict[str, int],
        spawn: Spawn,
    ) -> None:
        self.node_id = node_id
        self.service = service
        self.members = members
        self.copies = copies  # owners of each record
        self.settle = settle  # seconds a burst of membership events gets to settle
        self.shard = shard
        self.cache = cache
        self.wanted = asyncio.Event()  # set: republish soon
        self._stats = stats
        self._spawn = spawn

    def handlers(self) -> HandlerTable:
        return {Locate: self.on_locate, Publish: self.on_publish}

    # -- handlers --------------------------------------------------------------------

    async def on_locate(self, m: Locate) -> Location:
        oid = m.object_id
        service = self.service
        if service.is_home(oid):  # the home knows best: version and copies
            version = service.store.get(oid).header().version
            copies = sorted(service.holders.get(oid, ()))
            here = HomeRecord(oid, self.node_id, version, service.epoch_of(oid))
            return Location(True, here, copies)
        record = self.shard.get(oid)
        forward = service.forwarding(oid)
        if forward is not None and (record is None or record.epoch < forward[1]):
            record = HomeRecord(oid, forward[0], 0, forward[1])  # it moved from here
        return Location(record is not None, record or _NO_RECORD)

    async def on_publish(self, m: Publish) -> Ack:
        return Ack(sum(self.shard.put(r) for r in m.records))

    # -- lookups ---------------------------------------------------------------------

    async def locate(
        self, oid: ObjectId, *, refresh: bool = False, ask_everyone: bool = True
    ) -> HomeRecord:
        """The record of ``oid``'s home; ``refresh`` skips the cache and records of
        homes that are down (a home said the object is not there). When the
        directory does not know it, every member is asked, unless ``ask_everyone``
        is False (a key named by a request not yet authenticated): then it is
        ``ObjectNotFound``."""
        local = self._local_record(oid)
        if local is not None:
            return local
        if refresh:
            self.cache.invalidate(oid)
        else:
            cached = self.cache.get(oid)
            if cached is not None:
                return self._check_home(cached)
        self._stats["directory_lookups"] += 1
        owners = self._owners(oid)
        if self.node_id in owners:  # our own shard first: no round trip
            owners.remove(self.node_id)
            owners.insert(0, self.node_id)
        for owner in owners:
            if owner == self.node_id:
                record = self.shard.get(oid)
            else:
                try:
                    reply = await self.members.request(owner, Locate(oid))
                except DtwzError:
                    continue
                record = reply.record if isinstance(reply, Location) and reply.found else None
            if record is not None and (not refresh or self.members.is_alive(record.home)):
                self.cache.put(record)
                return self._check_home(record)
        if not ask_everyone:
            raise nowhere(oid)
        return await self._locate_by_asking_everyone(oid)

    async def describe(self, oid: ObjectId, *, refresh: bool = False) -> Location:
        """Where an object lives, with the home's own version and list of copy holders."""
        record = await self.locate(oid, refresh=refresh)
        if record.home == self.node_id:
            reply: Message = await self.on_locate(Locate(oid))
        else:
            try:
                reply = await self.members.request(record.home, Locate(oid))
            except DtwzError:  # the directory's word is the best we have
                return Location(True, record, [])
        assert isinstance(reply, Location)
        return reply if reply.found else Location(True, record, [])

    def learn(self, record: HomeRecord) -> None:
        """A home said where an object went (a migration): cache it (higher epoch wins)."""
        self.cache.put(record)

    def hint(self, oid: ObjectId, home: str) -> bool:
        """A guess where ``oid`` lives, used only while nothing better is known: its
        epoch 0 loses to any published record, and a wrong guess is found and
        corrected like any stale record (the fetch fails, the directory is asked).
        Whether the guess was taken."""
        if oid in self.cache or not self.members.is_alive(home):
            return False
        return self.cache.put(HomeRecord(oid, home, 0, 0))

    def _local_record(self, oid: ObjectId) -> HomeRecord | None:
        if not self.service.is_home(oid):
            return None
        return HomeRecord(oid, self.node_id, 0, self.service.epoch_of(oid))

    def _owners(self, oid: bytes) -> list[str]:
        return rendezvous_owners(oid, self.members.alive_ids(), self.copies)

    def _check_home(self, record: HomeRecord) -> HomeRecord:
        if not self.members.is_alive(record.home):
            raise HomeUnreachable(
                f"object {record.object_id.hex()} lives on node {record.home}, which is down"
            )
        return record

    async def _locate_by_asking_everyone(self, oid: ObjectId) -> HomeRecord:
        """The directory does not know (yet): ask every live member whether it homes it."""
        self._stats["broadcast_lookups"] += 1
        probe = Fetch(oid, 0, 0, False, False, self.node_id)
        peers = self.members.peers()
        replies = await asyncio.gather(
            *(self.members.request(n, probe) for n in peers), return_exceptions=True
        )
        unreachable = False
        for node_id, reply in zip(peers, replies, strict=True):
            if isinstance(reply, ObjectData):
                record = HomeRecord(oid, node_id, reply.version, 1)
                self.cache.put(record)
                self._spawn(self.publish(record))  # heal the directory
                return record
            unreachable |= isinstance(reply, PeerUnavailable)
        if unreachable:
            raise HomeUnreachable(f"object {oid.hex()} not found; some nodes did not answer")
        raise nowhere(oid)

    # -- publishing ------------------------------------------------------------------

    async def publish(self, record: HomeRecord) -> None:
        """Give a new (or newly homed) object's record to its directory owners."""
        owners = self._owners(record.object_id)
        await asyncio.gather(*(self._publish(o, [record]) for o in owners))

    async def _publish(self, owner: str, records: list[HomeRecord]) -> None:
        if owner == self.node_id:
            for r in records:
                self.shard.put(r)
            return
        try:
            await self.members.request(owner, Publish(records))
        except DtwzError as exc:
            log.info("publish to %s failed: %s", owner, exc)

    async def republish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wanted.wait(), REPUBLISH_EVERY)
            self.wanted.clear()
            await asyncio.sleep(self.settle)  # let a burst of events settle
            await self.republish()

    async def republish(self) -> int:
        """Send every record this node homes to its current directory owners."""
        by_owner: dict[str, list[HomeRecord]] = defaultdict(list)
        count = 0
        alive = self.members.alive_ids()
        self._stats["republish_members"] = len(alive)
        # with no more members than copies every member owns every record: no hashing
        everyone = alive if len(alive) <= self.copies else None
        for oid in self.service.store.object_ids():
            record = HomeRecord(oid, self.node_id, 0, self.service.epoch_of(oid))
            for owner in everyone or self._owners(oid):
                batch = by_owner[owner]
                batch.append(record)
                if len(batch) >= PUBLISH_BATCH:
                    await self._publish(owner, batch)  # as it fills: memory stays bounded
                    by_owner[owner] = []
            count += 1
            if count % 1000 == 0:
                await asyncio.sleep(0)  # keep serving while a large store is scanned
        await asyncio.gather(*(self._publish(o, r) for o, r in by_owner.items() if r))
        # Records this shard no longer owns are kept: dropping them by this node's
        # view could drop a record another node just published here under a newer
        # view. They cost memory only; lookups go to the current owners.
        self._stats["republishes"] += 1
        self._stats["republished"] += count
        return count


def nowhere(oid: ObjectId) -> ObjectNotFound:
    """What a node answers for an ID no member holds, and, word for word, to a
    requester who may not read an object that exists (docs/SECURITY.md §9)."""
    return ObjectNotFound(f"no node of the cluster holds object {oid.hex()}")
