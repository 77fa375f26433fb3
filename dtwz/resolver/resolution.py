"""Path resolution as one node does it (docs/NAMES.md).

``PathResolver`` drives the pure ``Walk`` (``dtwz.resolver.names``) with directory
objects the node opens like any other object: local ones from its store, remote ones
as copies fetched from their homes and registered there, so that a commit to a
directory invalidates them. A cold walk guesses where the next directory lives (the
root where the seeds say, others with their parent) to skip the location directory.

Invariants: results go into a ``NameCache`` whose entries are checked, on every hit,
against the versions of the directories they read, so a rebinding on the path is
never served stale; a walk that saw a directory change while reading it is not cached
(seqlock-style). The caller's read is checked on every directory, cached or not
(``dtwz.resolver.rights``). Late binding (``resolve_for_pointer``) resolves fully off
the event loop; on the loop it can only use what the node holds, and says so when
that is not enough.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

from dtwz.errors import (
    CorruptObject,
    HomeUnreachable,
    NamespaceError,
    NotADirectory,
    ObjectNotFound,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import VERSION_OFFSET
from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.directory_objects import Entry, EntryKind
from dtwz.resolver.membership import MemberState
from dtwz.resolver.names import NameCache, Resolved, Walk
from dtwz.resolver.rights import Caller, may_read_resolved
from dtwz.service.objects import ObjectService
from dtwz.store.objects import StoredObject
from dtwz.wire.messages import HomeRecord, Message

POINTER_TIMEOUT = 30.0  # seconds a blocking late-bound dereference may take
WALK_ATTEMPTS = 3
_U64 = struct.Struct("<Q")


class NamespaceNode(Protocol):
    """What the namespace needs from its node (``dtwz.node.server.Node``)."""

    node_id: str

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord: ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    async def publish_created(self, record: HomeRecord) -> None: ...

    def member_at(self, peer_addr: str) -> tuple[str, int] | None: ...

    def hint_location(self, oid: ObjectId, home: str) -> bool: ...


class PathResolver:
    """Resolves paths for this node; counts into ``stats`` (``resolutions``, ``walks``,
    ``directory_reads``), the dict the namespace reports."""

    def __init__(
        self,
        node: NamespaceNode,
        service: ObjectService,
        *,
        cluster_id: str,
        root: ObjectId,
        root_home_addr: str,
        stats: dict[str, int],
    ) -> None:
        self.node = node
        self.service = service
        self.cluster_id = cluster_id
        self.root = root
        self.root_home_addr = root_home_addr
        self.stats = stats
        self.cache = NameCache()
        # directories whose copies must be checked against their homes before use: a
        # change there was refused, and the refusal may overtake the invalidation of
        # our copy by the change that made it (they travel on different sockets)
        self.recheck: set[ObjectId] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop a late-bound dereference off it resolves on."""
        self._loop = loop

    def _version_of(self, oid: ObjectId) -> int | None:
        """The version of a directory this node holds now (None: it holds none)."""
        if oid in self.recheck:
            return None
        copy = self.service.copies.peek(oid)
        if copy is not None:
            return copy.version
        store = self.service.store
        if not store.exists(oid):
            return None
        return int(_U64.unpack_from(store.get(oid).view, VERSION_OFFSET)[0])

    async def open_directory(
        self, oid: ObjectId, came_from: ObjectId | None = None
    ) -> tuple[StoredObject, int]:
        self.stats["directory_reads"] += 1
        latest = oid in self.recheck
        try:
            try:
                hinted = self._hint(oid, came_from)
                obj, version, _ = await self.service.open_whole(oid, latest=latest)
            except ObjectNotFound:
                if not hinted:
                    raise
                # a wrong guess: the ordinary way (it says so if the real home is down)
                obj, version, _ = await self.service.open_whole(oid, latest=latest)
            if latest:
                self.recheck.discard(oid)
        except (ObjectNotFound, HomeUnreachable) as exc:
            if oid != self.root:
                raise
            raise HomeUnreachable(self._root_unavailable(exc)) from exc
        return obj, version

    def _root_unavailable(self, exc: Exception) -> str:
        member = self.node.member_at(self.root_home_addr)
        who = f"node {member[0]}" if member else "no member"
        state = "" if member is None else f" ({MemberState(member[1]).name.lower()})"
        return (
            f"the root directory {self.root.hex()} of cluster {self.cluster_id!r} is homed "
            f"by the node at {self.root_home_addr} (chosen from the seeds): {who} there"
            f"{state}; {exc}"
        )

    def _hint(self, oid: ObjectId, came_from: ObjectId | None) -> bool:
        """Guess where a directory about to be read lives, so that a cold walk fetches
        it without asking the location directory first: the root where the seeds say,
        others with their parent unless made elsewhere. Whether a guess was placed."""
        service = self.service
        if service.copies.peek(oid) is not None or service.is_home(oid):
            return False
        if oid == self.root:
            member = self.node.member_at(self.root_home_addr)
            home = member[0] if member is not None else None
        elif came_from is not None and (parent := service.copies.peek(came_from)) is not None:
            home = parent.home
        else:
            return False
        if home is None or home == self.node.node_id:
            return False
        return self.node.hint_location(oid, home)

    def _held(self, oid: ObjectId) -> tuple[StoredObject, int]:
        """A directory this node holds, without a round trip (``ObjectNotFound`` if none)."""
        obj = self.service.get(oid)
        version = self._version_of(oid)
        if version is None:
            raise ObjectNotFound(f"directory {oid.hex()} is not held here")
        return obj, version

    # -- resolution ----------------------------------------------------------------------

    async def resolve(
        self, path: str, *, follow_last: bool = True, caller: Caller | None = None
    ) -> Resolved:
        """What ``path`` names now (``NameNotFound``, ``NotADirectory``, ``SymlinkLoop``...).

        ``caller`` must be allowed to read every directory the walk reads, also when
        the answer comes from the cache (``AccessDenied`` otherwise); a directory is
        checked before the walk looks into it, so a refusal tells nothing of its
        entries."""
        self.stats["resolutions"] += 1
        cached = self.cache.get(path, follow_last, self._version_of)
        if cached is not None:
            await may_read_resolved(caller, cached)
            return cached
        result: Resolved | None = None
        for attempt in range(WALK_ATTEMPTS):
            self.stats["walks"] += 1
            walk = Walk(path, self.root, follow_last=follow_last)
            try:
                while (need := walk.needs) is not None:
                    obj, version = await self.open_directory(need, walk.came_from)
                    if caller is not None:  # after the fetch: its header is here now
                        await caller.may_read(need)
                    walk.feed(obj, version)
            except CorruptObject:
                # a directory homed here is read from its live mapping: a commit being
                # applied meanwhile can look torn; only a read that stays torn is corrupt
                if attempt == WALK_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0)
                continue
            result = walk.result
            assert result is not None
            if all(self._version_of(oid) == version for oid, version in result.deps):
                self.cache.put(result, follow_last)
                return result
            # a directory changed while it was read (seqlock-style check): again
        assert result is not None
        return result  # it keeps changing: an answer of the moment, not cached

    def _resolve_held(self, path: str) -> Resolved:
        cached = self.cache.get(path, True, self._version_of)
        if cached is not None:
            return cached
        walk = Walk(path, self.root)
        while (need := walk.needs) is not None:
            try:
                obj, version = self._held(need)
            except ObjectNotFound as exc:
                raise UnresolvedName(
                    f"resolving {path!r} needs directory {need.hex()}, which this node does "
                    "not hold, and a dereference on the node's event loop cannot wait for it"
                ) from exc
            walk.feed(obj, version)
        assert walk.result is not None
        self.cache.put(walk.result, True)
        return walk.result

    def resolve_for_pointer(self, name: str, source: ObjectId) -> ObjectId:
        """The ``NameResolver`` of the node's stores: a name FOT entry, resolved now."""
        try:
            if not name.startswith("/"):
                raise UnresolvedName(f"name {name!r} is not an absolute path of the namespace")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None or self._loop is None:
                resolved = self._resolve_held(name)
            else:
                future = asyncio.run_coroutine_threadsafe(self.resolve(name), self._loop)
                resolved = future.result(POINTER_TIMEOUT)
        except (NamespaceError, UnresolvedName) as exc:
            raise UnresolvedName(
                f"name {name!r} (in an FOT entry of {source.hex()}): {exc}"
            ) from exc
        return resolved.object_id

    async def lookup_entry(self, path: str, *, caller: Caller | None = None) -> Resolved:
        """The binding ``path`` names, symbolic links at the end not followed."""
        return await self.resolve(path, follow_last=False, caller=caller)

    async def listdir(
        self, path: str, *, caller: Caller | None = None
    ) -> tuple[Resolved, list[Entry]]:
        """The directory ``path`` names and its entries (read on it and on the way)."""
        where = await self.resolve_directory(path, caller)
        obj, _ = await self.open_directory(where.object_id)
        if caller is not None:
            await caller.may_read(where.object_id)
        return where, dirs.entries(obj)

    async def resolve_directory(self, path: str, caller: Caller | None = None) -> Resolved:
        where = await self.resolve(path, caller=caller)
        if where.kind != EntryKind.DIRECTORY:
            raise NotADirectory(f"{path} is not a directory")
        return where
