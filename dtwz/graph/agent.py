"""The graph service as one node runs it: walk, prefetch, edge counts (docs/GRAPH.md).

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
import logging
import os
import struct
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx

from dtwz.errors import (
    AccessDenied,
    ClusterError,
    DtwzError,
    InvalidCapability,
    NamespaceError,
    ObjectNotFound,
    PointerError,
    StaleLocation,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import FOT_ENTRY_SIZE, HEADER_RECORD_SIZE, FotEntry, FotFlags
from dtwz.graph import model
from dtwz.graph.placement import Plan, group_moves, plan_colocation
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC
from dtwz.resolver.namespace import Namespace
from dtwz.security.capabilities import Capability
from dtwz.service.objects import WHOLE_COPY_MAX, ObjectService
from dtwz.store.objects import StoredObject
from dtwz.wire.messages import (
    EdgeCounts,
    EdgeUse,
    EdgeUses,
    FetchMany,
    GraphEdge,
    GraphExpand,
    GraphObject,
    GraphPart,
    HomeRecord,
    Message,
    Migrate,
    Migrated,
    ObjectBatch,
    WalkStart,
)

log = logging.getLogger(__name__)

NO_LIMIT = 0xFFFFFFFF  # max_depth on the wire when there is none
BATCH = 256  # objects per FetchMany
BATCH_BYTES = 8 << 20  # ... or about this many bytes, whichever comes first
WINDOW = 4  # FetchMany requests in flight per holder
WALKS_REMEMBERED = 64  # walks whose expanded objects a holder remembers
MIGRATE_TIMEOUT = 60.0  # seconds for a home to ship a group of objects
YIELD_EVERY = 512  # objects expanded between yields to the event loop
EXPAND_MAX = 4096  # objects one GraphExpand answers with at most
# a walk step or a batch does thousands of objects' work at the holder: allow it more
# than a single-object request (a holder that dies fails it at once anyway)
BATCH_TIMEOUT = 30.0

Progress = Callable[[int, int], None]  # (objects done, bytes done)

_FOT_ENTRY = struct.Struct("<16sI12s")  # docs/FORMAT.md: target | flags | reserved
# an ID entry: VALID, not NAME, no unknown bits (anything else takes the careful path)
_ID_ENTRY_MASK = ~int(FotFlags.READ | FotFlags.WRITE | FotFlags.EXEC) & 0xFFFFFFFF
_ZERO12 = bytes(12)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a walk is for: the kuid the entry node authenticated and the capabilities
    the request carried. Holders trust the coordinator's word for it: nodes are
    admitted, and trusted (docs/SECURITY.md §9)."""

    kuid: ObjectId
    capabilities: tuple[Capability, ...] = ()

    def encoded(self) -> list[bytes]:
        return [c.encode() for c in self.capabilities]


NOBODY = Caller(ZERO_ID)  # owns nothing: sees what default protections let all read


class ReadCheck(Protocol):
    """May the caller read an object whole, given its ID, owner (the header's kuid)
    and default protections? (``dtwz.node.access.ReadRule``)"""

    @property
    def trusted(self) -> bool:
        """The admin or a node: may read everything."""

    def __call__(self, oid: ObjectId, owner: bytes, prot: int) -> bool: ...


class ReadPolicy(Protocol):
    """The node's access rule as walks use it (``dtwz.node.access.Access``)."""

    def is_trusted(self, kuid: ObjectId) -> bool: ...

    async def read_rule(
        self, accessor: ObjectId, capabilities: Sequence[Capability] = ...
    ) -> ReadCheck: ...


class GraphCluster(Protocol):
    node_id: str

    @property
    def access(self) -> ReadPolicy | None:
        """The access rule; None with security off (everything is readable)."""

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord: ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    def alive_ids(self) -> list[str]: ...

    async def migrate(self, m: Migrate) -> Migrated: ...


def image_bytes(data_len: int, fot_count: int) -> int:
    """Bytes a whole copy of an object moves: header record, data and FOT."""
    return HEADER_RECORD_SIZE + data_len + 32 * fot_count


