"""A walk's graph built from the holders' parts (docs/GRAPH.md for its schema).

The coordinator adds each object once, in the order walked, then trims what the
holders, walking in parallel each to the budget left, brought over the byte budget
(``trim_to_budget``), adds the edges between what is left (``add_edges``: one edge per
pair, its FOT indices and flags merged; an unresolved entry becomes an ``unresolved``
node), drops hidden and missing nodes no edge reaches any more
(``drop_unreached``), and last fills in what needs the whole graph (``finish``: cross
edges, homes, total bytes). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import networkx as nx

from dtwz.format.ids import ZERO_ID
from dtwz.graph.cluster import image_bytes
from dtwz.wire.messages import GraphEdge, GraphObject


def total_bytes(graph: nx.DiGraph[str]) -> int:
    return sum(int(a.get("bytes", 0)) for _, a in graph.nodes(data=True))


def finish(graph: nx.DiGraph[str], *, truncated: bool) -> None:
    """Fill in what needs the whole graph: cross edges, homes, totals."""
    homes: dict[str, str | None] = {n: a.get("home") for n, a in graph.nodes(data=True)}
    for u, v, attrs in graph.edges(data=True):
        attrs["cross"] = homes.get(u) is not None and homes.get(v) not in (None, homes[u])
    graph.graph["homes"] = sorted({h for h in homes.values() if h is not None})
    graph.graph["bytes"] = total_bytes(graph)
    graph.graph["truncated"] = truncated


def object_attrs(o: GraphObject) -> dict[str, Any]:
    return {
        "kind": "object",
        "home": o.home,
        "max_size": o.max_size,
        "data_len": o.data_len,
        "fot_count": o.fot_count,
        "version": o.version,
        "copies": list(o.copies),
        "flags": o.flags,
        "depth": o.depth,
        "directory": o.directory,
        "bytes": image_bytes(o.data_len, o.fot_count),
    }


def drop_unreached(graph: nx.DiGraph[str]) -> None:
    """Hidden and missing nodes whose every way in was trimmed off by the budget."""
    root = graph.graph["root"]
    graph.remove_nodes_from(
        [
            key
            for key, attrs in graph.nodes(data=True)
            if attrs["kind"] in ("hidden", "missing") and key != root and not graph.in_degree(key)
        ]
    )


def trim_to_budget(graph: nx.DiGraph[str], order: list[str], budget: int | None) -> bool:
    """Holders walk in parallel, each to the budget left: drop what went over."""
    if budget is None:
        return False
    used, drop = 0, []
    for key in sorted(order, key=lambda k: graph.nodes[k]["depth"]):
        used += graph.nodes[key]["bytes"]
        if used > budget and key != graph.graph["root"]:
            drop.append(key)
    graph.remove_nodes_from(drop)
    return bool(drop)


def add_edges(graph: nx.DiGraph[str], edges: Sequence[GraphEdge]) -> None:
    for e in edges:
        source = e.source.hex()
        if source not in graph:
            continue
        if e.target == ZERO_ID:
            target = f"name:{e.name}" if e.name else f"error:{source}:{e.fot_index}"
            if target not in graph:
                graph.add_node(
                    target,
                    kind="unresolved",
                    name=e.name,
                    error=e.error,
                    depth=graph.nodes[source]["depth"] + 1,
                )
        else:
            target = e.target.hex()
            if target not in graph:
                continue  # beyond the depth or byte budget
        if graph.has_edge(source, target):
            attrs = graph.edges[source, target]
            attrs["fot_indices"].append(e.fot_index)
            attrs["flags"] |= e.flags
            if e.name and attrs["kind"] != "name":
                attrs["kind"], attrs["name"] = "name", e.name
            continue
        graph.add_edge(
            source,
            target,
            fot_indices=[e.fot_index],
            flags=e.flags,
            kind="name" if e.name else "id",
            name=e.name or None,
            uses=0,
            cross=False,
        )
