"""A dtwz node: one process that wires the layers below into a member of a cluster.

Life cycle (``startup / serve / shutdown``, or ``async with Node(config)``):

1. **startup** opens the store (recovery runs) and builds the parts on it: the
   object service, the namespace (which creates the root directory on the one
   node meant to home it), migrations, the graph agent, the code executor, the
   location directory and, with security on, the keys, CurveZMQ and the access
   policy. Then it merges the parts' peer handlers into one table
   (``dtwz.node.dispatch``), binds the peer endpoint, resumes the migrations a
   crash interrupted, serves the HTTP API (``dtwz.node.http``) and starts the
   loops: joining, heartbeats and reseeding (``dtwz.node.gossip``), republishing
   the location directory (``dtwz.node.location_directory``);
2. **serve** waits for ``stop()``, SIGTERM or SIGINT;
3. **shutdown** says goodbye to the live peers (LEAVE), stops the loops, the
   HTTP API and the peer endpoint, and closes the store.

docs/ARCHITECTURE.md draws the layers and the path of a request through them.

The node is also the one object the parts below it talk to about the cluster:
the object service, the namespace, the graph agent, the code executor and
migrations each name what they need of it in a small protocol (``locate``,
``request``, ``publish_created`` and so on); the methods under "the cluster, as
the parts see it" answer them by handing over to the gossip and the location
directory. The HTTP routes see it as ``dtwz.node.http.context.NodeApi``.

Invariant: the parts exist from ``startup`` to ``shutdown`` and are built before
the first request can arrive (peer or HTTP), so no handler sees a half-built node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dtwz.errors import DtwzError, ObjectNotFound
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph.agent import GraphAgent
from dtwz.graph.execute import CodeExecutor
from dtwz.node import dispatch
from dtwz.node.access import Access, KeyRing, is_key_header
from dtwz.node.code.host import StoreCodeHost
from dtwz.node.code.runner import CodeLimits, CodeRunner, Isolation
from dtwz.node.config import NodeConfig
from dtwz.node.dispatch import Dispatcher
from dtwz.node.gossip import Gossip
from dtwz.node.http.app import HttpLimits, build_code_app, start_http
from dtwz.node.location_directory import LocationDirectory
from dtwz.node.migration import Migrations
from dtwz.node.peer import Curve, PeerEndpoint, curve_keypair
from dtwz.node.quotas import Limits, Quotas
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC
from dtwz.resolver.locations import DirectoryShard, LocationCache
from dtwz.resolver.membership import Membership
from dtwz.resolver.namespace import Namespace
from dtwz.security import keyfiles
from dtwz.service.objects import ObjectService
from dtwz.store.store import Store
from dtwz.wire.kinds import MemberState
from dtwz.wire.messages import HomeRecord, Location, Message, Migrate, Migrated

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeParts:
    """What ``startup`` builds on the store; it lives until ``shutdown``."""

    store: Store
    service: ObjectService
    names: Namespace
    migrations: Migrations
    graph: GraphAgent
    code: CodeExecutor
    directory: LocationDirectory


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config.validate()
        self.node_id = config.node_id
        self.started = time.time()
        self.stats: dict[str, int] = defaultdict(int)
        self.access: Access | None = None  # set at startup with security on
        self.quotas: Quotas | None = None  # likewise: enrollment and quotas
        self.dispatcher = Dispatcher(self.stats)
        self.peer = PeerEndpoint(
            f"tcp://{config.bind_host}:{config.peer_port}",
            self.dispatcher,
            timeout=config.request_timeout,
        )
        self.gossip = Gossip(
            config,
            self.peer,
            stats=self.stats,
            spawn=self._spawn,
            on_member_gone=self._member_gone,
            on_change=self._membership_changed,
        )
        self.shard = DirectoryShard()  # the records this node keeps for the cluster
        self.locations = LocationCache()  # where homes are, as this node learnt it
        self._parts: NodeParts | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http_runner: web.AppRunner | None = None
        self._admitted_read = 0.0

    @property
    def membership(self) -> Membership:
        return self.gossip.membership

    @property
    def joined(self) -> asyncio.Event:
        return self.gossip.joined

    @property
    def parts(self) -> NodeParts:
        if self._parts is None:
            raise DtwzError(f"node {self.node_id} is not started")
        return self._parts

    @property
    def store(self) -> Store:
        return self.parts.store

    @property
    def service(self) -> ObjectService:
        return self.parts.service

    @property
    def names(self) -> Namespace:
        return self.parts.names

    @property
    def migrations(self) -> Migrations:
        return self.parts.migrations

    @property
    def graph(self) -> GraphAgent:
        return self.parts.graph

    @property
    def code(self) -> CodeExecutor:
        return self.parts.code

    @property
    def directory(self) -> LocationDirectory:
        return self.parts.directory

    # -- life cycle --------------------------------------------------------------

    async def startup(self) -> None:
        c = self.config
        store = Store.open(c.data_dir / "store", create=True, durable=c.durable)
        parts = self._parts = self._build(store)
        for table in (
            dispatch.object_service_handlers(parts.service),
            dispatch.namespace_handlers(parts.names),
            dispatch.graph_handlers(parts.graph, parts.code),
            parts.migrations.handlers(),
            parts.directory.handlers(),
            self.gossip.handlers(),
        ):
            self.dispatcher.add(table)
        await self.peer.start()
        parts.migrations.resume()  # moves a crash interrupted
        limits = HttpLimits(c.max_uploads, c.body_timeout, c.header_timeout)
        self._http_runner = await start_http(self, c.bind_host, c.http_port, limits)
        for loop in (*self.gossip.loops(), parts.directory.republish_loop()):
            self._spawn(loop)
        log.info("node %s up: peer %s, http %s", self.node_id, c.peer_addr, c.http_addr)

    def _build(self, store: Store) -> NodeParts:
        """The parts, on an open store; no await: nothing can call in half-way."""
        c = self.config
        service = ObjectService(store, self)
        names = Namespace(
            self, service, cluster_id=c.cluster_id, seeds=c.seeds, peer_addr=c.peer_addr
        )
        names.startup()  # the root, if it is ours to create
        migrations = Migrations(c.data_dir, service, self)
        graph = GraphAgent(self, service, names)
        if c.prefetch_neighbours > 0:
            service.on_fetched = graph.prefetch_neighbours(c.prefetch_neighbours)
        if c.security:
            self._setup_security(service)
        runner = self._code_runner(store)
        code = CodeExecutor(self, service, graph, runner, max_timeout=c.code_max_timeout)
        directory = LocationDirectory(
            self.node_id,
            service,
            self.gossip,
            copies=c.directory_copies,
            settle=c.heartbeat_interval,
            shard=self.shard,
            cache=self.locations,
            stats=self.stats,
            spawn=self._spawn,
        )
        return NodeParts(store, service, names, migrations, graph, code, directory)

    def _code_runner(self, store: Store) -> CodeRunner:
        """Workers that run code as its callers, confined (docs/SECURITY.md §11): they
        must not open the node's data and keys, nor reach its port."""
        c = self.config
        store_dir, keys = c.data_dir / "store", c.keys_folder
        protect = (c.data_dir, store_dir, store_dir / "STORE", store_dir / "wal.log")
        secrets = (keys, keys / "admin.id", keys / f"node-{self.node_id}.id")
        url = urlsplit(c.http_url)
        host = StoreCodeHost(
            store,
            lambda caller_of: build_code_app(
                self, caller_of, HttpLimits(c.max_uploads, c.body_timeout, c.header_timeout)
            ),
            lambda: self.access,
        )
        return CodeRunner(
            host,
            limits=CodeLimits(
                c.code_workers, c.code_per_caller, memory=c.code_memory, cpu=c.code_cpu
            ),
            isolation=Isolation(
                uid=c.code_uid,
                protect=(*protect, *secrets),
                probe=(url.hostname or "127.0.0.1", url.port or c.http_port),
                allow_unisolated=c.allow_unisolated_code,
            ),
        )

    def _setup_security(self, service: ObjectService) -> None:
        """Keys (made on first start, this node admitted), CurveZMQ on the peer
        endpoint and the access policy."""
        folder = self.config.keys_folder
        admitted = keyfiles.ensure_keys(folder, [self.node_id], curve_keypair)
        mine = keyfiles.NodeKeys.load(folder, self.node_id)

        async def read_key(kuid: ObjectId) -> bytes:
            # key objects only, and never a copy: where the directory says it lives (a
            # kuid the directory does not know is no key: no member is asked), then the
            # ID-checked header (local, a copy held, or one small fetch from the home,
            # no copy kept), then the record by range
            if not service.is_home(kuid) and service.copies.peek(kuid) is None:
                await self.directory.locate(kuid, ask_everyone=False)
            header = await service.header_of(kuid)
            if not is_key_header(header):
                raise ObjectNotFound(f"object {kuid} is not a key object")
            try:
                obj = service.get(kuid)  # here already: no round trip
            except ObjectNotFound:
                data, _, _ = await service.fetcher.read_range(kuid, DATA_START, header.data_len)
                return bytes(data)
            return bytes(obj.read(DATA_START, header.data_len))

        access = self.access = Access(
            self.node_id,
            admitted,
            KeyRing(admitted.trusted, read_key),
            service.header_of,
            cluster_id=self.config.cluster_id,
        )
        c = self.config
        self.quotas = Quotas(
            self.node_id,
            Limits(c.quota_objects, c.quota_bytes, c.max_keys),
            open_enrollment=c.open_enrollment,
            exempt=access.is_trusted,
            members=lambda: max(len(access.admitted.curve_clients), len(self.alive_ids())),
        )
        self.quotas.scan(service.store)  # before anything is served
        service.home.usage = self.quotas
        self.peer.curve = Curve(
            mine.curve_server[0], mine.curve_server[1], mine.curve[0], mine.curve[1], self._admits
        )

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
        await self.gossip.leave()
        parts = self._parts
        if parts is not None:
            await parts.migrations.close()
            await parts.code.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        await self.peer.close()
        if parts is not None:
            parts.service.close()
            parts.store.close()

    async def __aenter__(self) -> Node:
        await self.startup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _member_gone(self, node_id: str) -> None:
        """A member died, left or came back: what this node kept about it is stale."""
        self.locations.drop_home(node_id)
        if self._parts is not None:
            self._parts.service.copies.drop_home(node_id)
            self._parts.service.drop_holder(node_id)

    def _membership_changed(self) -> None:
        if self._parts is not None:
            self._parts.directory.wanted.set()

    # -- the cluster, as the parts see it -------------------------------------------

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        """Send to a member by node ID (``HomeUnreachable`` if it is not a live member)."""
        return await self.gossip.request(node_id, message, timeout)

    def alive_ids(self) -> list[str]:
        return self.gossip.alive_ids()

    def is_alive(self, node_id: str) -> bool:
        return self.gossip.is_alive(node_id)

    def is_member(self, node_id: str) -> bool:
        return node_id == self.node_id or self.membership.get(node_id) is not None

    def member_at(self, peer_addr: str) -> tuple[str, int] | None:
        """(node ID, state) of the member whose peer address is ``peer_addr``, if any."""
        return self.gossip.member_at(peer_addr)

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord:
        return await self.directory.locate(oid, refresh=refresh)

    async def describe(self, oid: ObjectId, *, refresh: bool = False) -> Location:
        """Where an object lives, with the home's own version and list of copy holders."""
        return await self.directory.describe(oid, refresh=refresh)

    def learn_location(self, record: HomeRecord) -> None:
        """A home said where an object went (a migration): cache it (higher epoch wins)."""
        self.directory.learn(record)

    def hint_location(self, oid: ObjectId, home: str) -> bool:
        """A guess where ``oid`` lives, taken only while nothing better is known."""
        return self.directory.hint(oid, home)

    async def publish_created(self, record: HomeRecord) -> None:
        await self.directory.publish(record)

    async def republish(self) -> int:
        """Send every record this node homes to its current directory owners."""
        return await self.directory.republish()

    async def migrate(self, m: Migrate) -> Migrated:
        """Move objects homed here to another node (``dtwz.node.migration``)."""
        return await self.migrations.on_migrate(m)

    def pinned(self, oid: ObjectId) -> bool:
        """Objects that never migrate: directories keep the namespace's homing rules."""
        if oid == self.names.root:
            return True
        head = self.store.get(oid).read(DATA_START, len(DIRECTORY_MAGIC))
        return bytes(head) == DIRECTORY_MAGIC

    # -- status ----------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Joined the cluster and serving (``GET /ready``)."""
        return self.joined.is_set() and self._parts is not None

    def status(self) -> dict[str, Any]:
        p = self.parts
        members = [
            {
                "node_id": m.node_id,
                "state": MemberState(m.state).label,
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
            "objects": sum(1 for _ in p.store.object_ids()),  # homed here
            "directory_records": len(self.shard),
            "copies": len(p.service.copies),
            "cache": dict(p.service.copies.stats),
            "service": dict(p.service.stats),
            "store": dict(p.store.stats),
            "peer": dict(self.peer.stats),
            "node": dict(self.stats),
            "access": dict(self.access.stats) if self.access is not None else {},
            "quotas": self.quotas.stats() if self.quotas is not None else {},
            "names": p.names.status(),
            "graph": dict(p.graph.stats),
            "code": p.code.status(),
            "migrations": dict(p.migrations.stats),
            "root": p.names.root.hex(),
        }


async def run_node(config: NodeConfig) -> None:
    """Start a node and serve until SIGTERM or SIGINT."""
    node = Node(config)
    await node.startup()
    try:
        await node.serve()
    finally:
        await node.shutdown()
