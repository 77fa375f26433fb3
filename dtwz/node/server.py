"""A dtwz node: store, peer endpoint, HTTP API, membership and location directory.

Life cycle (``startup / serve / shutdown``): open the store (recovery runs),
bind the peer endpoint and the HTTP API, join through the seeds, then run the
heartbeat loop until SIGTERM/SIGINT; on shutdown announce LEAVE and close.

The location half of the resolver lives here:
- **membership**: heartbeats gossip the member list every ``heartbeat_interval``;
  a member whose heartbeat stops growing is SUSPECT after ``suspect_after`` and
  DEAD after ``dead_after`` seconds (``dtwz.resolver.membership``). A node joins
  again through any seed at which no live member answers, every ``RESEED_EVERY``
  seconds: nobody gossips to the dead, so a seed that restarted knowing no one
  (a lone seed, as in a local cluster) would otherwise stay alone;
- **directory**: each object's record (home, version, epoch) is kept by the
  ``directory_copies`` live members that rendezvous hashing picks for its ID. The
  records are soft state: a home republishes all of its records whenever the
  membership changes (and every ``REPUBLISH_EVERY`` seconds), so the directory
  heals after joins, leaves and failures;
- **locate**: local objects answer at once; otherwise the location cache, then
  the directory owners, then (while the directory heals) every live member.

The name half of the resolver is ``self.names`` (``dtwz.resolver.namespace``): it
creates the root directory at start-up on the one node meant to home it, and
serves ``DirOp`` changes of the directories homed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from dtwz.errors import DtwzError, HomeUnreachable, ObjectNotFound, PeerUnavailable
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph.agent import GraphAgent
from dtwz.graph.execute import CodeExecutor
from dtwz.node.access import Access, KeyRing
from dtwz.node.code.runner import CodeRunner
from dtwz.node.config import NodeConfig
from dtwz.node.migration import Migrations
from dtwz.node.peer import Curve, PeerEndpoint, curve_keypair
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC
from dtwz.resolver.locations import DirectoryShard, LocationCache, rendezvous_owners
from dtwz.resolver.membership import (
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    Membership,
    MembershipEvent,
    MemberState,
)
from dtwz.resolver.namespace import Namespace
from dtwz.security import keyfiles
from dtwz.service.objects import ObjectService
from dtwz.store.store import Store
from dtwz.wire.messages import (
    Ack,
    Create,
    DirOp,
    EdgeUses,
    ErrorReply,
    Fetch,
    FetchMany,
    GraphExpand,
    Heartbeat,
    HomeRecord,
    Invalidate,
    Join,
    Leave,
    Locate,
    Location,
    MemberInfo,
    Members,
    Message,
    Migrate,
    Migrated,
    MigrateIn,
    ObjectData,
    Ping,
    Publish,
    RunCode,
    Transact,
)

log = logging.getLogger(__name__)

REPUBLISH_EVERY = 30.0
RESEED_EVERY = 1.0
PUBLISH_BATCH = 1024  # records per Publish: encoding one must not stall the loop
_NO_RECORD = HomeRecord(ObjectId(bytes(16)), "", 0, 0)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config.validate()
        self.node_id = config.node_id
        self.started = time.time()
        self.store: Store | None = None
        self.service: ObjectService | None = None
        self.names: Namespace | None = None
        self.migrations: Migrations | None = None
        self.graph: GraphAgent | None = None
        self.code: CodeExecutor | None = None
        self.access: Access | None = None
        self.peer = PeerEndpoint(
            f"tcp://{config.bind_host}:{config.peer_port}",
            self._dispatch,
            timeout=config.request_timeout,
        )
        self.membership = Membership(
            self._me(MemberState.ALIVE, time.time_ns()),
            suspect_after=config.suspect_after,
            dead_after=config.dead_after,
        )
        self.shard = DirectoryShard()
        self.locations = LocationCache()
        self.joined = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._republish_wanted = asyncio.Event()
        self._http_runner: Any = None
        self.stats: dict[str, int] = defaultdict(int)
        self._admitted_read = 0.0

    def _me(self, state: int, incarnation: int, heartbeat: int = 0) -> MemberInfo:
        c = self.config
        return MemberInfo(c.node_id, c.peer_addr, c.http_addr, incarnation, state, heartbeat)

    # -- life cycle --------------------------------------------------------------

    async def startup(self) -> None:
        data = self.config.data_dir
        self.store = Store.open(data / "store", create=True, durable=self.config.durable)
        self.service = ObjectService(self.store, self)
        c = self.config
        self.names = Namespace(
            self, self.service, cluster_id=c.cluster_id, seeds=c.seeds, peer_addr=c.peer_addr
        )
        self.names.startup()  # the root, if it is ours to create
        self.migrations = Migrations(data, self.service, self)
        self.graph = GraphAgent(self, self.service, self.names)
        if c.prefetch_neighbours > 0:
            self.service.on_fetched = self.graph.prefetch_neighbours(c.prefetch_neighbours)
        identity_file = self._setup_security() if c.security else None
        runner = CodeRunner(data / "store", self.config.http_url, identity_file=identity_file)
        self.code = CodeExecutor(self, self.service, self.graph, runner)
        await self.peer.start()
        self.migrations.resume()  # moves a crash interrupted
        from dtwz.node.http import start_http  # the one module that builds the aiohttp app

        self._http_runner = await start_http(self)
        self._spawn(self._join_loop())
        self._spawn(self._heartbeat_loop())
        self._spawn(self._reseed_loop())
        self._spawn(self._republish_loop())
        log.info(
            "node %s up: peer %s, http %s",
            self.node_id,
            self.config.peer_addr,
            self.config.http_addr,
        )

    def _setup_security(self) -> Path:
        """Keys (made on first start, this node admitted), CurveZMQ on the peer
        endpoint and the access policy; the identity file its code worker signs with."""
        folder = self.config.keys_folder
        admitted = keyfiles.ensure_keys(folder, [self.node_id], curve_keypair)
        mine = keyfiles.NodeKeys.load(folder, self.node_id)
        assert self.service is not None
        service = self.service

        async def read_key(kuid: ObjectId) -> bytes:
            obj, _, _ = await service.open_whole(kuid)
            return bytes(obj.read(DATA_START, obj.header().data_len))

        self.access = Access(
            self.node_id, admitted, KeyRing(admitted.trusted, read_key), service.header_of
        )
        self.peer.curve = Curve(
            mine.curve_server[0], mine.curve_server[1], mine.curve[0], mine.curve[1], self._admits
        )
        return keyfiles.node_identity_file(folder, self.node_id)

    def _admits(self, curve_key: bytes) -> bool:
        """Whether a peer's curve key is admitted (runs in the ZAP thread). An unknown
        key rereads admitted.json, at most once a second: nodes of a compose cluster
        admit themselves as they start."""
        access = self.access
        if access is None:
            return False
        if curve_key in access.admitted.curve_clients.values():
            return True
        now = time.monotonic()
        if now - self._admitted_read < 1.0:
            return False
        self._admitted_read = now
        try:
            admitted = keyfiles.Admitted.load(self.config.keys_folder)
        except DtwzError as exc:
            log.warning("cannot reread the admitted keys: %s", exc)
            return False
        access.admitted = admitted
        access.keys.trust(admitted.trusted)
        return curve_key in admitted.curve_clients.values()

    async def serve(self) -> None:
        """Run until ``stop()`` or SIGTERM/SIGINT."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        self.membership.leave(time.monotonic())
        goodbye = Leave(self.node_id, self.membership.me().incarnation)
        await asyncio.gather(
            *(self._quiet(self.request(n, goodbye, 0.5)) for n in self._peers()),
        )
        if self.migrations is not None:
            await self.migrations.close()
        if self.code is not None:
            await self.code.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        await self.peer.close()
        if self.service is not None:
            self.service.close()
        if self.store is not None:
            self.store.close()

    async def __aenter__(self) -> Node:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quiet(aw: Any) -> Any:
        try:
            return await aw
        except DtwzError:
            return None

    # -- peers -------------------------------------------------------------------

    def _peers(self) -> list[str]:
        return [n for n in self.membership.alive_ids() if n != self.node_id]

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        """Send to a member by node ID (``HomeUnreachable`` if it is not a live member)."""
        member = self.membership.get(node_id)
        if member is None or member.state in (MemberState.DEAD, MemberState.LEFT):
            raise HomeUnreachable(f"node {node_id} is not a live member of the cluster")
        return await self.peer.request(member.peer_addr, message, timeout)

    async def _dispatch(self, m: Message) -> Message:
        service = self.service
        assert service is not None
        self.stats[f"peer_{type(m).__name__}"] += 1
        match m:
            case Fetch():
                return await service.on_fetch(m)
            case Transact():
                return await service.on_transact(m)
            case Invalidate():
                return await service.on_invalidate(m)
            case Create():
                return await service.on_create(m)
            case DirOp():
                assert self.names is not None
                return await self.names.on_dir_op(m)
            case Locate():
                oid = m.object_id
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
            case FetchMany():
                return await service.on_fetch_many(m)
            case GraphExpand():
                assert self.graph is not None
                return await self.graph.on_expand(m)
            case EdgeUses():
                assert self.graph is not None
                return await self.graph.on_edge_uses(m)
            case Migrate():
                return await self.migrate(m)
            case RunCode():
                assert self.code is not None
                return await self.code.on_run_code(m)
            case MigrateIn():
                assert self.migrations is not None
                return await self.migrations.on_migrate_in(m)
            case Publish():
                return Ack(sum(self.shard.put(r) for r in m.records))
            case Heartbeat():
                self.membership.heard_directly(m.sender.node_id, time.monotonic())
                await self._apply_events(
                    self.membership.merge([m.sender, *m.members], time.monotonic())
                )
                return Members(self.membership.members())
            case Join():
                events = self.membership.merge([m.member], time.monotonic())
                self.membership.heard_directly(m.member.node_id, time.monotonic())
                await self._apply_events(events)
                return Members(self.membership.members())
            case Leave():
                now = time.monotonic()
                await self._apply_events(self.membership.note_left(m.node_id, m.incarnation, now))
                return Ack()
            case Ping():
                return Ack()
        return ErrorReply("ProtocolError", f"{type(m).__name__} is not a request")

    # -- membership ----------------------------------------------------------------

    async def _join_loop(self) -> None:
        seeds = [s for s in self.config.seeds if s != self.config.peer_addr]
        if not seeds:
            self.joined.set()
            return
        delay = 0.1
        while not self.joined.is_set():
            for seed in seeds:
                try:
                    reply = await self.peer.request(seed, Join(self.membership.me()), 1.0)
                except DtwzError as exc:
                    log.debug("seed %s: %s", seed, exc)
                    continue
                if isinstance(reply, Members):
                    now = time.monotonic()
                    await self._apply_events(self.membership.merge(reply.members, now))
                    self.joined.set()
                    self._republish_wanted.set()
                    break
            if not self.joined.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _reseed_loop(self) -> None:
        await self.joined.wait()
        while True:
            await asyncio.sleep(RESEED_EVERY)
            live = {
                m.peer_addr
                for m in self.membership.members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)
            }
            for seed in self.config.seeds:
                if seed not in live and seed != self.config.peer_addr:
                    self._spawn(self._rejoin(seed))

    async def _rejoin(self, seed: str) -> None:
        try:
            reply = await self.peer.request(seed, Join(self.membership.me()), 1.0)
        except DtwzError:
            return  # still down
        if isinstance(reply, Members):
            self.stats["rejoins"] += 1
            await self._apply_events(self.membership.merge(reply.members, time.monotonic()))

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await self._apply_events(self.membership.tick(time.monotonic()))
            beat = Heartbeat(self.membership.me(), self.membership.members())
            for node_id in self._peers():
                self._spawn(self._gossip(node_id, beat, interval * 2))
            await asyncio.sleep(interval)

    async def _gossip(self, node_id: str, beat: Heartbeat, timeout: float) -> None:
        try:
            reply = await self.request(node_id, beat, timeout)
        except DtwzError:
            return  # missed heartbeats are what failure detection counts
        if isinstance(reply, Members):
            now = time.monotonic()
            self.membership.heard_directly(node_id, now)
            await self._apply_events(self.membership.merge(reply.members, now))

    async def _apply_events(self, events: list[MembershipEvent]) -> None:
        for event in events:
            log.info("%s: %s", self.node_id, event)
            self.stats[type(event).__name__] += 1
            if isinstance(event, MemberDied | MemberLeft | MemberRecovered):
                gone = event.node_id
                self.locations.drop_home(gone)
                if self.service is not None:
                    self.service.copies.drop_home(gone)
                    self.service.drop_holder(gone)
                member = self.membership.get(gone)
                if member is not None and not isinstance(event, MemberRecovered):
                    self.peer.forget(member.peer_addr)
            if isinstance(event, MemberJoined | MemberDied | MemberLeft | MemberRecovered):
                self._republish_wanted.set()

    # -- directory -------------------------------------------------------------------

    def _local_record(self, oid: ObjectId) -> HomeRecord | None:
        if self.service is None or not self.service.is_home(oid):
            return None
        return HomeRecord(oid, self.node_id, 0, self.service.epoch_of(oid))

    def learn_location(self, record: HomeRecord) -> None:
        """A home said where an object went (a migration): cache it (higher epoch wins)."""
        self.locations.put(record)

    async def migrate(self, m: Migrate) -> Migrated:
        """Move objects homed here to another node (``dtwz.node.migration``)."""
        assert self.migrations is not None
        return await self.migrations.migrate(m.object_ids, m.to_node, m.txn_id)

    def alive_ids(self) -> list[str]:
        return self.membership.alive_ids()

    def is_alive(self, node_id: str) -> bool:
        return self._is_alive(node_id)

    def pinned(self, oid: ObjectId) -> bool:
        """Objects that never migrate: directories keep the namespace's homing rules."""
        assert self.service is not None
        if self.names is not None and oid == self.names.root:
            return True
        head = self.service.store.get(oid).read(DATA_START, len(DIRECTORY_MAGIC))
        return bytes(head) == DIRECTORY_MAGIC

    def _owners(self, oid: bytes) -> list[str]:
        return rendezvous_owners(oid, self.membership.alive_ids(), self.config.directory_copies)

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord:
        local = self._local_record(oid)
        if local is not None:
            return local
        if refresh:
            self.locations.invalidate(oid)
        else:
            cached = self.locations.get(oid)
            if cached is not None:
                return self._check_home(cached)
        self.stats["directory_lookups"] += 1
        owners = self._owners(oid)
        if self.node_id in owners:  # our own shard first: no round trip
            owners.remove(self.node_id)
            owners.insert(0, self.node_id)
        for owner in owners:
            if owner == self.node_id:
                record = self.shard.get(oid)
            else:
                try:
                    reply = await self.request(owner, Locate(oid))
                except DtwzError:
                    continue
                record = reply.record if isinstance(reply, Location) and reply.found else None
            if record is not None and (not refresh or self._is_alive(record.home)):
                self.locations.put(record)
                return self._check_home(record)
        return await self._locate_by_asking_everyone(oid)

    def hint_location(self, oid: ObjectId, home: str) -> bool:
        """A guess where ``oid`` lives, used only while nothing better is known: its
        epoch 0 loses to any published record, and a wrong guess is found and
        corrected like any stale record (the fetch fails, the directory is asked).
        Whether the guess was taken."""
        if oid in self.locations or not self._is_alive(home):
            return False
        return self.locations.put(HomeRecord(oid, home, 0, 0))

    def member_at(self, peer_addr: str) -> tuple[str, int] | None:
        """(node ID, state) of the member whose peer address is ``peer_addr``, if any."""
        for m in self.membership.members():
            if m.peer_addr == peer_addr:
                return m.node_id, m.state
        return None

    def _is_alive(self, node_id: str) -> bool:
        member = self.membership.get(node_id)
        return member is not None and member.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def _check_home(self, record: HomeRecord) -> HomeRecord:
        if not self._is_alive(record.home):
            raise HomeUnreachable(
                f"object {record.object_id.hex()} lives on node {record.home}, which is down"
            )
        return record

    async def _locate_by_asking_everyone(self, oid: ObjectId) -> HomeRecord:
        """The directory does not know (yet): ask every live member whether it homes it."""
        self.stats["broadcast_lookups"] += 1
        probe = Fetch(oid, 0, 0, False, False, self.node_id)
        peers = self._peers()
        replies = await asyncio.gather(
            *(self.request(n, probe) for n in peers), return_exceptions=True
        )
        unreachable = False
        for node_id, reply in zip(peers, replies, strict=True):
            if isinstance(reply, ObjectData):
                record = HomeRecord(oid, node_id, reply.version, 1)
                self.locations.put(record)
                self._spawn(self.publish_created(record))  # heal the directory
                return record
            unreachable |= isinstance(reply, PeerUnavailable)
        if unreachable:
            raise HomeUnreachable(f"object {oid.hex()} not found; some nodes did not answer")
        raise ObjectNotFound(f"no node of the cluster holds object {oid.hex()}")

    async def publish_created(self, record: HomeRecord) -> None:
        owners = self._owners(record.object_id)
        await asyncio.gather(*(self._publish(o, [record]) for o in owners))

    async def _publish(self, owner: str, records: list[HomeRecord]) -> None:
        if owner == self.node_id:
            for r in records:
                self.shard.put(r)
            return
        try:
            await self.request(owner, Publish(records))
        except DtwzError as exc:
            log.info("publish to %s failed: %s", owner, exc)

    async def _republish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._republish_wanted.wait(), REPUBLISH_EVERY)
            self._republish_wanted.clear()
            await asyncio.sleep(self.config.heartbeat_interval)  # let a burst of events settle
            await self.republish()

    async def republish(self) -> int:
        """Send every record this node homes to its current directory owners."""
        assert self.store is not None
        by_owner: dict[str, list[HomeRecord]] = defaultdict(list)
        count = 0
        alive = self.membership.alive_ids()
        self.stats["republish_members"] = len(alive)
        assert self.service is not None
        # with no more members than copies every member owns every record: no hashing
        everyone = alive if len(alive) <= self.config.directory_copies else None
        for oid in self.store.object_ids():
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
        self.stats["republishes"] += 1
        self.stats["republished"] += count
        return count

    async def describe(self, oid: ObjectId, *, refresh: bool = False) -> Location:
        """Where an object lives, with the home's own version and list of copy holders."""
        record = await self.locate(oid, refresh=refresh)
        if record.home == self.node_id:
            reply = await self._dispatch(Locate(oid))
        else:
            try:
                reply = await self.request(record.home, Locate(oid))
            except DtwzError:  # the directory's word is the best we have
                return Location(True, record, [])
        assert isinstance(reply, Location)
        return reply if reply.found else Location(True, record, [])

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.store is not None and self.service is not None
        members = [
            {
                "node_id": m.node_id,
                "state": MemberState(m.state).name.lower(),
                "peer": m.peer_addr,
                "http": m.http_addr,
                "incarnation": m.incarnation,
            }
            for m in self.membership.members()
        ]
        return {
            "node_id": self.node_id,
            "uptime": round(time.time() - self.started, 3),
            "members": members,
            "objects": sum(1 for _ in self.store.object_ids()),  # homed here
            "directory_records": len(self.shard),
            "copies": len(self.service.copies),
            "cache": dict(self.service.copies.stats),
            "service": dict(self.service.stats),
            "store": dict(self.store.stats),
            "peer": dict(self.peer.stats),
            "node": dict(self.stats),
            "access": dict(self.access.stats) if self.access is not None else {},
            "names": self.names.status() if self.names is not None else {},
            "graph": dict(self.graph.stats) if self.graph is not None else {},
            "code": dict(self.code.stats) if self.code is not None else {},
            "migrations": dict(self.migrations.stats) if self.migrations is not None else {},
            "root": self.names.root.hex() if self.names is not None else None,
        }


async def run_node(config: NodeConfig) -> None:
    """Start a node and serve until SIGTERM or SIGINT."""
    node = Node(config)
    await node.startup()
    try:
        await node.serve()
    finally:
        await node.shutdown()
