"""Per-identity quotas against real node processes (docs/SECURITY.md §10): objects
and allocated bytes, counted at each home and limited to the home's share of the
cluster's quota; a refusal is ``QuotaExceeded`` and changes nothing (no object, the
same bytes and version); sparse objects count what they allocate, not their size;
the admin is exempt; migration cannot carry an identity past its share; the count
survives a restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtwz.client.api import Client
from dtwz.errors import MigrationError, QuotaExceeded
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster
from dtwz.security.keys import Identity
from tests.helpers import ClusterFactory, running_cluster

NODES = 3
OBJECTS = 6  # per identity, cluster-wide: 2 per node
BYTES = NODES * (256 << 10)  # per identity, cluster-wide: 256 KiB per node
GIB = 1 << 30


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    args = ("--quota-objects", str(OBJECTS), "--quota-bytes", str(BYTES))
    with running_cluster(NODES, tmp_path_factory.mktemp("quotas"), *args) as started:
        yield started


def enrolled(cluster: LocalCluster, label: str, node: str = "n1") -> Client:
    who = Identity.generate(label)
    cluster.enroll(who)
    return Client(cluster.node(node).url, identity=who, audience=node, timeout=10.0)


def objects_on(cluster: LocalCluster, node: str) -> int:
    with cluster.client(node) as admin:
        return int(admin.cluster_status()["objects"])


def state(cluster: LocalCluster, oid: ObjectId) -> tuple[int, int, bytes]:
    with cluster.client("n1") as admin:
        info = admin.info(oid, latest=True)
        return int(info["version"]), int(info["data_len"]), admin.read(oid, latest=True)


def test_objects_past_the_quota_are_refused_and_nothing_is_created(
    limited: LocalCluster,
) -> None:
    with enrolled(limited, "alice") as alice:
        made = [alice.create(8192, b"a", node="n1") for _ in range(2)]
        before = objects_on(limited, "n1")
        with pytest.raises(QuotaExceeded, match=r"3 objects on node n1.*2 of 6 objects"):
            alice.create(8192, b"one too many", node="n1")
        # the same through another node, whose Create the home refuses
        with Client(limited.node("n2").url, identity=alice.identity, audience="n2") as via:
            with pytest.raises(QuotaExceeded):
                via.create(8192, b"one too many", node="n1")
            # the other nodes' shares are there to use: 2 + 2 + 2 = the cluster's 6
            made += [via.create(8192, b"b", node=n) for n in ("n2", "n2", "n3", "n3")]
            for node in limited.node_ids:
                with pytest.raises(QuotaExceeded):
                    via.create(8192, b"seventh", node=node)
        assert objects_on(limited, "n1") == before
        assert len(set(made)) == OBJECTS
        for oid in made:  # all still there and whole
            assert alice.read(oid, DATA_START, 1) in (b"a", b"b")
    with limited.client("n1") as admin:  # the admin is exempt
        for _ in range(3):
            admin.create(8192, b"admin")
        assert admin.cluster_status()["quotas"]["refused"] >= 2


def test_bytes_are_what_is_allocated_not_the_sparse_size(limited: LocalCluster) -> None:
    share = BYTES // NODES
    with enrolled(limited, "bob") as bob:
        # two objects of 1 GiB each: far beyond the byte quota, but sparse: each
        # counts its header page and what is written
        big = bob.create(GIB, b"x" * 1000, node="n1")
        other = bob.create(GIB, node="n1")
        bob.write(big, DATA_START, b"y" * (share // 2))  # allocates half the share
        before = state(limited, big)
        # past the share: refused, the bytes and version as they were
        with pytest.raises(QuotaExceeded, match="allocated bytes on node n1"):
            bob.write(big, DATA_START + share // 2, b"z" * (share // 2))
        with pytest.raises(QuotaExceeded):
            bob.append(other, b"z" * (share // 2))
        # one byte far into the object allocates everything below it
        with pytest.raises(QuotaExceeded):
            bob.write(other, GIB // 2, b"!")
        assert state(limited, big) == before
        assert int(bob.info(other, latest=True)["data_len"]) == 0
        # a write within what is allocated adds nothing: allowed
        bob.write(big, DATA_START, b"w" * 4096)
        assert bob.read(big, DATA_START, 4, latest=True) == b"wwww"


def test_a_migration_cannot_carry_an_identity_past_a_share(limited: LocalCluster) -> None:
    with enrolled(limited, "carol") as carol:
        at_n1 = [carol.create(8192, b"1", node="n1") for _ in range(2)]
        for _ in range(2):
            carol.create(8192, b"2", node="n2")
        before = objects_on(limited, "n2")
        with pytest.raises(MigrationError, match=r"QuotaExceeded|quota"):
            carol.migrate([at_n1[0]], "n2")
        assert objects_on(limited, "n2") == before
        assert carol.locate(at_n1[0]).home == "n1"
        assert carol.read(at_n1[0], DATA_START, 1, latest=True) == b"1"
        carol.write(at_n1[0], DATA_START, b"3")  # not frozen: the move was abandoned


def test_usage_is_counted_again_at_start(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(1, "--quota-objects", "2")
    who = Identity.generate("dave")
    cluster.enroll(who)
    url = cluster.node("n1").url
    with Client(url, identity=who, audience="n1") as client:
        client.create(8192, b"1")
        client.create(GIB, b"2")
    cluster.stop()
    cluster.start()
    with Client(url, identity=who, audience="n1") as client:
        with pytest.raises(QuotaExceeded):
            client.create(8192, b"3")
        with cluster.client("n1") as admin:
            assert admin.cluster_status()["objects"] >= 2
