"""Edge uses: how often each pointer had to fetch its target (docs/GRAPH.md).

Every node counts the dereferences that had to fetch their target
(``ObjectService.note_edge``). A holder answers ``EdgeUses`` from its counts
(``edge_counts``); a walk with ``uses`` asks every member at once for the counts of
the walked edges and adds them to the graph (``annotate_uses``). A member that does
not answer has its counts left out, and an edge into a hidden or missing object keeps
0, since a count would tell that it exists and is used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import networkx as nx

from dtwz.format.ids import ObjectId
from dtwz.graph.cluster import GraphCluster
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import EdgeCounts, EdgeUse, EdgeUses


def edge_counts(service: ObjectService, m: EdgeUses) -> EdgeCounts:
    """This node's counts of the edges out of ``m.sources`` (of all edges if none)."""
    uses = service.edge_uses
    if m.sources:
        wanted = {bytes(s) for s in m.sources}
        pairs = [(k, v) for k, v in uses.items() if k[0] in wanted]
    else:
        pairs = list(uses.items())
    return EdgeCounts([EdgeUse(ObjectId(s), ObjectId(t), n) for (s, t), n in pairs])


async def annotate_uses(
    cluster: GraphCluster,
    graph: nx.DiGraph[str],
    local: Callable[[EdgeUses], Awaitable[EdgeCounts]],
) -> None:
    """Add every member's counts to the ``uses`` of the graph's edges; ``local``
    answers for this node without a round trip."""
    sources = [ObjectId.parse(n) for n, a in graph.nodes(data=True) if a["kind"] == "object"]
    ask = EdgeUses(sources)
    replies: list[Any] = []
    for node_id in cluster.alive_ids():
        if node_id == cluster.node_id:
            replies.append(local(ask))
        else:
            replies.append(cluster.request(node_id, ask))
    for reply in await asyncio.gather(*replies, return_exceptions=True):
        if not isinstance(reply, EdgeCounts):
            continue  # a member that does not answer has its counts left out
        for use in reply.counts:
            s, t = use.source.hex(), use.target.hex()
            # an edge into a hidden (or missing) object keeps 0: a count would tell
            # that it exists and is used
            if graph.has_edge(s, t) and graph.nodes[t]["kind"] == "object":
                graph.edges[s, t]["uses"] += use.count
