"""The cluster demo (``make demo``): one object space over three node processes.

``python -m examples.cluster_demo [--data DIR] [--keep]`` starts a local 3-node
cluster (real processes on loopback, stores under DIR, default
``./data/cluster``), then:

1. builds a linked list whose nodes live in objects homed on *different* nodes,
   each node created through that node, and names it in the cluster's namespace
   (``/demo/list/head``, a directory per list, a late-bound ``/demo/latest``);
2. walks the list from a client connected to a third node, starting from its name
   (resolved there): every pointer crosses the object space through an FOT entry,
   and each target is fetched on demand;
3. locates each object (home, version, who holds copies);
4. writes at an object's home and shows that the copy another node held is
   invalidated, so the next read there sees the new bytes;
5. draws the list's object graph (walked by the nodes that hold it, coloured by
   home) and writes it as a self-contained HTML page, runs a function that sums
   the list where its bytes are, co-locates the list on fewer nodes and sums it
   again;
6. prints each node's view of the cluster (members, objects, cache figures),

and stops the cluster (``--keep`` leaves it running for ``dtwz remote ...``).
"""

from __future__ import annotations

import argparse
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dtwz import U64, Bytes, Layout, ObjectId, Pointer
from dtwz.client.api import Client, Op
from dtwz.graph import model, render
from dtwz.node.launcher import LocalCluster, down, up

console = Console(highlight=False)
NODES = 3
LIST_LENGTH = 9


class DemoItem(Layout):
    """One list item: a number, a short label and a pointer to the next item."""

    number = U64()
    label = Bytes(24)
    next = Pointer("DemoItem")


def build_list(clients: dict[str, Client]) -> tuple[ObjectId, list[ObjectId]]:
    """Items 0..N-1 in objects created round-robin on the nodes; returns the head object."""
    node_ids = sorted(clients)
    objects: list[ObjectId] = []
    for i in range(LIST_LENGTH):
        home = node_ids[i % len(node_ids)]
        label = f"item {i} @ {home}".encode()
        # the object's first bytes are the item: number, label, NULL next pointer
        objects.append(clients[home].create(64 << 10, struct.pack("<Q24sQ", i, label, 0)))
    # link item i -> item i+1: each pointer is written at the home of the object holding it
    for i in range(LIST_LENGTH - 1):
        home = node_ids[i % len(node_ids)]
        at = 0x1000 + DemoItem.FIELDS["next"].offset
        clients[home].transact([Op.pointer(objects[i], at, objects[i + 1], 0x1000)])
    return objects[0], objects


def name_the_list(clients: dict[str, Client], head: ObjectId, objects: list[ObjectId]) -> None:
    """Bind names to the list through the first node (again and again: a rerun on the
    same stores finds them bound and rebinds them), and a late-bound pointer."""
    first = clients[sorted(clients)[0]]
    first.mkdir("/demo/list/items", parents=True)
    first.bind("/demo/list/head", head, replace=True)
    for i, oid in enumerate(objects):
        first.bind(f"/demo/list/items/{i}", oid, replace=True)
    # /demo/latest names the last item; a pointer to it by name follows rebinding
    first.bind("/demo/latest", objects[-1], replace=True)
    holder = first.create(8192, bytes(8))
    first.write_name_pointer(holder, 0x1000, "/demo/latest")
    reader = clients[sorted(clients)[-1]]
    before = reader.follow(holder, 0x1000)[0].object_id
    first.bind("/demo/latest", objects[0], replace=True)
    after = reader.follow(holder, 0x1000)[0].object_id
    console.print(
        f"names bound through {sorted(clients)[0]}: /demo/list/head, "
        f"/demo/list/items/0..{len(objects) - 1}, /demo/latest"
    )
    console.print(
        f"a late-bound pointer to /demo/latest, followed through {sorted(clients)[-1]}: "
        f"item {objects.index(before)}, then after rebinding item "
        f"{objects.index(after)}"
    )


def walk(client: Client, head: ObjectId | str) -> list[tuple[int, str, str]]:
    out = []
    item = client.view(DemoItem, head)
    while item is not None:
        out.append((item.number, bytes(item.label).rstrip(b"\0").decode(), item.object_id.hex()))
        item = item.next
    return out


def show_locations(client: Client, objects: Sequence[ObjectId]) -> None:
    table = Table(title="Where each object lives (asked through one node)")
    for col in ("object", "home", "version", "copies held by"):
        table.add_column(col)
    for oid in objects:
        loc = client.locate(oid)
        table.add_row(oid.hex()[:12] + "…", loc.home, str(loc.version), ", ".join(loc.copies))
    console.print(table)


