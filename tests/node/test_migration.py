"""Migration on real node processes (docs/ARCHITECTURE.md, "A migration"): no
write lost or applied twice, stale locations redirected, moves that cannot happen
refused cleanly."""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from dtwz.errors import DtwzError, MigrationError
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster
from tests.helpers import ClusterFactory


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Closes the clients a test opens."""
    with contextlib.ExitStack() as stack:
        yield stack


def test_a_migration_under_concurrent_writes_loses_none(
    make_cluster: ClusterFactory, closing: contextlib.ExitStack
) -> None:
    cluster = make_cluster(3)
    clients = {n: closing.enter_context(cluster.client(n)) for n in cluster.node_ids}
    oid = clients["n2"].create(1 << 20)
    acked: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(node: str, base: int) -> None:
        with cluster.client(node) as client:  # its own location cache goes stale
            i = 0
            while not stop.is_set():
                value = base + i
                try:
                    client.append(oid, struct.pack("<Q", value))
                except DtwzError as exc:
                    failures.append(exc)
                    return
                with lock:
                    acked.append(value)
                i += 1

    threads = [
        threading.Thread(target=writer, args=(n, k << 32))
        for k, n in enumerate(["n1", "n2", "n3", "n1"])
    ]
    for t in threads:
        t.start()
    try:
        for target in ["n3", "n1", "n2", "n3"]:  # move it round while they write
            time.sleep(0.3)
            clients["n1"].migrate([oid], target)
            assert clients["n2"].locate(oid, refresh=True).home == target
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures
    assert len(acked) > 50  # the writers did run through the moves

    data = clients["n2"].read(oid, latest=True)
    values = [v for (v,) in struct.iter_unpack("<Q", data)]
    assert sorted(values) == sorted(acked)  # every acknowledged write, each exactly once
    for node, client in clients.items():  # and every node reads the same bytes
        assert client.read(oid, latest=True) == data, node
    status = clients["n3"].cluster_status()
    assert status["migrations"]["migrated_in"] >= 1


def test_stale_locations_are_redirected_and_the_old_home_may_die(
    make_cluster: ClusterFactory, closing: contextlib.ExitStack
) -> None:
    cluster = make_cluster(3)
    n1, n2, n3 = (closing.enter_context(cluster.client(n)) for n in cluster.node_ids)
    oid = n1.create(8192, b"before")
    assert n3.read(oid) == b"before"  # n3 caches n1 as the home (and holds a copy)
    moved = n2.migrate([oid], "n2")
    assert moved["migrated"][0]["epoch"] == 2

    n3.write(oid, DATA_START, b"after!")  # n3's cached location says n1: redirected
    assert n1.read(oid, latest=True) == b"after!"
    assert n3.locate(oid).home == "n2"
    cluster.kill("n1")  # the old home is gone: the object is not
    assert n3.read(oid, latest=True) == b"after!"
    n3.write(oid, DATA_START, b"again!")
    assert n2.read(oid) == b"again!"


def test_moves_that_cannot_happen_change_nothing(cluster3: LocalCluster) -> None:
    with cluster3.client("n1") as n1:
        oid = n1.create(8192, b"stay")
        with pytest.raises(MigrationError, match="not a live member"):
            n1.migrate([oid], "n9")
        with pytest.raises(MigrationError, match="directory"):
            n1.migrate([n1.root()], "n2")
        assert n1.locate(oid).home == "n1"
        n1.write(oid, DATA_START, b"STAY")  # still takes writes
        assert n1.read(oid) == b"STAY"
        same = n1.migrate([oid], "n1")  # to where it is: nothing to do
        assert same["migrated"][0]["epoch"] == 1


def test_a_migration_survives_a_restart_of_both_homes(
    make_cluster: ClusterFactory, closing: contextlib.ExitStack
) -> None:
    cluster = make_cluster(3)
    n1 = closing.enter_context(cluster.client("n1"))
    oid = n1.create(8192, b"durable")
    n1.migrate([oid], "n3")
    for node in ("n1", "n3"):
        cluster.kill(node)
        cluster.start([node])
    with cluster.client("n2") as n2:
        assert n2.read(oid, latest=True) == b"durable"
        assert n2.locate(oid, refresh=True).home == "n3"
        n2.write(oid, DATA_START, b"DURABLE")
    with cluster.client("n1") as again:
        assert again.read(oid, latest=True) == b"DURABLE"


def test_a_group_from_several_homes_arrives_whole(cluster3: LocalCluster) -> None:
    """One call moving objects of three homes: three moves, none taken for a retry
    of another (each object is at the new home with its bytes, none is lost)."""
    with cluster3.client("n1") as n1:
        ids = [
            n1.create(8192, f"item {i}".encode(), node=home)
            for i, home in enumerate(["n1", "n2", "n3", "n1"])
        ]
        objects_before = _objects_per_node(cluster3)
        n1.migrate(ids, "n2")
        for i, oid in enumerate(ids):
            assert n1.locate(oid, refresh=True).home == "n2"
            assert n1.read(oid, latest=True) == f"item {i}".encode()
        objects_after = _objects_per_node(cluster3)
        assert sum(objects_after.values()) == sum(objects_before.values())
        assert objects_after["n2"] == objects_before["n2"] + 3


def _objects_per_node(cluster: LocalCluster) -> dict[str, int]:
    counts = {}
    for node in cluster.node_ids:
        with cluster.client(node) as client:
            counts[node] = int(client.cluster_status()["objects"])
    return counts
