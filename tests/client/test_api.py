"""``dtwz.client.api`` against real 3-node clusters on loopback: objects created on every
node and read, written and followed through the others; copies invalidated by
commits; errors raised as the node's types; a forged image refused; a node killed
with -9 and restarted. (Connections and retries: test_transport.py.)"""

from __future__ import annotations

import http.server
import itertools
import os
import re
from typing import Any

import pytest

from dtwz.client import Client, Op
from dtwz.errors import (
    ClusterError,
    CorruptObject,
    HomeUnreachable,
    InvalidArgument,
    ObjectFull,
    ObjectNotFound,
    PeerUnavailable,
    PointerOutOfBounds,
    ReadOnlyObject,
)
from dtwz.format.ids import ObjectId, derive_object_id
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectFlags, new_header
from dtwz.format.pointers import split_pointer
from dtwz.format.views import U64, Layout, Pointer
from dtwz.node.launcher import LocalCluster
from tests.client.conftest import FakeNode
from tests.helpers import ClusterFactory, wait_until

SMALL = 64 << 10


class Cell(Layout):
    value = U64()
    next = Pointer("Cell")


# -- objects anywhere, through any node ----------------------------------------------


def test_objects_created_on_each_node_are_read_through_every_node(
    clients: dict[str, Client],
) -> None:
    created: dict[str, ObjectId] = {}
    for node_id, client in clients.items():
        created[node_id] = client.create(SMALL, f"born on {node_id}".encode())
    for reader in clients.values():
        for node_id, oid in created.items():
            assert reader.read(oid) == f"born on {node_id}".encode()
            assert reader.locate(oid).home == node_id


def test_create_on_another_node_with_node_parameter(clients: dict[str, Client]) -> None:
    oid = clients["n1"].create(SMALL, b"placed", node="n3")
    assert clients["n2"].locate(oid).home == "n3"
    assert clients["n3"].info(oid)["home"] == "n3"
    assert clients["n2"].read(oid) == b"placed"
    with pytest.raises(InvalidArgument, match="no member"):  # a usage error: a 4xx
        clients["n1"].create(SMALL, node="no-such-node")


def test_writes_through_any_node_are_ordered_at_the_home(clients: dict[str, Client]) -> None:
    oid = clients["n1"].create(SMALL, b"0123456789")
    v1 = clients["n3"].write(oid, DATA_START + 2, b"ab")
    offset = clients["n2"].append(oid, b"tail")
    assert offset == DATA_START + 16  # appends are 8-byte aligned
    assert clients["n1"].read(oid, DATA_START, 10) == b"01ab456789"
    assert clients["n3"].read(oid, offset, 4, latest=True) == b"tail"
    assert clients["n1"].info(oid)["version"] == v1 + 1


def test_a_pointer_from_n1_into_n2_is_followed_through_n3(clients: dict[str, Client]) -> None:
    source = clients["n1"].create(SMALL, b"source!!")
    target = clients["n2"].create(SMALL, b"target data")
    at = clients["n1"].append(source, bytes(8))
    word = clients["n3"].write_pointer(source, at, target, DATA_START + 7)
    assert split_pointer(word) == (1, DATA_START + 7)

    reader = clients["n3"]
    reader.refresh(source)
    obj, offset = reader.follow(source, at)
    assert obj.object_id == target and offset == DATA_START + 7
    assert bytes(obj.read(offset, 4)) == b"data"
    again, _ = reader.get(source).follow(word)  # second time: from the cached copies
    assert again is obj
    info = clients["n2"].info(source)
    assert info["fot"][0]["target"] == target.hex()


def test_typed_views_follow_pointers_across_nodes(clients: dict[str, Client]) -> None:
    # a three-cell list, one cell per node, built through n1 only
    builder = clients["n1"]
    cells: list[tuple[ObjectId, int]] = []
    for i, home in enumerate(("n1", "n2", "n3")):
        oid = builder.create(8192, node=home)
        offset = builder.transact([Op.alloc(oid, Cell.SIZE)]).results[0]
        builder.write(oid, offset, (100 + i).to_bytes(8, "little"))
        cells.append((oid, offset))
    for (oid, offset), (next_oid, next_offset) in itertools.pairwise(cells):
        builder.write_pointer(oid, offset + Cell.next.offset, next_oid, next_offset)

    head = clients["n2"].view(Cell, *cells[0])
    values = []
    cell: Cell | None = head
    while cell is not None:
        values.append(cell.value)
        cell = cell.next
    assert values == [100, 101, 102]
    assert head.next.next.object_id == cells[2][0]
    with pytest.raises(InvalidArgument):
        head.value = 5  # client views are read-only


# -- copies and consistency ----------------------------------------------------------


def test_a_commit_at_the_home_invalidates_copies_on_other_nodes(
    clients: dict[str, Client],
) -> None:
    oid = clients["n1"].create(SMALL, b"old bytes")
    assert clients["n2"].read(oid) == b"old bytes"  # n2 now holds a copy
    assert "n2" in clients["n1"].locate(oid).copies
    clients["n1"].write(oid, DATA_START, b"new")
    assert clients["n2"].read(oid) == b"new bytes"  # not latest: still the new bytes


def test_client_copies_are_snapshots_until_latest_or_refresh(clients: dict[str, Client]) -> None:
    oid = clients["n1"].create(SMALL, b"first")
    reader = clients["n3"]
    snapshot = reader.get(oid)
    assert reader.get(oid) is snapshot  # cached
    assert reader.cached(oid) == (snapshot, 1)
    clients["n2"].write(oid, DATA_START, b"FIRST")
    assert bytes(reader.get(oid).read(DATA_START, 5)) == b"first"  # a snapshot
    fresh = reader.get(oid, latest=True)
    assert fresh is not snapshot and bytes(fresh.read(DATA_START, 5)) == b"FIRST"
    reader.refresh(oid)
    assert reader.cached(oid) is None
    assert reader.read(oid, latest=True) == b"FIRST"