class GraphAgent:
    def __init__(
        self, cluster: GraphCluster, service: ObjectService, names: Namespace | None
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.names = names
        self._walks: OrderedDict[bytes, set[bytes]] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self.stats = {"expands_served": 0, "objects_expanded": 0, "walks": 0, "prefetches": 0}

    # -- the holder's half -------------------------------------------------------------

    async def on_expand(self, m: GraphExpand) -> GraphPart:
        """Walk on from ``m.starts`` through the objects homed here.

        An object the caller may not read is answered in ``hidden`` only when the
        coordinator asked about it (a start); met on the way, it goes back in the
        frontier, as a target homed elsewhere or missing does. So a hidden object
        and a missing ID take the same path, one step each, and a budget that ends
        the walk drops both alike."""
        service = self.service
        seen = self._walk_state(m.walk_id)
        readable = await self._read_check(m)  # None: the caller may read everything
        names_as = None if readable is None else _NameReader(m.accessor, readable, service)
        asked = {s.object_id for s in m.starts} if readable is not None else set()
        budget = m.budget or None
        used = 0
        objects: list[GraphObject] = []
        edges: list[GraphEdge] = []
        frontier: list[WalkStart] = []
        more: list[WalkStart] = []  # homed here, left for the next request
        hidden: list[WalkStart] = []  # asked about, homed here, not readable by the caller
        me = self.cluster.node_id
        truncated = False
        count = 0
        summary = m.summary  # counts only: no objects or edges sent back
        queue = deque((s.object_id, s.depth) for s in m.starts)
        store = service.store
        magic_len = len(DIRECTORY_MAGIC)
        while queue:
            oid, depth = queue.popleft()
            if oid in seen:
                continue
            if count >= EXPAND_MAX:  # bounded work per request: the rest next time
                (more if service.is_home(oid) else frontier).append(WalkStart(oid, depth))
                continue
            try:
                header, fot, head = store.metadata(oid, magic_len)
            except ObjectNotFound:
                frontier.append(WalkStart(oid, depth))
                continue
            if readable is not None and not readable(oid, header.kuid, header.default_prot):
                if oid in asked:
                    seen.add(oid)
                    hidden.append(WalkStart(oid, depth))
                else:  # as if homed elsewhere: the coordinator sends it back as a start
                    frontier.append(WalkStart(oid, depth))
                continue
            size = image_bytes(header.data_len, header.fot_count)
            if budget is not None and used + size > budget and count:
                truncated = True
                break
            seen.add(oid)
            used += size
            count += 1
            if not summary:
                copies = sorted(service.holders.get(oid, ()))
                objects.append(
                    GraphObject(
                        oid,
                        me,
                        header.max_size,
                        header.data_len,
                        header.fot_count,
                        header.version,
                        int(header.flags),
                        depth,
                        copies,
                        head == DIRECTORY_MAGIC,
                    )
                )
            end = len(fot)
            for index in range(1, header.fot_count + 1):
                at = end - FOT_ENTRY_SIZE * index
                edge = await self._edge(oid, index, fot[at : at + FOT_ENTRY_SIZE], names_as)
                if edge is None:
                    continue
                if not summary:
                    edges.append(edge)
                if edge.target == ZERO_ID or edge.target in seen:
                    continue
                if m.max_depth != NO_LIMIT and depth + 1 > m.max_depth:
                    truncated = True
                    continue
                queue.append((edge.target, depth + 1))
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # keep serving others during a long walk
        self.stats["expands_served"] += 1
        self.stats["objects_expanded"] += count
        return GraphPart(objects, edges, frontier, truncated, more, count, used, hidden)

    async def _read_check(self, m: GraphExpand) -> ReadCheck | None:
        """What the walk's caller may read (None: everything), from the node's access
        rule; the coordinator's word for who the caller is is trusted."""
        access = self.cluster.access
        if access is None:
            return None
        caps = []
        for raw in m.capabilities:
            try:
                caps.append(Capability.decode(raw))
            except InvalidCapability:
                continue  # grants nothing
        check = await access.read_rule(m.accessor, caps)
        return None if check.trusted else check

    async def _edge(
        self, oid: ObjectId, index: int, raw: bytes, names_as: _NameReader | None
    ) -> GraphEdge | None:
        head, flags, reserved = _FOT_ENTRY.unpack(raw)
        if flags & _ID_ENTRY_MASK == int(FotFlags.VALID) and reserved == _ZERO12:
            return GraphEdge(oid, ObjectId(head), index, flags)  # the common case, fast
        try:
            entry = FotEntry.decode(raw)
        except DtwzError as exc:
            return GraphEdge(oid, ZERO_ID, index, 0, "", f"FOT entry {index}: {exc}")
        if not entry.is_valid:
            return None
        if not entry.is_name:
            assert entry.target is not None
            return GraphEdge(oid, entry.target, index, int(entry.flags))
        try:
            name = self.service.store.get(oid).entry_name(entry)  # its text is in the data
        except DtwzError as exc:
            return GraphEdge(oid, ZERO_ID, index, int(entry.flags), "", str(exc))
        if self.names is None:
            return GraphEdge(oid, ZERO_ID, index, int(entry.flags), name, "no namespace")
        try:  # as the caller: only through directories it may read
            resolved = await self.names.resolve(name, caller=names_as)
        except (NamespaceError, PointerError, ClusterError, AccessDenied) as exc:
            return GraphEdge(oid, ZERO_ID, index, int(entry.flags), name, str(exc))
        return GraphEdge(oid, resolved.object_id, index, int(entry.flags), name)

    def _walk_state(self, walk_id: bytes) -> set[bytes]:
        seen = self._walks.get(walk_id)
        if seen is None:
            seen = self._walks[walk_id] = set()
            while len(self._walks) > WALKS_REMEMBERED:
                self._walks.popitem(last=False)
        else:
            self._walks.move_to_end(walk_id)
        return seen

    async def on_edge_uses(self, m: EdgeUses) -> EdgeCounts:
        uses = self.service.edge_uses
        if m.sources:
            wanted = {bytes(s) for s in m.sources}
            pairs = [(k, v) for k, v in uses.items() if k[0] in wanted]
        else:
            pairs = list(uses.items())
        return EdgeCounts([EdgeUse(ObjectId(s), ObjectId(t), n) for (s, t), n in pairs])

    # -- the coordinator's half ----------------------------------------------------------

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
            if budget is not None and _total_bytes(graph) >= budget:
                truncated = True  # the budget is spent and there is more to walk
                return True
            return False

        def expand(starts: list[WalkStart]) -> GraphExpand:
            left = 0 if budget is None else max(1, budget - _total_bytes(graph))
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
                    graph.add_node(key, **_object_attrs(o))
                    order.append(key)
            for h in part.hidden:
                hidden.setdefault(h.object_id.hex(), h.depth)
            edges.extend(part.edges)
        for key, d in sorted(hidden.items(), key=lambda kv: (kv[1], kv[0])):
            if key not in graph:
                graph.add_node(key, kind="hidden", depth=d)
        truncated |= _trim_to_budget(graph, order, budget)
        _add_edges(graph, edges)
        _drop_unreached(graph)
        if uses:
            await self._annotate_uses(graph)
        _finish(graph, truncated=truncated)
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
                    await asyncio.gather(*(self._home(o, refresh=o in stale) for o in unknown)),
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

    async def _home(self, oid: ObjectId, *, refresh: bool = False) -> str | Exception:
        try:
            return (await self.cluster.locate(oid, refresh=refresh)).home
        except (ObjectNotFound, ClusterError) as exc:
            return exc

    async def _expand(self, home: str, message: GraphExpand) -> GraphPart:
        if home == self.cluster.node_id:
            return await self.on_expand(message)
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

    async def _annotate_uses(self, graph: nx.DiGraph[str]) -> None:
        sources = [ObjectId.parse(n) for n, a in graph.nodes(data=True) if a["kind"] == "object"]
        ask = EdgeUses(sources)
        replies: list[Any] = []
        for node_id in self.cluster.alive_ids():
            if node_id == self.cluster.node_id:
                replies.append(self.on_edge_uses(ask))
            else:
                replies.append(self.cluster.request(node_id, ask))
        for reply in await asyncio.gather(*replies, return_exceptions=True):
            if not isinstance(reply, EdgeCounts):
                continue  # a member that does not answer has its counts left out
            for use in reply.counts:
                s, t = use.source.hex(), use.target.hex()
                # an edge into a hidden (or missing) object keeps 0: a count would tell
                # that it exists and is used
                if graph.has_edge(s, t) and graph.nodes[t]["kind"] == "object":
                    graph.edges[s, t]["uses"] += use.count

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

    # -- prefetch ---------------------------------------------------------------------------

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
        graph = await self.walk(root, depth=depth, budget=budget, uses=False, caller=caller)
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
                    where = await self._home(t)
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


class _NameReader:
    """A walk's caller as the namespace sees it (``dtwz.resolver.namespace.Caller``),
    to resolve the name entries of the objects it may read: it may look names up in
    a directory it may read (the holder's rule, on the header resolving just brought
    here), and changes nothing."""

    def __init__(self, kuid: ObjectId, readable: ReadCheck, service: ObjectService) -> None:
        self._kuid = kuid
        self._readable = readable
        self._service = service

    @property
    def kuid(self) -> ObjectId:
        return self._kuid

    async def may_read(self, directory: ObjectId) -> None:
        header = await self._service.header_of(directory)
        if not self._readable(directory, header.kuid, header.default_prot):
            raise AccessDenied(f"{self._kuid} may not look names up in directory {directory}")

    async def may_change(self, directory: ObjectId) -> None:
        raise AccessDenied("a walk changes no names")

    async def may_name(self, target: ObjectId) -> None:
        raise AccessDenied("a walk binds no names")


def _per_home(txn_id: bytes, home: str) -> bytes:
    return hashlib.sha256(txn_id + home.encode("utf-8")).digest()[:16]


def _stale(stale: dict[ObjectId, int], oid: ObjectId) -> bool:
    """A holder sent back an object it was asked to expand: its location was stale
    (it moved). The next step asks the directory afresh; a third time, give up."""
    stale[oid] = stale.get(oid, 0) + 1
    return stale[oid] > 2


def _total_bytes(graph: nx.DiGraph[str]) -> int:
    return sum(int(a.get("bytes", 0)) for _, a in graph.nodes(data=True))


def _finish(graph: nx.DiGraph[str], *, truncated: bool) -> None:
    """Fill in what needs the whole graph: cross edges, homes, totals."""
    homes: dict[str, str | None] = {n: a.get("home") for n, a in graph.nodes(data=True)}
    for u, v, attrs in graph.edges(data=True):
        attrs["cross"] = homes.get(u) is not None and homes.get(v) not in (None, homes[u])
    graph.graph["homes"] = sorted({h for h in homes.values() if h is not None})
    graph.graph["bytes"] = _total_bytes(graph)
    graph.graph["truncated"] = truncated


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


def _object_attrs(o: GraphObject) -> dict[str, Any]:
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


def _drop_unreached(graph: nx.DiGraph[str]) -> None:
    """Hidden and missing nodes whose every way in was trimmed off by the budget."""
    root = graph.graph["root"]
    graph.remove_nodes_from(
        [
            key
            for key, attrs in graph.nodes(data=True)
            if attrs["kind"] in ("hidden", "missing") and key != root and not graph.in_degree(key)
        ]
    )


def _trim_to_budget(graph: nx.DiGraph[str], order: list[str], budget: int | None) -> bool:
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


def _add_edges(graph: nx.DiGraph[str], edges: Sequence[GraphEdge]) -> None:
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
