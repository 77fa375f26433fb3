"""Who sees what in a walk, in one process (docs/GRAPH.md "Who sees what"): the
access rule a holder applies per object (``Access.read_rule``), who may know that
an object exists (``Access.sees``), and the walk itself over two real stores whose
holders are real ``GraphAgent``s, linked by a fake cluster.

The same, end to end on node processes: tests/graph/test_graph_privacy.py.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz.errors import ObjectNotFound
from dtwz.format.ids import ZERO_ID, ObjectId, new_nonce
from dtwz.format.layout import DATA_START, ObjectHeader, new_header
from dtwz.graph.agent import NO_LIMIT, NOBODY, Caller, GraphAgent, image_bytes
from dtwz.node.access import Access, KeyRing
from dtwz.node.location_directory import nowhere
from dtwz.security.capabilities import Capability, Gate, Rights, grant
from dtwz.security.keyfiles import Admitted
from dtwz.security.keys import Identity
from dtwz.service.objects import ObjectService
from dtwz.store.store import Store
from dtwz.wire.messages import (
    EdgeUses,
    GraphExpand,
    HomeRecord,
    Message,
    Migrate,
    Migrated,
    WalkStart,
)

ADMIN, BOB, OWNER = (Identity.generate(n) for n in ("admin", "bob", "owner"))
NEXT = DATA_START + 8
HOUR = 3600


def _access(header_of: object) -> Access:
    admitted = Admitted(ADMIN.kuid, {ADMIN.kuid: ADMIN.public_key}, frozenset(), b"", {})

    async def no_key_objects(kuid: ObjectId) -> bytes:
        raise ObjectNotFound(str(kuid))

    keys = KeyRing(admitted.trusted, no_key_objects)
    keys.add(OWNER.public_key)
    keys.add(BOB.public_key)
    return Access("n1", admitted, keys, header_of)  # type: ignore[arg-type]


# -- the rule ------------------------------------------------------------------------------


def _header(kuid: ObjectId, prot: int) -> ObjectHeader:
    return new_header(new_nonce(), kuid, 0, prot, 8192)


def _expiry(seconds: int = HOUR) -> int:
    return int(time.time()) + seconds


async def test_the_read_rule_a_walk_applies() -> None:
    mine, public, private, unowned = (
        _header(BOB.kuid, 0),
        _header(OWNER.kuid, int(Rights.READ)),
        _header(OWNER.kuid, 0),
        _header(ZERO_ID, 0),
    )
    access = _access(None)

    def sees(rule: object, h: ObjectHeader) -> bool:
        return rule(h.object_id, h.kuid, h.default_prot)  # type: ignore[operator,no-any-return]

    admin = await access.read_rule(ADMIN.kuid)
    assert admin.trusted and sees(admin, private) and sees(admin, unowned)
    bob = await access.read_rule(BOB.kuid)
    assert not bob.trusted
    assert sees(bob, mine) and sees(bob, public)
    assert not sees(bob, private) and not sees(bob, unowned)
    nobody = await access.read_rule(ZERO_ID)  # owns nothing, not even what nobody owns
    assert sees(nobody, public) and not sees(nobody, unowned) and not sees(nobody, mine)

    oid = private.object_id
    cases: list[tuple[Capability, bool]] = [
        (grant(OWNER, oid, BOB.kuid, Rights.READ, _expiry()), True),
        (grant(OWNER, oid, BOB.kuid, Rights.READ | Rights.WRITE, _expiry()), True),
        (grant(OWNER, oid, BOB.kuid, Rights.WRITE, _expiry()), False),
        (grant(OWNER, oid, BOB.kuid, Rights.READ, _expiry(), Gate(DATA_START, 8)), False),
        (grant(OWNER, oid, BOB.kuid, Rights.READ, int(time.time()) - 1), False),
        (grant(OWNER, oid, ADMIN.kuid, Rights.READ, _expiry()), False),  # someone else's
        (grant(BOB, oid, BOB.kuid, Rights.READ, _expiry()), False),  # not the owner's
        (grant(OWNER, public.object_id, BOB.kuid, Rights.READ, _expiry()), False),
    ]
    for cap, readable in cases:
        assert sees(await access.read_rule(BOB.kuid, [cap]), private) == readable, cap


async def test_who_may_know_that_an_object_exists() -> None:
    headers = {h.object_id: h for h in (_header(OWNER.kuid, 0), _header(OWNER.kuid, 1))}
    private, public = list(headers)

    async def header_of(oid: ObjectId) -> ObjectHeader:
        if oid not in headers:
            raise nowhere(oid)
        return headers[oid]

    access = _access(header_of)
    assert await access.sees(ADMIN.kuid, private)
    assert await access.sees(OWNER.kuid, private)
    assert await access.sees(BOB.kuid, public)
    assert not await access.sees(BOB.kuid, private)
    genuine = grant(OWNER, private, BOB.kuid, Rights.WRITE, int(time.time()) - 1)
    assert await access.sees(BOB.kuid, private, [genuine])  # the owner told him of it
    forged = grant(BOB, private, BOB.kuid, Rights.READ, _expiry())
    assert not await access.sees(BOB.kuid, private, [forged])
    raw = bytearray(genuine.encode())
    raw[6] = int(Rights.READ)  # the rights field, under the owner's signature
    assert not await access.sees(BOB.kuid, private, [Capability.decode(bytes(raw))])
    with pytest.raises(ObjectNotFound, match="no node of the cluster holds"):
        await access.sees(BOB.kuid, ObjectId(os.urandom(16)))
    assert await access.sees(ADMIN.kuid, ObjectId(os.urandom(16)))  # the admin: no look


# -- walks over two stores -------------------------------------------------------------------


class _Cluster:
    """Two nodes in one process: each store's objects are homed where they are."""

    def __init__(self, node_id: str, nodes: dict[str, _Node]) -> None:
        self.node_id = node_id
        self.nodes = nodes
        self.access: Access | None = None

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord:
        for node_id, node in self.nodes.items():
            if node.store.exists(oid):
                return HomeRecord(oid, node_id, 0, 1)
        raise nowhere(oid)

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        agent = self.nodes[node_id].agent
        if isinstance(message, GraphExpand):
            return await agent.on_expand(message)
        assert isinstance(message, EdgeUses)
        return await agent.on_edge_uses(message)

    def alive_ids(self) -> list[str]:
        return sorted(self.nodes)

    async def migrate(self, m: Migrate) -> Migrated:
        raise AssertionError("no migrations here")

    async def publish_created(self, record: HomeRecord) -> None:
        pass

    def learn_location(self, record: HomeRecord) -> None:
        pass