def test_a_clients_own_write_drops_its_older_copy(clients: dict[str, Client]) -> None:
    client = clients["n2"]
    oid = client.create(SMALL, b"mine")
    old = client.get(oid)
    client.write(oid, DATA_START, b"MINE")
    new = client.get(oid)
    assert new is not old and bytes(new.read(DATA_START, 4)) == b"MINE"
    assert old.deleted  # pointers cached to it are looked up again


def test_transactions_are_atomic_and_a_repeated_txn_id_applies_once(
    clients: dict[str, Client],
) -> None:
    oid = clients["n2"].create(SMALL)
    ops = [Op.append(oid, b"one"), Op.append(oid, b"two"), Op.write(oid, DATA_START, b"O")]
    txn = os.urandom(16)
    first = clients["n1"].transact(ops, txn_id=txn)
    again = clients["n3"].transact(ops, txn_id=txn)  # a retry through another node
    assert again.results == first.results == [DATA_START, DATA_START + 8, 0]
    assert first.versions == {oid: 2}
    assert clients["n2"].read(oid, latest=True) == b"One\0\0\0\0\0two"
    with pytest.raises(ObjectFull):  # all or nothing
        clients["n2"].transact([Op.append(oid, b"lost"), Op.append(oid, bytes(SMALL))])
    assert clients["n2"].read(oid, latest=True) == b"One\0\0\0\0\0two"


# -- errors --------------------------------------------------------------------------


def test_node_errors_are_raised_as_the_same_types(clients: dict[str, Client]) -> None:
    client = clients["n3"]
    a = clients["n1"].create(8192, b"x")
    b = clients["n2"].create(8192, b"y")
    frozen = clients["n1"].create(8192, b"z", flags=int(ObjectFlags.IMMUTABLE))
    with pytest.raises(ObjectNotFound):
        client.read(ObjectId(bytes(16)))
    with pytest.raises(PointerOutOfBounds):
        client.write(a, 0, b"into the header")
    with pytest.raises(ObjectFull):
        client.append(a, bytes(8192))
    with pytest.raises(ReadOnlyObject):
        client.write(frozen, DATA_START, b"no")
    with pytest.raises(InvalidArgument):
        client.create(5000)
    with pytest.raises(ClusterError, match="one home"):
        client.transact([Op.write(a, DATA_START, b"1"), Op.write(b, DATA_START, b"2")])
    with pytest.raises(InvalidArgument):
        client.read("not an object id")
    assert client.read(a) == b"x"


class _ForgingNode(http.server.BaseHTTPRequestHandler):
    """Serves, for any ID asked, the image of a different (valid) object."""

    def do_GET(self) -> None:
        header = new_header(b"\x01" * 16, bytes(16), 0, 3, 8192)
        body = header.encode().ljust(HEADER_RECORD_SIZE, b"\0")
        self.send_response(200)
        for name, value in (
            ("X-Dtwz-Version", "0"),
            ("X-Dtwz-Home", "evil"),
            ("X-Dtwz-Data-Len", "0"),
            ("X-Dtwz-Fot-Len", "0"),
            ("Content-Length", str(len(body))),
        ):
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_forged_or_damaged_image_is_caught(fake_node: FakeNode) -> None:
    asked = derive_object_id(b"\x02" * 16, bytes(16), 0, 3)
    client = fake_node(_ForgingNode)
    with pytest.raises(CorruptObject, match="when asked for"):
        client.get(asked)
    assert client.cached(asked) is None


# -- failure and restart ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kill_9_of_a_node_and_its_restart(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3)
    with (
        cluster.client("n1") as c1,
        cluster.client("n2") as c2,
        cluster.client("n3") as c3,
    ):
        _kill_9_and_restart(cluster, c1, c2, c3)


def _kill_9_and_restart(cluster: LocalCluster, c1: Client, c2: Client, c3: Client) -> None:
    on1 = c1.create(SMALL, b"homed on n1")
    on2 = c2.create(SMALL, b"homed on n2")
    c2.write(on2, DATA_START, b"HOMED")  # committed before the kill
    assert c3.read(on2) == b"HOMED on n2"  # n3 holds a copy

    cluster.kill("n2")

    # the others keep serving what they home
    assert c3.read(on1, latest=True) == b"homed on n1"
    assert c1.write(on1, DATA_START, b"H") > 1
    # the dead node's objects: a clear error, and the call returns
    with pytest.raises(ClusterError):
        c1.read(on2, latest=True)
    with pytest.raises(ClusterError):
        c3.write(on2, DATA_START, b"lost?")
    with pytest.raises(PeerUnavailable, match=re.escape(cluster.node("n2").url)):
        c2.read(on2)
    # once n2 is declared dead, copies served by it are dropped too
    wait_until(
        lambda: all(
            m["state"] == "dead"
            for c in (c1, c3)
            for m in c.cluster_status()["members"]
            if m["node_id"] == "n2"
        ),
        15.0,
        "n1 and n3 see n2 dead",
    )
    with pytest.raises(HomeUnreachable):
        c3.read(on2)

    cluster.start(["n2"])  # same folder, same ports

    assert c2.read(on2) == b"HOMED on n2"  # its store is intact
    assert c1.read(on2, latest=True) == b"HOMED on n2"
    assert c3.read(on1) == b"Homed on n1"
    c3.write(on2, DATA_START + 6, b"ON")
    assert c1.read(on2, latest=True) == b"HOMED ON n2"
