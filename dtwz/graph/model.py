"""The object-graph schema of docs/GRAPH.md as plain helpers: no I/O.

A walk returns a ``networkx.DiGraph`` whose graph, node and edge attributes are
fixed by docs/GRAPH.md; everything that reads or draws a graph goes through this
module. JSON is networkx's node-link form with ``edges="edges"``; ``to_json``
and ``from_json`` copy deeply, so a document never shares lists with a graph.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import networkx as nx

from dtwz.errors import FormatError

__all__ = ["bytes_by_home", "cross_edges", "empty_graph", "from_json", "to_json"]

EDGES_KEY = "edges"


def _copied(attrs: dict[str, Any]) -> dict[str, Any]:
    # attribute values are scalars or lists of scalars: copying the lists is enough
    # for a document never to share anything with a graph (and far cheaper than a
    # deep copy of thousands of nodes)
    return {k: list(v) if isinstance(v, list) else v for k, v in attrs.items()}


def to_json(G: nx.DiGraph[str]) -> dict[str, Any]:
    """The graph as a JSON-ready node-link document (every attribute kept)."""
    return {
        "directed": True,
        "multigraph": False,
        "graph": _copied(G.graph),
        "nodes": [{**_copied(a), "id": n} for n, a in G.nodes(data=True)],
        EDGES_KEY: [{**_copied(a), "source": u, "target": v} for u, v, a in G.edges(data=True)],
    }


def from_json(doc: dict[str, Any]) -> nx.DiGraph[str]:
    """The graph of a document made by ``to_json`` (always a DiGraph)."""
    G: nx.DiGraph[str] = nx.DiGraph()
    try:
        G.graph.update(_copied(doc.get("graph", {})))
        G.add_nodes_from(
            (n["id"], {k: v for k, v in _copied(n).items() if k != "id"}) for n in doc["nodes"]
        )
        G.add_edges_from(
            (
                e["source"],
                e["target"],
                {k: v for k, v in _copied(e).items() if k not in ("source", "target")},
            )
            for e in doc[EDGES_KEY]
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"not a graph document: {exc!r}") from exc
    return G


def cross_edges(G: nx.DiGraph[str]) -> int:
    """Edges whose two ends are objects with different homes.

    Edges to unresolved names are not counted: a name that resolves nowhere has
    no home, so following it moves nothing between nodes.
    """
    homes = G.nodes(data="home")
    return sum(
        1
        for u, v in G.edges
        if homes[u] is not None and homes[v] is not None and homes[u] != homes[v]
    )


def bytes_by_home(G: nx.DiGraph[str]) -> dict[str, int]:
    """Sum of the objects' ``bytes`` per home node, keys sorted."""
    totals: Counter[str] = Counter()
    for _, attrs in G.nodes(data=True):
        if attrs.get("kind") == "object":
            totals[attrs["home"]] += int(attrs.get("bytes", 0))
    return dict(sorted(totals.items()))


def empty_graph(root_hex: str, depth: int | None, budget: int | None) -> nx.DiGraph[str]:
    """A graph with the schema's graph attributes set and no nodes yet."""
    G: nx.DiGraph[str] = nx.DiGraph()
    G.graph.update(root=root_hex, depth=depth, budget=budget, truncated=False, homes=[], bytes=0)
    return G
