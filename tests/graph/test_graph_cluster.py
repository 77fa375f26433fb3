"""The object graph on real node processes: walk, prefetch, edge uses, co-location,
code at the data, the web view and the CLI (docs/GRAPH.md).

Migration under load and failures is in tests/node/test_migration.py.
"""

from __future__ import annotations

import json
import random
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from dtwz.cli import cli
from dtwz.client.api import Client
from dtwz.errors import CodeError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph import model
from dtwz.node.launcher import LocalCluster

NEXT = DATA_START + 8  # item layout: value u64 | next pointer | second pointer | spare
SIZE = 8192


def _items(clients: dict[str, Client], homes: list[str], start: int = 0) -> list[ObjectId]:
    return [
        clients[h].create(SIZE, struct.pack("<QQQQ", start + i, 0, 0, 0))
        for i, h in enumerate(homes)
    ]


def _link(client: Client, source: ObjectId, target: ObjectId, at: int = NEXT) -> None:
    client.write_pointer(source, at, target, DATA_START)


def _fetches(clients: dict[str, Client]) -> int:
    return sum(c.cluster_status()["service"]["fetches_served"] for c in clients.values())


def test_a_walk_of_a_cycle_across_nodes_has_each_object_once(
    clients: dict[str, Client],
) -> None:
    n1 = clients["n1"]
    homes = ["n1", "n2", "n3"] * 4
    ids = _items(clients, homes)
    for i, oid in enumerate(ids):
        _link(n1, oid, ids[(i + 1) % len(ids)])  # a ring: the walk must stop

    for asked in clients.values():
        g = asked.walk(ids[0])
        assert sorted(g.nodes) == sorted(o.hex() for o in ids)
        assert g.number_of_edges() == len(ids)
        for oid, home in zip(ids, homes, strict=True):
            attrs = g.nodes[oid.hex()]
            assert attrs["home"] == home and attrs["kind"] == "object"
            assert attrs["data_len"] == 32 and attrs["max_size"] == SIZE
        assert [g.nodes[o.hex()]["depth"] for o in ids] == list(range(len(ids)))
        assert g.graph["homes"] == ["n1", "n2", "n3"] and not g.graph["truncated"]
        assert all(a["cross"] for _, _, a in g.edges(data=True))
        assert model.cross_edges(g) == len(ids)


def test_a_walk_of_a_shared_diamond_and_limits(clients: dict[str, Client]) -> None:
    n2 = clients["n2"]
    a, b, c, d = _items(clients, ["n1", "n2", "n3", "n1"])
    _link(n2, a, b)
    _link(n2, a, c, NEXT + 8)  # a second pointer in a
    _link(n2, b, d)
    _link(n2, c, d)
    _link(n2, d, a)  # and back to the top
    g = n2.walk(a)
    assert sorted(g.nodes) == sorted(x.hex() for x in (a, b, c, d))
    assert set(g.edges) == {
        (a.hex(), b.hex()),
        (a.hex(), c.hex()),
        (b.hex(), d.hex()),
        (c.hex(), d.hex()),
        (d.hex(), a.hex()),
    }
    assert g.nodes[d.hex()]["depth"] == 2

    shallow = n2.walk(a, depth=1)
    assert sorted(shallow.nodes) == sorted(x.hex() for x in (a, b, c))
    assert shallow.graph["truncated"]
    one = n2.walk(a, budget=1)  # the root is always there
    assert list(one.nodes) == [a.hex()] and one.graph["truncated"]


def test_name_entries_are_edges_to_what_the_name_names_now(clients: dict[str, Client]) -> None:
    n1, n3 = clients["n1"], clients["n3"]
    head, first, second = _items(clients, ["n1", "n2", "n3"])
    n1.mkdir("/graphtest", parents=True)
    n1.bind("/graphtest/current", first)
    n1.write_name_pointer(head, NEXT, "/graphtest/current")
    n1.write_name_pointer(head, NEXT + 8, "/graphtest/nowhere")

    g = n3.walk(head)
    edge = g.edges[head.hex(), first.hex()]
    assert edge["kind"] == "name" and edge["name"] == "/graphtest/current"
    unresolved = g.nodes["name:/graphtest/nowhere"]
    assert unresolved["kind"] == "unresolved" and unresolved["error"]

    n1.bind("/graphtest/current", second, replace=True)  # late binding: the edge moves
    g = n3.walk(head)
    assert g.has_edge(head.hex(), second.hex()) and not g.has_edge(head.hex(), first.hex())


