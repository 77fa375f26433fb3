"""Prefetch: bring a reachable set here as copies (docs/GRAPH.md).

A prefetch is a walk, then the objects not held here fetched as whole images in
batches of ``BATCH`` objects or ``BATCH_BYTES`` (one ``FetchMany`` per holder at a
time, ``WINDOW`` in flight per holder), installed as registered copies, so that a
commit at the home invalidates them. Only what the caller may read is fetched: the
walk hides the rest. Objects larger than ``WHOLE_COPY_MAX`` are read by range, never
copied whole.

``prefetch_neighbours`` is the policy run after a copy is fetched on demand: fetch in
the background what its pointers lead to, breadth-first, to a byte budget. It is a
hint: failing is fine, and what a prefetch brings starts no chain of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import networkx as nx

from dtwz.errors import ClusterError, DtwzError
from dtwz.format.ids import ObjectId
from dtwz.graph.cluster import BATCH_TIMEOUT, NOBODY, Caller, GraphCluster
from dtwz.graph.coordinator import Coordinator, home_of
from dtwz.service.objects import WHOLE_COPY_MAX, ObjectService
from dtwz.store.objects import StoredObject
from dtwz.wire.messages import FetchMany, ObjectBatch

log = logging.getLogger(__name__)

BATCH = 256  # objects per FetchMany
BATCH_BYTES = 8 << 20  # ... or about this many bytes, whichever comes first
WINDOW = 4  # FetchMany requests in flight per holder

Progress = Callable[[int, int], None]  # (objects done, bytes done)


class Prefetcher:
    """Prefetches for this node; counts them into ``stats`` (``prefetches``)."""

    def __init__(
        self,
        cluster: GraphCluster,
        service: ObjectService,
        coordinator: Coordinator,
        stats: dict[str, int],
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.stats = stats
        self._coordinator = coordinator
        self._background: set[asyncio.Task[None]] = set()

    async def prefetch(
        self,
        root: ObjectId,
        *,
        depth: int | None = None,
        budget: int | None = None,
        progress: Progress | None = None,
        caller: Caller = NOBODY,
    ) -> tuple[nx.DiGraph[str], dict[str, int]]:
        """Bring the reachable set of ``root`` here as copies, only what ``caller``
        may read (the walk hides the rest); the graph and counts."""
        graph = await self._coordinator.walk(
            root, depth=depth, budget=budget, uses=False, caller=caller
        )
        stats = await self.fetch_objects(
            _wanted(graph, self.cluster.node_id, self.service), progress
        )
        stats["objects"] = sum(1 for _, a in graph.nodes(data=True) if a["kind"] == "object")
        self.stats["prefetches"] += 1
        return graph, stats

    def prefetch_neighbours(self, budget: int) -> Callable[[StoredObject], None]:
        """The policy ``ObjectService.on_fetched`` runs: after a copy is fetched on
        demand, fetch in the background what its pointers lead to, breadth-first,
        until about ``budget`` bytes came (one batch per holder per step)."""
        pending: set[bytes] = set()  # objects a background prefetch is bringing

        def fetched(obj: StoredObject) -> None:
            if obj.object_id in pending:
                return  # brought by a prefetch, not asked for: no chain reaction
            task = asyncio.ensure_future(self._neighbours(obj, budget, pending))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        return fetched

    async def _neighbours(self, obj: StoredObject, budget: int, pending: set[bytes]) -> None:
        got, level, added = 0, [obj], set()
        try:
            while level and got < budget:
                targets = {
                    t for o in level for t in _targets(o) if t not in pending and not self._held(t)
                }
                if not targets:
                    return
                pending.update(targets)
                added.update(targets)
                by_home: dict[str, list[tuple[ObjectId, int]]] = defaultdict(list)
                for t in targets:
                    where = await home_of(self.cluster, t)
                    if isinstance(where, str) and where != self.cluster.node_id:
                        by_home[where].append((t, 0))
                stats = await self.fetch_objects(by_home)
                got += stats["bytes"]
                level = [c.obj for t in targets if (c := self.service.copies.peek(t))]
        except DtwzError as exc:  # a hint: failing is fine, the next read fetches
            log.debug("neighbour prefetch stopped: %s", exc)
        finally:
            pending.difference_update(added)

    def _held(self, oid: ObjectId) -> bool:
        return self.service.copies.peek(oid) is not None or self.service.is_home(oid)

    async def fetch_objects(
        self, wanted: dict[str, list[tuple[ObjectId, int]]], progress: Progress | None = None
    ) -> dict[str, int]:
        """Fetch (object, size) lists per home as copies: one ``FetchMany`` per batch."""
        stats = {"fetched": 0, "bytes": 0, "requests": 0, "missing": 0, "stale": 0}

        async def from_home(home: str, items: list[tuple[ObjectId, int]]) -> None:
            gate = asyncio.Semaphore(WINDOW)

            async def batch(ids: list[ObjectId]) -> None:
                async with gate:
                    message = FetchMany(ids, True, self.cluster.node_id)
                    reply = await self.cluster.request(home, message, BATCH_TIMEOUT)
                if not isinstance(reply, ObjectBatch):
                    raise ClusterError(f"node {home} answered a batch fetch with {reply!r}")
                stats["requests"] += 1
                stats["missing"] += len(reply.missing)
                for image in reply.images:
                    if self.service.install_image(home, image):
                        stats["fetched"] += 1
                        stats["bytes"] += len(image.header) + len(image.data) + len(image.fot)
                    else:
                        stats["stale"] += 1
                self.service.stats["prefetched"] += len(reply.images)
                if progress is not None:
                    progress(stats["fetched"], stats["bytes"])

            await asyncio.gather(*(batch(ids) for ids in _batches(items)))

        await asyncio.gather(*(from_home(h, items) for h, items in wanted.items()))
        return stats


def _targets(obj: StoredObject) -> list[ObjectId]:
    """The objects the ID entries of ``obj``'s FOT name."""
    out = []
    for index in range(1, obj.header().fot_count + 1):
        try:
            entry = obj.fot_entry(index)
        except DtwzError:
            continue
        if entry.is_valid and not entry.is_name and entry.target is not None:
            out.append(entry.target)
    return out


def _wanted(
    graph: nx.DiGraph[str], me: str, service: ObjectService
) -> dict[str, list[tuple[ObjectId, int]]]:
    """Objects of the graph a prefetch to ``me`` must fetch, per home."""
    wanted: dict[str, list[tuple[ObjectId, int]]] = defaultdict(list)
    for key, attrs in graph.nodes(data=True):
        if attrs.get("kind") != "object" or attrs["home"] == me:
            continue
        if attrs["data_len"] > WHOLE_COPY_MAX:
            continue  # read by range, never copied whole
        oid = ObjectId.parse(key)
        held = service.copies.peek(oid)
        if held is not None and held.version >= attrs["version"]:
            continue
        wanted[attrs["home"]].append((oid, attrs["bytes"]))
    return wanted


def _batches(items: list[tuple[ObjectId, int]]) -> list[list[ObjectId]]:
    out: list[list[ObjectId]] = []
    current: list[ObjectId] = []
    size = 0
    for oid, nbytes in items:
        if current and (len(current) >= BATCH or size + nbytes > BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(oid)
        size += nbytes
    if current:
        out.append(current)
    return out
