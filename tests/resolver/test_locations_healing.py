"""The location directory heals itself when members die and join (real node processes).

With one directory copy per record, a dead member takes its records with it; the
homes must publish them again to the records' new owners. The sum of directory
records over the live members tells whether every object is known again.
"""

from __future__ import annotations

from typing import Any

import pytest

from dtwz.client.api import Client
from dtwz.format.ids import ObjectId
from dtwz.node.launcher import LocalCluster
from tests.helpers import ClusterFactory, wait_until

OBJECTS_PER_NODE = 30
POLL = 0.1  # seconds between checks: each check asks every node for its status


def status(cluster: LocalCluster, node_id: str) -> dict[str, Any]:
    with cluster.client(node_id) as client:
        return client.cluster_status()


def directory_total(cluster: LocalCluster, node_ids: list[str]) -> int:
    return sum(status(cluster, n)["directory_records"] for n in node_ids)


def lookups_of(client: Client) -> int:
    return int(client.cluster_status()["node"].get("broadcast_lookups", 0))


@pytest.mark.timeout(120)
def test_directory_records_move_to_new_owners_after_a_death_and_a_join(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(4, "--directory-copies", "1")
    ids = cluster.node_ids
    homes: dict[str, list[ObjectId]] = {}
    for n in ids:
        with cluster.client(n) as client:
            homes[n] = [client.create(8192, n.encode()) for _ in range(OBJECTS_PER_NODE)]
    total = OBJECTS_PER_NODE * len(ids) + 1  # and the namespace's root directory, on n1
    # (>=: a shard keeps records it held under an older membership; lookups use owners)
    wait_until(
        lambda: directory_total(cluster, ids) >= total, 10, "every record is published", every=POLL
    )

    survivors = ids[:3]

    def republished(node_id: str) -> int:
        return int(status(cluster, node_id)["node"].get("republishes", 0))

    def republished_without_n4(node_id: str) -> bool:
        node = status(cluster, node_id)["node"]
        return int(node.get("republish_members", 0)) == len(survivors)

    before_kill = {n: republished(n) for n in survivors}
    cluster.kill("n4")
    wait_until(
        lambda: (
            all(
                m["state"] == "dead"
                for m in status(cluster, "n1")["members"]
                if m["node_id"] == "n4"
            )
            and all(
                republished(n) > before_kill[n] and republished_without_n4(n) for n in survivors
            )
        ),
        20,
        "n4 is declared dead and every survivor has published its records again",
        every=POLL,
    )
    # every surviving object is found through the directory, not by asking everyone
    with cluster.client("n3") as reader:
        before = lookups_of(reader)
        for home in survivors:
            for oid in homes[home]:
                assert reader.locate(oid, refresh=True).home == home
        assert lookups_of(reader) == before

        cluster.start(["n4"])  # its store is intact; it publishes its records again
        wait_until(
            lambda: (
                directory_total(cluster, ids) >= total
                and all(
                    m["state"] == "alive"
                    for n in survivors
                    for m in status(cluster, n)["members"]
                    if m["node_id"] == "n4"
                )
            ),
            20,
            "n4's records are back and every survivor sees n4 alive again",
            every=POLL,
        )
        for oid in homes["n4"]:
            assert reader.locate(oid, refresh=True).home == "n4"
            assert reader.read(oid, latest=True) == b"n4"
