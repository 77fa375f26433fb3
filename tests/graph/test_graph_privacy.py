"""Nothing leaks through the graph or the location directory (docs/SECURITY.md §9,
docs/GRAPH.md "Who sees what"), on real node processes with security on.

The admin makes objects with protections 0 on three nodes and links them; a
second identity, bob, links his own objects to them and walks, prefetches, draws
and locates. To bob an object he may not read is ``hidden`` (no size, version,
copies, edges or names), exactly as an ID no node holds is, and nothing reachable
only through it shows; the admin still sees everything.
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from dtwz.client.api import Client
from dtwz.errors import ObjectNotFound
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph import model, render
from dtwz.node.launcher import LocalCluster
from dtwz.security.auth import body_sha256, sign_request
from dtwz.security.capabilities import Capability, Gate, Rights, grant
from dtwz.security.keys import Identity
from tests.helpers import running_cluster

SIZE = 8192
SLOTS = DATA_START + 8  # item: value u64, then pointer slots of 8 bytes each
SECRET_NAME = "/privacy/secret-name"
NODES = ("n1", "n2", "n3")


def _item(value: int) -> bytes:
    return struct.pack("<Q", value) + bytes(8 * 6)


def _slot(i: int) -> int:
    return SLOTS + 8 * i


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(3, tmp_path_factory.mktemp("privacy")) as started:
        yield started


@pytest.fixture(scope="module")
def bob(cluster: LocalCluster) -> Identity:
    who = Identity.generate("bob")
    cluster.enroll(who)  # with the admin's consent (docs/SECURITY.md §10)
    return who


def as_bob(cluster: LocalCluster, bob: Identity, node: str, *caps: Capability) -> Client:
    client = Client(cluster.node(node).url, identity=bob, audience=node, timeout=20.0)
    for cap in caps:
        client.add_capability(cap)
    return client


@dataclass(frozen=True)
class World:
    """bob's b0 (n1) -> b1 (n3), a1 (n2), a3 (n1), x (no such object);
    the admin's a1 (n2) -> a2 (n3) -> b2 (bob's, n1), a1 -> p (readable by all, n1),
    a1 -> SECRET_NAME (bound to p). Only b0 and b1 are readable by bob on his way."""

    b0: ObjectId
    b1: ObjectId
    b2: ObjectId
    a1: ObjectId
    a2: ObjectId
    a3: ObjectId
    p: ObjectId
    x: ObjectId


@pytest.fixture(scope="module")
def world(cluster: LocalCluster, bob: Identity) -> World:
    x = ObjectId(os.urandom(16))
    with cluster.client("n1") as admin, as_bob(cluster, bob, "n1") as b:
        a1 = admin.create(SIZE, _item(1), node="n2", prot=0)
        a2 = admin.create(SIZE, _item(2), node="n3", prot=0)
        a3 = admin.create(SIZE, _item(3), node="n1", prot=0)
        p = admin.create(SIZE, _item(4), node="n1", prot=int(Rights.READ))
        b0 = b.create(SIZE, _item(10), node="n1", prot=0)
        b1 = b.create(SIZE, _item(11), node="n3", prot=0)
        b2 = b.create(SIZE, _item(12), node="n1", prot=0)
        admin.mkdir("/privacy", parents=True)
        admin.bind(SECRET_NAME, p)
        admin.write_pointer(a1, _slot(0), a2)
        admin.write_pointer(a1, _slot(1), p)
        admin.write_name_pointer(a1, _slot(2), SECRET_NAME)
        admin.write_pointer(a2, _slot(0), b2)
        b.write_pointer(b0, _slot(0), b1)
        b.write_pointer(b0, _slot(1), a1)
        b.write_pointer(b0, _slot(2), a3)
        b.write_pointer(b0, _slot(3), x)
    return World(b0, b1, b2, a1, a2, a3, p, x)


def _swap(text: str, *pairs: tuple[ObjectId, ObjectId]) -> str:
    """``text`` with each first ID written as the second (drawings show 8 digits)."""
    for a, b in pairs:
        text = text.replace(a.hex(), b.hex()).replace(a.hex()[:8], b.hex()[:8])
    return text


def _doc(client: Client, root: ObjectId, **kwargs: Any) -> str:
    return json.dumps(model.to_json(client.walk(root, **kwargs)), sort_keys=False)


def _raw(
    cluster: LocalCluster, who: Identity, node: str, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """One signed request, as on the wire: status and JSON body."""
    headers = sign_request(who, method, path, body_sha256(body), time.time(), audience=node)
    url = urlsplit(cluster.node(node).url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


# -- what bob sees ---------------------------------------------------------------------


def test_unreadable_objects_are_hidden_and_nothing_beyond_them_shows(
    cluster: LocalCluster, bob: Identity, world: World
) -> None:
    w = world
    for node in NODES:
        with as_bob(cluster, bob, node) as b:
            g = b.walk(w.b0)
            text = _doc(b, w.b0)
        assert set(g.nodes) == {o.hex() for o in (w.b0, w.b1, w.a1, w.a3, w.x)}, node
        assert g.nodes[w.b0.hex()]["kind"] == g.nodes[w.b1.hex()]["kind"] == "object"
        for hidden in (w.a1, w.a3, w.x):  # unreadable (two homes) and missing alike
            assert g.nodes[hidden.hex()] == {"kind": "hidden", "depth": 1}
            assert not g.out_degree(hidden.hex())
            assert g.edges[w.b0.hex(), hidden.hex()]["uses"] == 0
        # reachable only through hidden objects: neither the admin's nor bob's own
        for beyond in (w.a2, w.b2, w.p):
            assert beyond.hex() not in text
        assert "privacy" not in text and "secret" not in text
        assert g.graph["homes"] == ["n1", "n3"]
        assert g.graph["bytes"] == sum(g.nodes[o.hex()]["bytes"] for o in (w.b0, w.b1))
        assert not g.graph["truncated"]


def test_a_hidden_object_and_a_missing_id_look_the_same(
    cluster: LocalCluster, bob: Identity, world: World
) -> None:
    w = world
    with as_bob(cluster, bob, "n1") as b:
        # two objects of bob's alike, one pointing at the admin's a1, one at nothing;
        # on a1's home (n2: the holder hides it itself) and elsewhere (n1)
        for home in ("n2", "n1"):
            to_hidden = b.create(SIZE, _item(20), node=home, prot=0)
            to_missing = b.create(SIZE, _item(20), node=home, prot=0)
            b.write_pointer(to_hidden, _slot(0), w.a1)
            b.write_pointer(to_missing, _slot(0), w.x)
            with cluster.client("n3") as admin:  # an edge use, counted for the admin
                admin.get_linked(w.a1, to_hidden)
                assert admin.walk(to_hidden).edges[to_hidden.hex(), w.a1.hex()]["uses"] == 1
            for node in NODES:
                with as_bob(cluster, bob, node) as asker:
                    seen = _doc(asker, to_hidden)
                    assert _swap(seen, (to_hidden, to_missing), (w.a1, w.x)) == _doc(
                        asker, to_missing
                    ), (home, node)

        # the root itself, in every format the node draws
        for node in NODES:
            with as_bob(cluster, bob, node) as asker:
                assert _swap(_doc(asker, w.a1), (w.a1, w.x)) == _doc(asker, w.x)
                for fmt in render.FORMATS:
                    drawn = asker.graph_view(w.a1, fmt)
                    assert _swap(drawn, (w.a1, w.x)) == asker.graph_view(w.x, fmt), fmt
        g = b.walk(w.a1)
        assert list(g.nodes) == [w.a1.hex()]
        assert g.nodes[w.a1.hex()] == {"kind": "hidden", "depth": 0}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/locate/{}"),
        ("GET", "/locate/{}?refresh=1"),
        ("GET", "/objects/{}"),
        ("GET", "/objects/{}/data"),
        ("GET", "/objects/{}/data?offset=4096&length=8"),
        ("GET", "/objects/{}/image"),
        ("PUT", "/objects/{}/data?offset=4096"),
        ("POST", "/objects/{}/append"),
    ],
)
def test_locate_and_reads_answer_for_a_hidden_object_as_for_a_missing_one(
    cluster: LocalCluster, bob: Identity, world: World, method: str, path: str
) -> None:
    w = world
    with cluster.client("n3") as admin:
        before = admin.info(w.a2, latest=True)["version"]
    body = b"bob" if method != "GET" else b""
    for node in NODES:
        hidden = _raw(cluster, bob, node, method, path.format(w.a2.hex()), body)
        missing = _raw(cluster, bob, node, method, path.format(w.x.hex()), body)
        assert hidden[0] == missing[0] == 404, (node, hidden, missing)
        assert _swap(json.dumps(hidden[1]), (w.a2, w.x)) == json.dumps(missing[1])
        assert hidden[1]["error"] == "ObjectNotFound"
    with cluster.client("n3") as admin:  # nothing changed
        assert admin.info(w.a2, latest=True)["version"] == before
        assert admin.locate(w.a2).home == "n3"


def test_a_reader_learns_why_it_is_refused(
    cluster: LocalCluster, bob: Identity, world: World
) -> None:
    """A caller who may read an object knows it exists: other refusals stay 403."""
    status, doc = _raw(cluster, bob, "n1", "PUT", f"/objects/{world.p.hex()}/data?offset=4096")
    assert status == 403 and doc["error"] == "AccessDenied"
    with as_bob(cluster, bob, "n2") as b:
        assert b.locate(world.p).home == "n1"
        with pytest.raises(ObjectNotFound, match="no node of the cluster holds"):
            b.locate(world.a3)


# -- capabilities travel with the walk ----------------------------------------------------


def test_a_capability_shows_its_object_to_the_holders(
    cluster: LocalCluster, bob: Identity, world: World
) -> None:
    w = world
    admin_id = cluster.admin
    expiry = int(time.time()) + 600
    reads_a1 = grant(admin_id, w.a1, bob.kuid, Rights.READ, expiry)
    with as_bob(cluster, bob, "n3", reads_a1) as b:  # a1 lives on n2: n2 checks it
        g = b.walk(w.b0)
        assert g.nodes[w.a1.hex()]["kind"] == "object"
        assert g.nodes[w.a1.hex()]["home"] == "n2"
        assert g.nodes[w.a2.hex()] == {"kind": "hidden", "depth": 2}
        assert g.nodes[w.p.hex()]["kind"] == "object"  # readable by all, reached now
        assert g.edges[w.a1.hex(), w.p.hex()]["name"] == SECRET_NAME
        assert w.b2.hex() not in g  # still only through a2
        assert b.locate(w.a1).home == "n2"
    gated = grant(admin_id, w.a1, bob.kuid, Rights.READ, expiry, Gate(DATA_START, 8))
    with as_bob(cluster, bob, "n3", gated) as b:  # a part of it is not all of it
        assert b.walk(w.b0).nodes[w.a1.hex()] == {"kind": "hidden", "depth": 1}
        assert b.read(w.a1, DATA_START, 8) == struct.pack("<Q", 1)


# -- prefetch ------------------------------------------------------------------------------


def test_prefetch_brings_nothing_unreadable(cluster: LocalCluster, bob: Identity) -> None:
    with cluster.client("n1") as admin, as_bob(cluster, bob, "n1") as b:
        secret = admin.create(SIZE, _item(30), node="n1", prot=0)
        deeper = admin.create(SIZE, _item(31), node="n3", prot=int(Rights.READ))
        admin.write_pointer(secret, _slot(0), deeper)
        head = b.create(SIZE, _item(32), node="n1", prot=0)
        tail = b.create(SIZE, _item(33), node="n3", prot=0)
        b.write_pointer(head, _slot(0), tail)
        b.write_pointer(head, _slot(1), secret)
    with as_bob(cluster, bob, "n2") as b:
        result = b.prefetch(head)
        assert result.objects == 2 and result.received == 2
        assert result.fetched_by_node == 2
        assert b.cached(secret) is None and b.cached(deeper) is None
        assert b.cached(head) is not None and b.cached(tail) is not None
    with cluster.client("n1") as admin:
        assert "n2" not in admin.locate(secret, refresh=True).copies
    with cluster.client("n3") as admin:
        assert admin.locate(deeper, refresh=True).copies == ()


# -- the admin -----------------------------------------------------------------------------


def test_the_admin_sees_everything(cluster: LocalCluster, world: World) -> None:
    w = world
    with cluster.client("n2") as admin:
        g = admin.walk(w.b0)
    for oid in (w.b0, w.b1, w.b2, w.a1, w.a2, w.a3, w.p):
        assert g.nodes[oid.hex()]["kind"] == "object"
    assert g.nodes[w.a1.hex()]["version"] >= 1 and g.nodes[w.a1.hex()]["home"] == "n2"
    assert g.nodes[w.x.hex()]["kind"] == "missing" and g.nodes[w.x.hex()]["error"]
    assert g.edges[w.a1.hex(), w.p.hex()]["name"] == SECRET_NAME
    assert g.has_edge(w.a2.hex(), w.b2.hex())


def test_name_entries_resolve_only_through_directories_the_caller_may_read(
    cluster: LocalCluster, bob: Identity, world: World
) -> None:
    w = world
    with cluster.client("n1") as admin:
        admin.mkdir("/closed", prot=0)  # only its owner, the admin, may look names up in it
        admin.bind("/closed/inside", w.b1)  # bob's own object: the name is what is closed
    with as_bob(cluster, bob, "n2") as b:
        source = b.create(SIZE, _item(40), node="n2", prot=0)
        b.write_name_pointer(source, _slot(0), "/closed/inside")
        b.write_name_pointer(source, _slot(1), SECRET_NAME)  # /privacy: readable by all
        g = b.walk(source)
    assert w.b1.hex() not in g  # what the closed name names stays unknown
    closed = g.nodes["name:/closed/inside"]
    assert closed["kind"] == "unresolved" and "may not look names up" in closed["error"]
    assert g.nodes[w.p.hex()]["kind"] == "object"
    assert g.edges[source.hex(), w.p.hex()]["name"] == SECRET_NAME
    with cluster.client("n3") as admin:
        assert admin.walk(source).edges[source.hex(), w.b1.hex()]["name"] == "/closed/inside"
