"""The holder's half of a walk: expand what this node homes (docs/GRAPH.md).

A node asked about some objects walks on from them through every object it homes,
reading headers and FOT entries in place (no copy), to the walk's depth and byte
budget; targets homed elsewhere go back as the frontier, and what is left over when
one request has done ``EXPAND_MAX`` objects goes back as ``more``. Name entries are
resolved through the namespace, as the walk's caller, so a late-bound edge leads
where the name is bound now.

Invariants: an object is expanded at most once per walk (the holder remembers what
it expanded for the last ``WALKS_REMEMBERED`` walks). An object the caller may not
read (the node's read rule, one ``ReadCheck`` per request) is *hidden*: not expanded,
not counted, and nothing of it leaves the holder; a missing object looks the same to
such a caller and takes the same path (see ``Holder.on_expand``).
"""

from __future__ import annotations

import asyncio
import struct
from collections import OrderedDict, deque

from dtwz.errors import (
    AccessDenied,
    ClusterError,
    DtwzError,
    InvalidCapability,
    NamespaceError,
    ObjectNotFound,
    PointerError,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import FOT_ENTRY_SIZE, FotEntry, FotFlags
from dtwz.graph.cluster import NO_LIMIT, GraphCluster, ReadCheck, image_bytes
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC
from dtwz.resolver.namespace import Namespace
from dtwz.security.capabilities import Capability
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import GraphEdge, GraphExpand, GraphObject, GraphPart, WalkStart

WALKS_REMEMBERED = 64  # walks whose expanded objects a holder remembers
YIELD_EVERY = 512  # objects expanded between yields to the event loop
EXPAND_MAX = 4096  # objects one GraphExpand answers with at most

_FOT_ENTRY = struct.Struct("<16sI12s")  # docs/FORMAT.md: target | flags | reserved
# an ID entry: VALID, not NAME, no unknown bits (anything else takes the careful path)
_ID_ENTRY_MASK = ~int(FotFlags.READ | FotFlags.WRITE | FotFlags.EXEC) & 0xFFFFFFFF
_ZERO12 = bytes(12)


class Holder:
    """Answers ``GraphExpand`` for the objects homed here; counts into ``stats``
    (``expands_served``, ``objects_expanded``), the dict the agent reports."""

    def __init__(
        self,
        cluster: GraphCluster,
        service: ObjectService,
        names: Namespace | None,
        stats: dict[str, int],
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.names = names
        self.stats = stats
        self._walks: OrderedDict[bytes, set[bytes]] = OrderedDict()

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