def test_prefetch_fetches_each_object_once_and_then_nothing(
    clients: dict[str, Client], cluster3: LocalCluster
) -> None:
    homes = ["n2", "n3"] * 30
    ids = _items(clients, homes)
    for i in range(len(ids) - 1):
        _link(clients["n2"], ids[i], ids[i + 1])
    _link(clients["n2"], ids[-1], ids[len(ids) // 2])  # a cycle in the tail too

    with cluster3.client("n1") as reader:
        before = _fetches(clients)
        seen: list[tuple[int, int, int]] = []
        result = reader.prefetch(ids[0], progress=lambda *p: seen.append(p))
        assert result.objects == len(ids) and result.fetched_by_node == len(ids)
        assert result.received == len(ids)
        assert result.requests == 2  # one batch per holder
        assert _fetches(clients) - before == len(ids)
        assert seen and seen[-1][0] == len(ids) and seen[-1][2] == len(ids)

        # the traversal now never leaves the client
        misses = reader.cache_stats["misses"]
        obj, values = reader.get(ids[0]), []
        for _ in range(len(ids)):
            values.append(obj.read_u64(DATA_START))
            obj, _ = obj.follow(obj.read_u64(NEXT))
        assert values == list(range(len(ids)))
        assert reader.cache_stats["misses"] == misses

        again = reader.prefetch(ids[0], to_client=False)
        assert again.fetched_by_node == 0 and again.requests == 0
        assert _fetches(clients) - before == len(ids)


def test_following_pointers_counts_edge_uses(
    clients: dict[str, Client], cluster3: LocalCluster
) -> None:
    a, b = _items(clients, ["n2", "n3"])
    _link(clients["n2"], a, b)
    for _ in range(3):
        with cluster3.client("n1") as fresh:  # an empty cache: every follow fetches
            obj = fresh.get(a)
            obj.follow(obj.read_u64(NEXT))
    g = clients["n1"].walk(a)
    assert g.edges[a.hex(), b.hex()]["uses"] == 3


def test_colocation_lowers_the_cross_node_pointers(clients: dict[str, Client]) -> None:
    rng = random.Random(7)
    nodes = ["n1", "n2", "n3"]
    groups = []
    for g in range(4):  # 4 tight groups of 6 objects, spread at random
        members = _items(clients, [rng.choice(nodes) for _ in range(6)], start=100 * g)
        for i, m in enumerate(members):  # a ring plus chords
            _link(clients["n1"], m, members[(i + 1) % 6], NEXT)
            _link(clients["n1"], m, members[(i + 3) % 6], NEXT + 8)
        groups.append(members)
    root = clients["n1"].create(SIZE, bytes(8 * 5))
    for g, members in enumerate(groups):
        _link(clients["n1"], root, members[0], DATA_START + 8 * g)

    n2 = clients["n2"]
    before = n2.walk(root)
    plan = n2.colocate(root, dry_run=True)
    assert plan["cross_after"] < plan["cross_before"] == model.cross_edges(before)
    assert n2.walk(root).graph["homes"] == before.graph["homes"]  # a dry run moves nothing

    done = n2.colocate(root)
    after = n2.walk(root)
    assert model.cross_edges(after) == done["cross_after"] < model.cross_edges(before)
    assert done["migrations"] >= 1
    for members in groups:  # each group ends on one node, and its bytes are intact
        assert len({after.nodes[m.hex()]["home"] for m in members}) == 1
        for i, m in enumerate(members):
            assert clients["n3"].read(m, DATA_START, 8) == struct.pack(
                "<Q", 100 * groups.index(members) + i
            )


def _total(api: object, root: object) -> int:
    obj = api.get(root)  # type: ignore[attr-defined]
    total = 0
    while True:
        total += obj.read_u64(0x1000)
        word = obj.read_u64(0x1008)
        if not word:
            return total
        obj, _ = obj.follow(word)


def test_code_runs_where_the_data_is(clients: dict[str, Client]) -> None:
    ids = _items(clients, ["n3"] * 40)
    for i in range(len(ids) - 1):
        _link(clients["n3"], ids[i], ids[i + 1])
    code = clients["n1"].put_code(_total)  # homed on n1, run from n1

    report = clients["n1"].run(code, ids[0])
    assert report["result"] == sum(range(40))
    assert report["ran_at"] == "n3" and report["choice"] == "code-to-data"
    assert report["estimates"]["n3"] < report["estimates"]["n1"]
    assert report["worker"]["remote_objects"] == 0  # every item was read in place
    again = clients["n1"].run(code, ids[0])  # n3 holds a copy of the code object now
    assert again["ran_at"] == "n3" and again["result"] == report["result"]

    here = clients["n1"].run(code, ids[0], where="here")
    assert here["ran_at"] == "n1" and here["result"] == report["result"]
    assert here["worker"]["remote_objects"] >= 40

    broken = clients["n1"].put_code("def f(api, root):\n    raise ValueError('no')\n", "f")
    with pytest.raises(CodeError, match="no"):
        clients["n2"].run(broken, ids[0])


def test_the_web_view_and_the_cli_draw_the_graph(
    clients: dict[str, Client], cluster3: LocalCluster, tmp_path: Path
) -> None:
    ids = _items(clients, ["n1", "n2", "n3"])
    _link(clients["n1"], ids[0], ids[1])
    _link(clients["n1"], ids[1], ids[2])
    page = clients["n2"].graph_view(ids[0], "html")
    assert "<script" in page and ids[2].hex() in page
    svg = ElementTree.fromstring(clients["n3"].graph_view(ids[0], "svg"))
    assert svg.tag.endswith("svg")
    assert "/graph/view" in clients["n1"]._channel.call("GET", "/").body.decode()  # the web view

    # a browser cannot sign: it opens a signed link, once; the bare URL is refused
    link = clients["n2"].graph_link(ids[0])
    with urllib.request.urlopen(link, timeout=30) as answer:
        assert ids[2].hex() in answer.read().decode()
    for url in (link, link.split("&dtwz-")[0]):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code in (401, 403)
        refused.value.close()

    url = clients["n1"].url
    runner = CliRunner()
    out = tmp_path / "g.json"
    result = runner.invoke(
        cli, ["graph", "--node", url, ids[0].hex(), "--format", "json", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {n["id"] for n in doc["nodes"]} == {o.hex() for o in ids}

    result = runner.invoke(cli, ["graph", "--node", url, ids[0].hex()])
    assert result.exit_code == 0, result.output
    assert "3 objects, 2 pointers" in result.output

    result = runner.invoke(cli, ["graph", "--node", url, "prefetch", ids[0].hex(), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["objects"] == 3

    result = runner.invoke(
        cli,
        ["graph", "--node", url, "migrate", ids[0].hex(), "--to", "n2", "--reachable", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert {a["home"] for _, a in clients["n3"].walk(ids[0]).nodes(data=True)} == {"n2"}

    result = runner.invoke(cli, ["graph", "--node", url, "show", "nothex"])
    assert result.exit_code == 2


def test_the_neighbour_policy_prefetches_what_a_fetched_object_points_to(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(2, "--prefetch-neighbours", "500", name="neighbours")
    with cluster.client("n2") as home, cluster.client("n1") as reader:
        ids = [home.create(SIZE, struct.pack("<QQQQ", i, 0, 0, 0)) for i in range(12)]
        for i in range(len(ids) - 1):
            _link(home, ids[i], ids[i + 1])
        before = reader.cluster_status()["service"]
        reader.read(ids[0], DATA_START, 8)  # one fetch on demand at n1 ...
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ... brings its neighbours in the background
            if reader.cluster_status()["service"]["prefetched"] >= 4:
                break
            time.sleep(0.05)
        after = reader.cluster_status()["service"]
        assert after["prefetched"] >= 4
        # images of these items are 156 bytes: about 500 bytes' worth, not the list
        assert after["prefetched"] <= 5
        assert after["remote_reads"] == before["remote_reads"] + 1
        assert reader.read(ids[1], DATA_START, 8) == struct.pack("<Q", 1)  # a copy: no fetch
        assert reader.cluster_status()["service"]["remote_reads"] == after["remote_reads"]