@dataclasses.dataclass
class _Node:
    store: Store
    service: ObjectService
    agent: GraphAgent


@dataclasses.dataclass
class _World:
    n1: _Node
    n2: _Node
    root: ObjectId  # bob's, on n1 -> hidden (n1), x (missing), remote (n2)
    hidden: ObjectId  # the owner's, prot 0, on n1 -> beyond
    beyond: ObjectId  # bob's, on n1: reachable only through hidden
    remote: ObjectId  # the owner's, prot 0, on n2
    x: ObjectId


def _make(tmp_path: Path, security: bool = True) -> _World:
    nodes: dict[str, _Node] = {}
    clusters = []
    for node_id in ("n1", "n2"):
        store = Store.open(tmp_path / node_id, create=True, durable=False)
        cluster = _Cluster(node_id, nodes)
        clusters.append(cluster)
        service = ObjectService(store, cluster)
        nodes[node_id] = _Node(store, service, GraphAgent(cluster, service, None))

    async def header_of(oid: ObjectId) -> ObjectHeader:
        for node in nodes.values():
            if node.store.exists(oid):
                return node.store.get(oid).header()
        raise nowhere(oid)

    if security:
        for cluster in clusters:
            cluster.access = _access(header_of)

    def make(store: Store, kuid: ObjectId, value: int) -> ObjectId:
        with store.transaction() as tx:
            oid = tx.create(8192, kuid=kuid, default_prot=0)
            tx.append(oid, struct.pack("<QQQQ", value, 0, 0, 0))
        return oid

    s1, s2 = nodes["n1"].store, nodes["n2"].store
    root, hidden, beyond = make(s1, BOB.kuid, 1), make(s1, OWNER.kuid, 2), make(s1, BOB.kuid, 3)
    remote, x = make(s2, OWNER.kuid, 4), ObjectId(os.urandom(16))
    with s1.transaction() as tx:
        for i, target in enumerate((hidden, x, remote)):
            tx.write_pointer(root, NEXT + 8 * i, target, DATA_START)
        tx.write_pointer(hidden, NEXT, beyond, DATA_START)
    return _World(nodes["n1"], nodes["n2"], root, hidden, beyond, remote, x)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[_World]:
    made = _make(tmp_path)
    yield made
    made.n1.store.close()
    made.n2.store.close()


BOB_WALKS = Caller(BOB.kuid)


