"""``dtwz.client.api`` against real 3-node clusters on loopback: objects created on every
node and read, written and followed through the others; copies invalidated by
commits; errors raised as the node's types; a node killed with -9 and restarted."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dtwz.client.api import Client, Op
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
from tests.conftest import ClusterFactory

SMALL = 64 << 10


class Cell(Layout):
    value = U64()
    next = Pointer("Cell")


@pytest.fixture(scope="module")
def clients(cluster3: LocalCluster) -> Iterator[dict[str, Client]]:
    made = {node_id: cluster3.client(node_id) for node_id in cluster3.node_ids}
    yield made
    for client in made.values():
        client.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


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
    with pytest.raises(ClusterError):
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


def test_an_unreachable_node_is_a_clear_error_with_its_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", timeout=2.0) as client,
        pytest.raises(PeerUnavailable, match=re.escape(f"127.0.0.1:{port}")),
    ):
        client.read(ObjectId(bytes(16)))


@pytest.mark.timeout(30)
def test_a_silent_node_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with Client(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) as client:
            with pytest.raises(PeerUnavailable, match=r"no answer within 0\.5s"):
                client.cluster_status()
            with pytest.raises(PeerUnavailable):  # a mutation is retried once, then fails
                client.write(ObjectId(bytes(16)), DATA_START, b"x")


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


@contextlib.contextmanager
def fake_node(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[Client]:
    """A client of an HTTP server that misbehaves in ways a real node cannot be made to."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=5.0) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_forged_or_damaged_image_is_caught() -> None:
    asked = derive_object_id(b"\x02" * 16, bytes(16), 0, 3)
    with fake_node(_ForgingNode) as client:
        with pytest.raises(CorruptObject, match="when asked for"):
            client.get(asked)
        assert client.cached(asked) is None


class _FlakyNode(http.server.BaseHTTPRequestHandler):
    """Closes every connection after one answer (as if its keep-alive timer ran out)
    and drops the first request of each transaction ID without answering."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]] = []  # (method and path, transaction ID)

    def _answer(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # no "Connection: close": the client believes it may reuse it
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:
        self.seen.append((f"GET {self.path}", ""))
        self._answer({"status": "ok", "node_id": "flaky"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        is_transact = self.path == "/transact"
        txn = json.loads(body)["txn_id"] if is_transact else self.headers["X-Dtwz-Txn"]
        request = (f"POST {self.path.split('?')[0]}", txn)
        first = request not in self.seen
        self.seen.append(request)
        if first:
            self.close_connection = True  # applied, say, but the answer is lost
        elif is_transact:
            self._answer({"results": [DATA_START], "versions": {}})
        else:
            self._answer({"id": "11" * 16})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_retries_after_connection_errors_reuse_the_transaction_id() -> None:
    _FlakyNode.seen = []
    with fake_node(_FlakyNode) as client:
        assert client.health()["node_id"] == "flaky"
        assert client.health()["node_id"] == "flaky"  # the kept connection was closed
        assert client.create(8192) == ObjectId(b"\x11" * 16)
        oid = ObjectId(b"\x22" * 16)
        assert client.transact([Op.append(oid, b"x")]).results == [DATA_START]
    for what in ("POST /objects", "POST /transact"):
        txns = [txn for request, txn in _FlakyNode.seen if request == what]
        assert len(txns) == 2 and txns[0] == txns[1] and len(txns[0]) == 32, what


def test_error_json_from_a_node_keeps_its_class() -> None:
    from dtwz.client.api import _error_from, _Response

    body = json.dumps({"error": "HomeUnreachable", "message": "n9 is down"}).encode()
    error = _error_from(_Response(503, {}, body), "http://x")
    assert type(error) is HomeUnreachable and str(error) == "n9 is down"
    unknown = _error_from(_Response(500, {}, b"<html>oops</html>"), "http://x")
    assert type(unknown) is ClusterError and "HTTP 500" in str(unknown)


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
