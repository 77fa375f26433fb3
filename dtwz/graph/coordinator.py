"""The coordinator's half of a walk: the step driver (docs/GRAPH.md).

The node asked for a walk locates the frontier, sends one ``GraphExpand`` per holder
per step (all holders at once), routes what comes back (``more`` to the same holder,
the frontier to wherever it lives) and merges the parts into a
``networkx.DiGraph`` (``dtwz.graph.assemble``). A list homed on one node is walked in
one request, however long.

Invariants: each object appears once (holders remember what they expanded per walk,
and the coordinator drops repeats). An object a holder sends back although it was
asked to expand it has moved: the next step asks the location directory afresh, and
the third time it counts as missing. The byte budget ends a walk before a step, so
objects found missing and objects a holder hides are dropped alike; to a caller who
may not read everything both are ``hidden`` nodes.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import networkx as nx

from dtwz.errors import ClusterError, ObjectNotFound, StaleLocation
from dtwz.format.ids import ObjectId
from dtwz.graph import assemble, model
from dtwz.graph.cluster import BATCH_TIMEOUT, NO_LIMIT, NOBODY, Caller, GraphCluster
from dtwz.graph.uses import annotate_uses
from dtwz.wire.messages import EdgeCounts, EdgeUses, GraphEdge, GraphExpand, GraphPart, WalkStart


class Coordinator:
    """Walks for the callers of this node; counts them into ``stats`` (``walks``).
    ``expand_here`` and ``uses_here`` answer for this node without a round trip."""

    def __init__(
        self,
        cluster: GraphCluster,
        stats: dict[str, int],
        expand_here: Callable[[GraphExpand], Awaitable[GraphPart]],
        uses_here: Callable[[EdgeUses], Awaitable[EdgeCounts]],
    ) -> None:
        self.cluster = cluster
        self.stats = stats
        self._expand_here = expand_here
        self._uses_here = uses_here

    async def walk(
        self,
        root: ObjectId,
        *,
        depth: int | None = None,
        budget: int | None = None,
        uses: bool = True,
        caller: Caller = NOBODY,
    ) -> nx.DiGraph[str]:
        """The subgraph reachable from ``root`` that ``caller`` may see (docs/GRAPH.md):
        objects it may not read, and IDs no node holds, are ``hidden`` nodes alike
        (``missing`` ones only to a caller who may read everything)."""
        self.stats["walks"] += 1
        graph = model.empty_graph(root.hex(), depth, budget)
        order: list[str] = []  # objects in the order walked (about breadth-first)
        edges: list[GraphEdge] = []
        hidden: dict[str, int] = {}  # added last, sorted: their place in the graph says nothing
        max_depth = NO_LIMIT if depth is None else depth
        truncated = False
        sees_all = self._sees_all(caller)
        capabilities = caller.encoded()

        def missing(oid: ObjectId, d: int, why: str) -> None:
            if sees_all:
                graph.add_node(oid.hex(), kind="missing", error=why, depth=d)
            else:
                hidden.setdefault(oid.hex(), d)

        def spent() -> bool:
            nonlocal truncated
            if budget is not None and assemble.total_bytes(graph) >= budget:
                truncated = True  # the budget is spent and there is more to walk
                return True
            return False

        def expand(starts: list[WalkStart]) -> GraphExpand:
            left = 0 if budget is None else max(1, budget - assemble.total_bytes(graph))
            return GraphExpand(walk_id, starts, max_depth, left, False, caller.kuid, capabilities)

        def done(oid: ObjectId) -> bool:
            key = oid.hex()
            return key in graph or key in hidden

        walk_id = os.urandom(8)
        async for _, part in self._steps(root, expand, spent, missing, done):
            truncated |= part.truncated
            for o in part.objects:
                key = o.object_id.hex()
                if key not in graph:
                    graph.add_node(key, **assemble.object_attrs(o))
                    order.append(key)
            for h in part.hidden:
                hidden.setdefault(h.object_id.hex(), h.depth)
            edges.extend(part.edges)
        for key, d in sorted(hidden.items(), key=lambda kv: (kv[1], kv[0])):
            if key not in graph:
                graph.add_node(key, kind="hidden", depth=d)
        truncated |= assemble.trim_to_budget(graph, order, budget)
        assemble.add_edges(graph, edges)
        assemble.drop_unreached(graph)
        if uses:
            await annotate_uses(self.cluster, graph, self._uses_here)
        assemble.finish(graph, truncated=truncated)
        return graph

    def _sees_all(self, caller: Caller) -> bool:
        """Security is off, or ``caller`` is the admin or a node: nothing is hidden."""
        access = self.cluster.access
        return access is None or access.is_trusted(caller.kuid)

    async def summarize(
        self, root: ObjectId, *, budget: int | None = None, caller: Caller = NOBODY
    ) -> tuple[dict[str, int], int, bool]:
        """Bytes per home of what ``root`` reaches, the objects counted, and whether
        the budget cut it short: a walk whose holders send back counts, not objects
        (what deciding where code runs needs). Only what ``caller`` may read counts."""
        by_home: dict[str, int] = defaultdict(int)
        objects, truncated = 0, False
        walk_id = os.urandom(8)
        capabilities = caller.encoded()

        def spent() -> bool:
            nonlocal truncated
            if budget is not None and sum(by_home.values()) >= budget:
                truncated = True
                return True
            return False

        def expand(starts: list[WalkStart]) -> GraphExpand:
            left = 0 if budget is None else max(1, budget - sum(by_home.values()))
            return GraphExpand(walk_id, starts, NO_LIMIT, left, True, caller.kuid, capabilities)

        async for home, part in self._steps(root, expand, spent, lambda *_: None, lambda _: False):
            truncated |= part.truncated
            if part.counted:  # a holder of only hidden objects is not named
                by_home[home] += part.counted_bytes
                objects += part.counted
        return dict(by_home), objects, truncated

    async def _steps(
        self,
        root: ObjectId,
        expand: Callable[[list[WalkStart]], GraphExpand],
        spent: Callable[[], bool],
        missing: Callable[[ObjectId, int, str], None],
        done: Callable[[ObjectId], bool],
    ) -> AsyncIterator[tuple[str, GraphPart]]:
        """The parts of a walk from ``root`` and the holder of each, step by step:
        locate the frontier, send one ``expand(starts)`` to each holder at once, route
        what comes back (``more`` to the same holder, the frontier to wherever it
        lives). ``spent()`` ends the walk before a step (a budget), before anything
        of that step's frontier is located, so that objects found missing and objects
        a holder hides are dropped alike; ``done`` tells objects already walked."""
        frontier: dict[ObjectId, int] = {root: 0}
        known: dict[ObjectId, str] = {}  # frontier objects whose home a holder told us
        stale: dict[ObjectId, int] = {}  # sent to a holder that did not home them
        while frontier:
            if spent():
                return
            starts: dict[str, list[WalkStart]] = defaultdict(list)
            unknown = [o for o in frontier if o not in known]
            located = dict(
                zip(
                    unknown,
                    await asyncio.gather(
                        *(home_of(self.cluster, o, refresh=o in stale) for o in unknown)
                    ),
                    strict=True,
                )
            )
            for oid, d in frontier.items():
                where = known.pop(oid, None) or located[oid]
                if isinstance(where, str):
                    starts[where].append(WalkStart(oid, d))
                else:
                    missing(oid, d, str(where))
            messages = {home: expand(s) for home, s in starts.items()}
            homes = list(messages)
            parts = await asyncio.gather(*(self._expand(h, m) for h, m in messages.items()))
            frontier = {}
            for home, part in zip(homes, parts, strict=True):
                yield home, part
                for f in part.more:  # homed there, left for another request
                    known[f.object_id] = home
                    frontier[f.object_id] = f.depth
                asked = {w.object_id for w in starts[home]}
                for f in part.frontier:
                    if f.object_id in asked and _stale(stale, f.object_id):
                        missing(f.object_id, f.depth, f"{home} does not home it any more")
                    elif not done(f.object_id):
                        frontier[f.object_id] = min(f.depth, frontier.get(f.object_id, f.depth))

    async def _expand(self, home: str, message: GraphExpand) -> GraphPart:
        if home == self.cluster.node_id:
            return await self._expand_here(message)
        for attempt in range(3):
            try:
                reply = await self.cluster.request(home, message, BATCH_TIMEOUT)
            except StaleLocation:  # moved meanwhile: ask the directory again
                if attempt == 2:
                    raise
                home = (await self.cluster.locate(message.starts[0].object_id, refresh=True)).home
                continue
            if not isinstance(reply, GraphPart):
                raise ClusterError(f"node {home} answered a walk with {reply!r}")
            return reply
        raise AssertionError("unreachable")


async def home_of(
    cluster: GraphCluster, oid: ObjectId, *, refresh: bool = False
) -> str | Exception:
    """The node homing ``oid``, or why none could be found."""
    try:
        return (await cluster.locate(oid, refresh=refresh)).home
    except (ObjectNotFound, ClusterError) as exc:
        return exc


def _stale(stale: dict[ObjectId, int], oid: ObjectId) -> bool:
    """A holder sent back an object it was asked to expand: its location was stale
    (it moved). The next step asks the directory afresh; a third time, give up."""
    stale[oid] = stale.get(oid, 0) + 1
    return stale[oid] > 2
