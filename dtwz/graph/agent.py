"""The graph service as one node runs it: walk, prefetch, edge counts (docs/GRAPH.md).

``GraphAgent`` is the facade the node uses; each part lives in a module of its own:
``cluster`` (what the service stands on: the node, the caller, the read rule),
``holder`` (expand), ``coordinator`` (walk), ``assemble`` (the walked graph),
``uses`` (edge counts), ``prefetch``; migration and co-location stay here.

Theory of operation
-------------------
- **Expand** (the holder's half of a walk): a node walks on from the objects it is
  asked about through every object it homes, reading headers and FOT entries in
  place (no copy), to the walk's depth and byte budget. Targets homed elsewhere
  go back as the frontier. Name entries are resolved through the namespace, so a
  late-bound edge leads where the name is bound now.
- **Walk** (the coordinator's half): the node asked for a walk locates the
  frontier, sends one ``GraphExpand`` per holder per step (all holders at once),
  and merges the parts into a ``networkx.DiGraph`` (docs/GRAPH.md). A list homed
  on one node is walked in one request, however long. Each object appears once:
  holders remember what they expanded per walk, and the coordinator drops
  repeats.
- **Prefetch**: a walk, then the objects not held here fetched as whole images
  in batches of ``BATCH`` (one ``FetchMany`` per holder at a time, ``WINDOW`` in
  flight per holder), installed as registered copies.
- **Edge uses**: every node counts the pointer dereferences that had to fetch
  their target (``ObjectService.note_edge``); a walk with ``uses`` asks every
  member for the counts of the walked edges, one request each.
- **Who asks** (docs/SECURITY.md §9): every walk is for a ``Caller``, the kuid and
  capabilities of the request that asked, and travels with each ``GraphExpand``.
  A holder checks read on each object it meets with the node's access rule (one
  ``ReadCheck`` per request, decided from the header at hand); an object the
  caller may not read is *hidden*: not expanded, not counted, its size, version,
  copies, edges and names never leave the holder. A missing object looks the same
  to such a caller, and takes the same path (see ``on_expand``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence

from dtwz.errors import ClusterError
from dtwz.format.ids import ObjectId
from dtwz.graph.cluster import (
    NO_LIMIT,
    NOBODY,
    Caller,
    GraphCluster,
    ReadCheck,
    ReadPolicy,
    image_bytes,
)
from dtwz.graph.coordinator import Coordinator
from dtwz.graph.holder import Holder
from dtwz.graph.placement import Plan, group_moves, plan_colocation
from dtwz.graph.prefetch import Prefetcher, Progress
from dtwz.graph.uses import edge_counts
from dtwz.resolver.namespace import Namespace
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import EdgeCounts, EdgeUses, Message, Migrate, Migrated

__all__ = [
    "NOBODY",
    "NO_LIMIT",
    "Caller",
    "GraphAgent",
    "GraphCluster",
    "Progress",
    "ReadCheck",
    "ReadPolicy",
    "image_bytes",
]

MIGRATE_TIMEOUT = 60.0  # seconds for a home to ship a group of objects


class GraphAgent:
    """The node's graph service: the holder's half (``on_expand``), edge counts
    (``on_edge_uses``), walks (``walk``, ``summarize``), prefetch, migration and
    co-location; ``stats`` counts them all."""

    def __init__(
        self, cluster: GraphCluster, service: ObjectService, names: Namespace | None
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.names = names
        self.stats = {"expands_served": 0, "objects_expanded": 0, "walks": 0, "prefetches": 0}
        holder = Holder(cluster, service, names, self.stats)
        coordinator = Coordinator(cluster, self.stats, holder.on_expand, self.on_edge_uses)
        prefetcher = Prefetcher(cluster, service, coordinator, self.stats)
        self.on_expand = holder.on_expand
        self.walk = coordinator.walk
        self.summarize = coordinator.summarize
        self.prefetch = prefetcher.prefetch
        self.prefetch_neighbours = prefetcher.prefetch_neighbours
        self.fetch_objects = prefetcher.fetch_objects

    async def on_edge_uses(self, m: EdgeUses) -> EdgeCounts:
        return edge_counts(self.service, m)

    # -- migrate and co-locate ------------------------------------------------------------

    async def migrate(
        self, oids: Sequence[ObjectId], to_node: str, *, txn_id: bytes | None = None
    ) -> list[Migrated]:
        """Move ``oids`` to ``to_node``: one ``Migrate`` per current home."""
        by_home: dict[str, list[ObjectId]] = defaultdict(list)
        for oid in dict.fromkeys(oids):
            by_home[(await self.cluster.locate(oid)).home].append(oid)
        txn_id = txn_id or os.urandom(16)
        replies = await asyncio.gather(
            *(  # one transaction ID per home: one move each
                self._migrate_from(home, Migrate(_per_home(txn_id, home), ids, to_node))
                for home, ids in sorted(by_home.items())
            )
        )
        return list(replies)

    async def _migrate_from(self, home: str, message: Migrate) -> Migrated:
        if home == self.cluster.node_id:
            reply: Message = await self.cluster.migrate(message)
        else:
            reply = await self.cluster.request(home, message, MIGRATE_TIMEOUT)
        if not isinstance(reply, Migrated):
            raise ClusterError(f"node {home} answered a migration with {reply!r}")
        return reply

    async def colocate(
        self,
        root: ObjectId,
        *,
        depth: int | None = None,
        budget: int | None = None,
        capacity: int | None = None,
        dry_run: bool = False,
        caller: Caller = NOBODY,
    ) -> tuple[Plan, list[Migrated]]:
        """Place the objects reachable from ``root`` that ``caller`` may see so that
        fewer pointers cross nodes (``placement.plan_colocation``), and carry the plan
        out."""
        graph = await self.walk(root, depth=depth, budget=budget, uses=True, caller=caller)
        pinned = [n for n, a in graph.nodes(data=True) if a.get("directory")]
        plan = plan_colocation(graph, self.cluster.alive_ids(), capacity=capacity, pinned=pinned)
        done: list[Migrated] = []
        if not dry_run:
            for (_, target), keys in group_moves(plan, graph).items():
                done += await self.migrate([ObjectId.parse(k) for k in keys], target)
        return plan, done


def _per_home(txn_id: bytes, home: str) -> bytes:
    return hashlib.sha256(txn_id + home.encode("utf-8")).digest()[:16]