async def test_a_holder_hides_only_what_it_was_asked_about(world: _World) -> None:
    w, agent = world, world.n1.agent
    ask = GraphExpand(b"w1", [WalkStart(w.root, 0)], NO_LIMIT, 0, False, BOB.kuid, [])
    part = await agent.on_expand(ask)
    assert [o.object_id for o in part.objects] == [w.root]
    # met on the way: back to the coordinator, as the missing x and the remote object
    assert {f.object_id for f in part.frontier} == {w.hidden, w.x, w.remote}
    assert part.hidden == [] and part.counted == 1
    again = GraphExpand(b"w1", [WalkStart(w.hidden, 1)], NO_LIMIT, 0, False, BOB.kuid, [])
    part = await agent.on_expand(again)
    assert part.hidden == [WalkStart(w.hidden, 1)]
    assert part.objects == [] and part.edges == [] and part.frontier == []
    assert part.counted == 0 and part.counted_bytes == 0


async def test_a_walk_shows_hidden_and_missing_alike(world: _World) -> None:
    w = world
    g = await w.n2.agent.walk(w.root, caller=BOB_WALKS)
    assert set(g.nodes) == {o.hex() for o in (w.root, w.hidden, w.x, w.remote)}
    for oid in (w.hidden, w.x, w.remote):
        assert g.nodes[oid.hex()] == {"kind": "hidden", "depth": 1}
    # hidden nodes come last, by depth then ID: their place says nothing
    assert list(g.nodes)[1:] == sorted(o.hex() for o in (w.hidden, w.x, w.remote))
    assert g.graph["homes"] == ["n1"]

    nobody = await w.n1.agent.walk(w.root)  # no caller: nobody, who sees nothing here
    assert list(nobody.nodes) == [w.root.hex()]
    assert nobody.nodes[w.root.hex()] == {"kind": "hidden", "depth": 0}

    admin = await w.n1.agent.walk(w.root, caller=Caller(ADMIN.kuid))
    for oid in (w.root, w.hidden, w.beyond, w.remote):
        assert admin.nodes[oid.hex()]["kind"] == "object"
    assert admin.nodes[w.x.hex()]["kind"] == "missing"


async def test_a_budget_drops_hidden_and_missing_alike(world: _World) -> None:
    w = world
    header = w.n1.store.get(w.root).header()
    budget = image_bytes(header.data_len, header.fot_count)  # the root's bytes: spent at once
    g = await w.n1.agent.walk(w.root, budget=budget, caller=BOB_WALKS)
    assert list(g.nodes) == [w.root.hex()] and g.graph["truncated"]


async def test_a_capability_travels_to_the_holder(world: _World) -> None:
    w = world
    cap = grant(OWNER, w.remote, BOB.kuid, Rights.READ, _expiry())
    g = await w.n1.agent.walk(w.root, caller=Caller(BOB.kuid, (cap,)))
    assert g.nodes[w.remote.hex()]["kind"] == "object"
    assert g.nodes[w.remote.hex()]["home"] == "n2"
    assert g.nodes[w.hidden.hex()]["kind"] == "hidden"


async def test_a_summary_counts_only_what_the_caller_may_read(world: _World) -> None:
    w = world

    def size(node: _Node, oid: ObjectId) -> int:
        h = node.store.get(oid).header()
        return image_bytes(h.data_len, h.fot_count)

    by_home, objects, cut = await w.n1.agent.summarize(w.root, caller=BOB_WALKS)
    assert (by_home, objects, cut) == ({"n1": size(w.n1, w.root)}, 1, False)
    by_home, objects, _ = await w.n1.agent.summarize(w.root, caller=Caller(ADMIN.kuid))
    assert objects == 4
    assert by_home == {
        "n1": sum(size(w.n1, o) for o in (w.root, w.hidden, w.beyond)),
        "n2": size(w.n2, w.remote),
    }
    assert await w.n1.agent.summarize(w.root, caller=NOBODY) == ({}, 0, False)


async def test_with_security_off_nothing_is_hidden(tmp_path: Path) -> None:
    w = _make(tmp_path, security=False)
    try:
        g = await w.n1.agent.walk(w.root, caller=BOB_WALKS)
        kinds = {k: a["kind"] for k, a in g.nodes(data=True)}
        assert kinds == {
            w.root.hex(): "object",
            w.hidden.hex(): "object",
            w.beyond.hex(): "object",
            w.remote.hex(): "object",
            w.x.hex(): "missing",
        }
    finally:
        w.n1.store.close()
        w.n2.store.close()