def show_status(client: Client, cluster: LocalCluster) -> None:
    table = Table(title="Each node's view of the cluster")
    for col in ("node", "members alive", "objects homed", "copies", "cache hits", "misses"):
        table.add_column(col, justify="right")
    for node_id in cluster.node_ids:
        status = cluster.client(node_id).cluster_status()
        alive = sum(m["state"] == "alive" for m in status["members"])
        cache = status["cache"]
        table.add_row(
            node_id,
            str(alive),
            str(status.get("objects", "?")),
            str(status["copies"]),
            str(cache["hits"]),
            str(cache["misses"]),
        )
    console.print(table)


def sum_numbers(api, root):  # type: ignore[no-untyped-def]  # runs in a node's worker
    """Sum the list's numbers. A code object carries only this function's source, so
    it reads the DemoItem fields by offset: number at 0, next pointer at 32."""
    total, obj, at = 0, api.get(root), 0x1000
    while True:
        total += obj.read_u64(at)
        word = obj.read_u64(at + 32)
        if not word:
            return total
        obj, at = obj.follow(word)


def graph_demo(client: Client, head: ObjectId, data: Path) -> None:
    graph = client.walk(head)
    console.print(render.tree(graph))
    page = data / "demo-graph.html"
    page.write_text(render.to_html(graph, title="dtwz demo list"), "utf-8")
    console.print(
        f"{graph.number_of_nodes()} objects, {model.cross_edges(graph)} pointers "
        f"cross nodes; interactive drawing: {page}"
    )
    code = client.put_code(sum_numbers)
    ran = client.run(code, head)
    console.print(
        f"sum_numbers(list) = {ran['result']}: ran on {ran['ran_at']} "
        f"({ran['choice']}; bytes each site would move: {ran['estimates']})"
    )
    plan = client.colocate(head)
    console.print(
        f"co-located: moved {len(plan['moves'])} objects, cross-node pointers "
        f"{plan['cross_before']} -> {plan['cross_after']}"
    )
    ran = client.run(code, head)
    moved = ran["bytes_moved_estimate"]
    console.print(
        f"sum_numbers(list) = {ran['result']}: now ran on {ran['ran_at']} "
        f"({ran['choice']}, estimated {moved} bytes moved)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/cluster"))
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args(argv)

    if (args.data / "cluster.json").exists():
        down(args.data)  # a cluster left from an earlier run: stop it, keep its stores
    console.rule(f"Starting {NODES} nodes under {args.data}")
    started = time.perf_counter()
    cluster = up(NODES, args.data)
    try:
        console.print(
            f"{NODES} nodes ready in {time.perf_counter() - started:.1f} s: "
            + ", ".join(f"{n} {u}" for n, u in cluster.urls.items())
        )
        clients = {n: cluster.client(n) for n in cluster.node_ids}

        console.rule("1. A linked list whose items live on different nodes")
        head, objects = build_list(clients)
        console.print(
            f"created {len(objects)} objects round-robin on {', '.join(clients)}; head {head.hex()}"
        )
        name_the_list(clients, head, objects)

        reader_id = cluster.node_ids[-1]
        reader = cluster.client(reader_id)
        console.rule(f"2. Following the pointers from a client of {reader_id}")
        t0 = time.perf_counter()
        console.print(
            f"{reader_id} resolves /demo/list/head -> {reader.resolve('/demo/list/head').hex()}"
        )
        items = walk(reader, "/demo/list/head")
        elapsed = (time.perf_counter() - t0) * 1000
        for number, label, oid in items:
            console.print(f"  {number}: {label:<18} object {oid[:12]}…")
        console.print(
            f"walked {len(items)} items across {NODES} nodes in {elapsed:.1f} ms "
            f"(objects fetched on demand); again from the client's copies:"
        )
        t0 = time.perf_counter()
        walk(reader, head)
        console.print(f"  {1000 * (time.perf_counter() - t0):.2f} ms")

        console.rule("3. Locations")
        first_home = cluster.node_ids[0]
        clients[reader_id].read(objects[0], 0x1000, 8)  # node n3 now holds a copy
        show_locations(reader, objects[:3])

        console.rule("4. A write at the home invalidates the copies elsewhere")
        before = clients[reader_id].read(objects[0], 0x1008, 24).rstrip(b"\0")
        clients[first_home].write(objects[0], 0x1008, b"renamed at its home".ljust(24, b"\0"))
        after = clients[reader_id].read(objects[0], 0x1008, 24).rstrip(b"\0")
        console.print(f"read through {reader_id}: before {before!r}, after {after!r}")

        console.rule("5. The object graph: draw it, run code at the data, co-locate it")
        graph_demo(reader, head, args.data)

        console.rule("6. The cluster")
        show_status(reader, cluster)
    finally:
        if args.keep:
            console.print(
                f"cluster left running; stop it with: dtwz cluster down --data {args.data}"
            )
        else:
            down(args.data)
            console.print(f"cluster stopped (stores kept under {args.data})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
