"""The namespace as one node serves it: resolve names, and change directories at their homes.

Theory of operation
-------------------
- **Resolution** drives the pure ``Walk`` (``dtwz.resolver.names``) with directory
  objects the node opens like any other object: local ones from its store, remote
  ones as copies fetched from their homes and registered there, so that a commit to
  a directory invalidates them. Results go into a ``NameCache`` whose entries are
  checked, on every hit, against the versions of the directories they read; a
  rebinding on the path has invalidated one of them, so it is never served stale.
- **Changes** (bind, unbind, mkdir, symlink, rename) are ``DirOp`` messages run as
  one local transaction at the home of the directory they change: the home orders
  them, so of two concurrent binds of one name exactly one wins and the other gets
  ``NameExists``. A ``txn_id`` makes a retried change apply once. The home then
  invalidates every copy of the directory before it answers.
- **The root** has a fixed ID derived from ``cluster_id``; the one node whose peer
  address wins rendezvous hashing over the configured seeds creates it at start-up
  (with the fixed nonce) if its store lacks it. No other node ever creates it, so it
  exists at most once; it lives in that node's store like any object and survives
  its crashes.
- **Late binding**: the node's stores resolve FOT name entries through
  ``resolve_for_pointer``. Off the event loop it resolves fully (network included);
  on the loop it can only use what the node holds, and says so when that is not
  enough.
- **Rights** (docs/NAMES.md §8): every operation takes the ``Caller`` it runs for
  (``None``: the node itself, which may do anything). Resolving needs read on every
  directory the walk reads, checked on every lookup, cached or not (a cached
  resolution carries the directories it read); a change needs write on the
  directories it changes, checked here, on the node the request entered, before
  anything is done: the home of a directory trusts the admitted node that sends it
  a ``DirOp``, as every home trusts its peers (docs/SECURITY.md §9). A directory
  belongs to whoever made it (the kuid in its ID); the root and the directories
  made by nodes are unowned, which makes them the admin's. Default protections
  grant read at most: write on a directory is its owner's, the admin's, or a
  capability's.

New directories are homed with their parent unless a home is asked for, so a
rename within a subtree is one atomic transaction. A rename between directories of
different homes binds the new name first and then unbinds the old one: the entry is
never lost, and for a moment both names may resolve (docs/NAMES.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
from collections.abc import Callable
from typing import Protocol

from dtwz.errors import (
    CorruptObject,
    DirectoryNotEmpty,
    HomeUnreachable,
    InvalidArgument,
    NameExists,
    NameNotFound,
    NamespaceError,
    NotADirectory,
    ObjectNotFound,
    PeerUnavailable,
    UnresolvedName,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START, VERSION_OFFSET
from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC, DIRECTORY_SIZE, Entry, EntryKind
from dtwz.resolver.membership import MemberState
from dtwz.resolver.names import (
    DIRECTORY_PROT,
    ROOT_PROT,
    NameCache,
    Resolved,
    Walk,
    check_name,
    root_home_address,
    root_id,
    root_nonce,
    split_parent,
    split_path,
)
from dtwz.service.objects import ObjectService
from dtwz.store.objects import StoredObject
from dtwz.store.transaction import Transaction
from dtwz.wire.kinds import DirAction
from dtwz.wire.messages import Create, Created, DirOp, DirResult, HomeRecord, Message, ObjectVersion

__all__ = ["Caller", "Namespace", "NamespaceNode"]

log = logging.getLogger(__name__)

# the directory actions (dtwz.wire.kinds.DirAction) under their old names
ACT_BIND, ACT_UNBIND, ACT_MKDIR = DirAction.BIND, DirAction.UNBIND, DirAction.MKDIR
ACT_SYMLINK, ACT_RENAME = DirAction.SYMLINK, DirAction.RENAME
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


class Caller(Protocol):
    """Who a name operation runs for, and the checks of their rights: the node's
    access policy bound to one request (``dtwz.node.http.names.RequestCaller``)."""

    @property
    def kuid(self) -> ObjectId:
        """Who will own the directories the caller makes (zero: unowned, the admin's)."""

    async def may_read(self, directory: ObjectId) -> None:
        """``AccessDenied`` unless the caller may look names up in ``directory``."""

    async def may_change(self, directory: ObjectId) -> None:
        """``AccessDenied`` unless the caller may change ``directory``'s entries."""

    async def may_name(self, target: ObjectId) -> None:
        """``ObjectNotFound``, as for a missing ID, unless the caller may read some part
        of ``target``: one binds a name only to what one can see (as Linux's
        ``protected_hardlinks``), so a bind tells nothing of other objects."""


async def _may_change(caller: Caller | None, *directories: ObjectId) -> None:
    if caller is not None:
        for directory in directories:
            await caller.may_change(directory)


class Namespace:
    def __init__(
        self,
        node: NamespaceNode,
        service: ObjectService,
        *,
        cluster_id: str,
        seeds: list[str],
        peer_addr: str,
    ) -> None:
        self.node = node
        self.service = service
        self.cluster_id = cluster_id
        self.root = root_id(cluster_id)
        self.root_home_addr = root_home_address(cluster_id, seeds, peer_addr)
        self.is_root_home = self.root_home_addr == peer_addr
        self.cache = NameCache()
        # directories whose copies must be checked against their homes before use: a
        # change there was refused, and the refusal may overtake the invalidation of
        # our copy by the change that made it (they travel on different sockets)
        self._recheck: set[ObjectId] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = {
            "resolutions": 0,
            "walks": 0,
            "directory_reads": 0,
            "changes": 0,
            "changes_served": 0,
        }

    # -- life cycle ----------------------------------------------------------------------

    def startup(self) -> None:
        """Create the root if this node is its home and lacks it; serve late binding."""
        self._loop = asyncio.get_running_loop()
        store = self.service.store
        if self.is_root_home and not store.exists(self.root):
            with store.transaction() as tx:
                oid = tx.create(
                    DIRECTORY_SIZE, default_prot=ROOT_PROT, nonce=root_nonce(self.cluster_id)
                )
                dirs.init_directory(tx, oid)
            log.info("created the root directory %s of cluster %r", oid.hex(), self.cluster_id)
        store.name_resolver = self.resolve_for_pointer
        self.service.name_resolver = self.resolve_for_pointer

    def status(self) -> dict[str, int]:
        return {
            **self.stats,
            **{f"cache_{k}": v for k, v in self.cache.stats.items()},
            "cached_names": len(self.cache),
        }

    # -- reading directories -------------------------------------------------------------

    def _version_of(self, oid: ObjectId) -> int | None:
        """The version of a directory this node holds now (None: it holds none)."""
        if oid in self._recheck:
            return None
        copy = self.service.copies.peek(oid)
        if copy is not None:
            return copy.version
        store = self.service.store
        if not store.exists(oid):
            return None
        return int(_U64.unpack_from(store.get(oid).view, VERSION_OFFSET)[0])

    async def _open(
        self, oid: ObjectId, came_from: ObjectId | None = None
    ) -> tuple[StoredObject, int]:
        self.stats["directory_reads"] += 1
        latest = oid in self._recheck
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
                self._recheck.discard(oid)
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
            if caller is not None:
                for oid, _ in cached.deps:
                    await caller.may_read(oid)
            return cached
        result: Resolved | None = None
        for attempt in range(WALK_ATTEMPTS):
            self.stats["walks"] += 1
            walk = Walk(path, self.root, follow_last=follow_last)
            try:
                while (need := walk.needs) is not None:
                    obj, version = await self._open(need, walk.came_from)
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
        where = await self._directory(path, caller)
        obj, _ = await self._open(where.object_id)
        if caller is not None:
            await caller.may_read(where.object_id)
        return where, dirs.entries(obj)

    async def _directory(self, path: str, caller: Caller | None = None) -> Resolved:
        where = await self.resolve(path, caller=caller)
        if where.kind != EntryKind.DIRECTORY:
            raise NotADirectory(f"{path} is not a directory")
        return where

    # -- changes ---------------------------------------------------------------------------

    async def _change(self, op: DirOp) -> DirResult:
        """Run ``op`` at the home of its directory (here or there)."""
        self.stats["changes"] += 1
        if self.service.is_home(op.directory):
            return await self.on_dir_op(op)
        home = (await self.node.locate(op.directory)).home
        for attempt in range(2):  # a retry carries the same txn_id: it applies once
            try:
                reply = await self.node.request(home, op)
                break
            except PeerUnavailable as exc:
                if attempt:
                    raise HomeUnreachable(f"home {home} of the directory did not answer") from exc
            except NamespaceError:
                self._recheck.update(oid for oid in (op.directory, op.other) if oid != ZERO_ID)
                raise
        if not isinstance(reply, DirResult):
            raise NamespaceError(f"home {home} answered a directory change with {reply!r}")
        for ov in reply.versions:
            self.service.copies.invalidate(ov.object_id, ov.version)
        return reply

    async def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        home: str | None = None,
        txn_id: bytes = b"",
        caller: Caller | None = None,
        prot: int = DIRECTORY_PROT,
    ) -> ObjectId:
        """Make a directory, owned by ``caller``, with default protections ``prot``
        (read for all, or none); with ``parents``, also the missing ones above it (with
        the default protections), and an existing directory is not an error."""
        if prot & ~int(DIRECTORY_PROT):
            raise InvalidArgument(
                f"a directory's default protections grant read at most, not {prot:#x}: "
                "write on a directory is its owner's (grant it to others with a capability)"
            )
        txn_id = txn_id or os.urandom(16)
        parent_path, name = split_parent(path)
        if parents:
            try:
                found = await self.resolve(path, caller=caller)
            except NameNotFound:
                pass
            else:
                if found.kind != EntryKind.DIRECTORY:
                    raise NameExists(f"{path} exists and is not a directory")
                return found.object_id
            if split_path(parent_path):
                await self.mkdir(
                    parent_path,
                    parents=True,
                    home=home,
                    txn_id=_derived(txn_id, parent_path),
                    caller=caller,
                )
        parent = await self._directory(parent_path, caller)
        await _may_change(caller, parent.object_id)
        owner = ZERO_ID if caller is None else caller.kuid
        with_parent = home is None or home == await self._home(parent.object_id)
        try:
            if with_parent and prot == DIRECTORY_PROT:
                # made and bound in one transaction at the parent's home (MKDIR's target
                # carries the owner, as Create's kuid does)
                op = DirOp(txn_id, ACT_MKDIR, parent.object_id, name, target=owner)
                result = await self._change(op)
            else:  # made first, then bound: not atomic (docs/NAMES.md §4)
                where = home or await self._home(parent.object_id)
                new = await self._create_directory_at(where, txn_id, owner, prot)
                op = DirOp(txn_id, ACT_BIND, parent.object_id, name, EntryKind.DIRECTORY, new)
                await self._change(op)
                return new
        except NameExists:
            if not parents:
                raise
            # a concurrent mkdir -p won: fine if a directory
            found = await self.resolve(path, caller=caller)
            if found.kind != EntryKind.DIRECTORY:
                raise
            return found.object_id
        return result.target

    async def _create_directory_at(
        self, home: str, txn_id: bytes, owner: ObjectId, prot: int
    ) -> ObjectId:
        created: Message
        empty = dirs.empty_directory()
        if home == self.node.node_id:
            created = await self.service.create(
                DIRECTORY_SIZE, 0, prot, empty, _derived(txn_id, "create"), kuid=owner
            )
        else:
            message = Create(_derived(txn_id, "create"), DIRECTORY_SIZE, 0, prot, empty, owner)
            created = await self.node.request(home, message)
        assert isinstance(created, Created)
        return created.object_id

    async def bind(
        self,
        path: str,
        target: ObjectId,
        *,
        replace: bool = False,
        txn_id: bytes = b"",
        caller: Caller | None = None,
    ) -> ObjectId | None:
        """Bind ``path`` to the object ``target`` (which must exist); the target it
        replaced, if ``replace`` allowed one. A directory is bound as a directory."""
        parent_path, name = split_parent(path)
        parent = await self._directory(parent_path, caller)
        await _may_change(caller, parent.object_id)
        if caller is not None:
            await caller.may_name(target)
        # the target must exist; a directory is bound as one
        data = await self.service.peek(target, DATA_START, len(DIRECTORY_MAGIC))
        kind = EntryKind.DIRECTORY if data == DIRECTORY_MAGIC else EntryKind.OBJECT
        op = DirOp(
            txn_id or os.urandom(16),
            ACT_BIND,
            parent.object_id,
            name,
            kind,
            target,
            replace=replace,
        )
        result = await self._change(op)
        return None if result.target == ZERO_ID else result.target

    async def symlink(
        self, path: str, text: str, *, txn_id: bytes = b"", caller: Caller | None = None
    ) -> None:
        split_path(text, relative=True)  # InvalidName now rather than at every resolution
        parent_path, name = split_parent(path)
        parent = await self._directory(parent_path, caller)
        await _may_change(caller, parent.object_id)
        await self._change(
            DirOp(txn_id or os.urandom(16), ACT_SYMLINK, parent.object_id, name, text=text)
        )

    async def unbind(
        self, path: str, *, txn_id: bytes = b"", caller: Caller | None = None
    ) -> Entry:
        """Remove the binding ``path`` (a directory only when empty); what it was."""
        entry = await self.lookup_entry(path, caller=caller)
        if entry.parent is None:
            raise InvalidArgument("the root directory cannot be unbound")
        await _may_change(caller, entry.parent)
        if entry.kind == EntryKind.DIRECTORY:
            obj, _ = await self._open(entry.object_id)
            if dirs.entries(obj):
                raise DirectoryNotEmpty(f"{path} is not empty")
        op = DirOp(
            txn_id or os.urandom(16),
            ACT_UNBIND,
            entry.parent,
            entry.name,
            entry.kind,
            entry.object_id,
        )
        result = await self._change(op)
        target = None if result.target == ZERO_ID else result.target
        return Entry(0, EntryKind(result.kind), entry.name, target, result.text)

    async def rename(
        self,
        src: str,
        dst: str,
        *,
        replace: bool = False,
        txn_id: bytes = b"",
        caller: Caller | None = None,
    ) -> Entry:
        """Move the binding ``src`` to ``dst``; the entry moved. Needs write on both
        directories, checked before either changes."""
        txn_id = txn_id or os.urandom(16)
        split_parent(src)
        dst_parent_path, dst_name = split_parent(dst)
        entry = await self.lookup_entry(src, caller=caller)
        if entry.parent is None:
            raise InvalidArgument("the root directory cannot be renamed")
        dst_parent = await self._directory(dst_parent_path, caller)
        await _may_change(caller, entry.parent, dst_parent.object_id)
        on_path = (*dst_parent.directories, dst_parent.object_id)
        if entry.kind == EntryKind.DIRECTORY and entry.object_id in on_path:
            raise NamespaceError(f"cannot move {src} into itself ({dst})")
        moved = Entry(0, entry.kind, dst_name, _target(entry.object_id), entry.text)
        if entry.parent == dst_parent.object_id and entry.name == dst_name:
            return moved
        src_home = await self._home(entry.parent)
        if src_home == await self._home(dst_parent.object_id):
            op = DirOp(
                txn_id,
                ACT_RENAME,
                entry.parent,
                entry.name,
                entry.kind,
                entry.object_id,
                dst_parent.object_id,
                dst_name,
                replace,
            )
            await self._change(op)
            return moved
        # directories of two homes: bind the new name, then unbind the old one
        if entry.kind == EntryKind.SYMLINK:
            bind_op = DirOp(
                _derived(txn_id, "bind"),
                ACT_SYMLINK,
                dst_parent.object_id,
                dst_name,
                text=entry.text,
            )
        else:
            bind_op = DirOp(
                _derived(txn_id, "bind"),
                ACT_BIND,
                dst_parent.object_id,
                dst_name,
                entry.kind,
                entry.object_id,
                replace=replace,
            )
        await self._change(bind_op)
        await self._change(
            DirOp(
                _derived(txn_id, "unbind"),
                ACT_UNBIND,
                entry.parent,
                entry.name,
                entry.kind,
                entry.object_id,
            )
        )
        return moved

    async def _home(self, oid: ObjectId) -> str:
        if self.service.is_home(oid):
            return self.node.node_id
        return (await self.node.locate(oid)).home

    # -- this node as the home of a directory ----------------------------------------------

    async def on_dir_op(self, m: DirOp) -> DirResult:
        """Run a directory change here, where the directory lives."""
        for oid in (m.directory, m.other):
            if oid != ZERO_ID and not self.service.is_home(oid):
                raise ObjectNotFound(f"directory {oid.hex()} is not homed on {self.node.node_id}")
        check_name(m.name)
        if m.action == ACT_RENAME:
            check_name(m.text)
        body = _BODIES.get(m.action)
        if body is None:
            raise InvalidArgument(f"unknown directory action {m.action}")
        self.stats["changes_served"] += 1

        def run(tx: Transaction) -> tuple[ObjectId, int, str]:
            assert body is not None
            return body(self, tx, m)

        def reply(value: tuple[ObjectId, int, str], versions: list[ObjectVersion]) -> DirResult:
            return DirResult(value[0], value[1], value[2], versions)

        result = await self.service.run_at_home(m.txn_id, run, reply)
        if m.action == ACT_MKDIR:
            await self.node.publish_created(HomeRecord(result.target, self.node.node_id, 1, 1))
        return result

    def _bind_body(self, tx: Transaction, m: DirOp) -> tuple[ObjectId, int, str]:
        if m.kind not in (EntryKind.OBJECT, EntryKind.DIRECTORY) or m.target == ZERO_ID:
            raise InvalidArgument("a binding names an object or a directory by its ID")
        old = dirs.bind(tx, m.directory, m.name, m.target, EntryKind(m.kind), replace=m.replace)
        return old or ZERO_ID, m.kind, ""

    def _unbind_body(self, tx: Transaction, m: DirOp) -> tuple[ObjectId, int, str]:
        old = dirs.tx_find(tx, m.directory, m.name)
        if old is None:
            raise NameNotFound(f"{m.name!r} is not bound")
        if m.target != ZERO_ID and old.target != m.target:
            raise NamespaceError(f"{m.name!r} was rebound meanwhile; look it up again")
        if (
            old.kind == EntryKind.DIRECTORY
            and old.target is not None
            and self.service.is_home(old.target)
            and dirs.tx_entries(tx, old.target)
        ):
            raise DirectoryNotEmpty(f"directory {m.name!r} is not empty")
        dirs.unbind(tx, m.directory, m.name)
        return old.target or ZERO_ID, old.kind, old.text

    def _mkdir_body(self, tx: Transaction, m: DirOp) -> tuple[ObjectId, int, str]:
        if dirs.tx_find(tx, m.directory, m.name) is not None:
            raise NameExists(f"{m.name!r} is bound already")
        # owned by the requester the entry node authenticated (``target``), read for all
        new = tx.create(DIRECTORY_SIZE, default_prot=DIRECTORY_PROT, kuid=m.target)
        dirs.init_directory(tx, new)
        dirs.bind(tx, m.directory, m.name, new, EntryKind.DIRECTORY)
        return new, EntryKind.DIRECTORY, ""

    def _symlink_body(self, tx: Transaction, m: DirOp) -> tuple[ObjectId, int, str]:
        split_path(m.text, relative=True)
        dirs.symlink(tx, m.directory, m.name, m.text)
        return ZERO_ID, EntryKind.SYMLINK, m.text

    def _rename_body(self, tx: Transaction, m: DirOp) -> tuple[ObjectId, int, str]:
        old = dirs.tx_find(tx, m.directory, m.name)
        if old is None:
            raise NameNotFound(f"{m.name!r} is not bound")
        if m.target != ZERO_ID and old.target != m.target:
            raise NamespaceError(f"{m.name!r} was rebound meanwhile; look it up again")
        if old.target == m.other:
            raise NamespaceError(f"cannot move directory {m.name!r} into itself")
        dirs.unbind(tx, m.directory, m.name)
        if old.kind == EntryKind.SYMLINK:
            dirs.symlink(tx, m.other, m.text, old.text)
        else:
            assert old.target is not None
            dirs.bind(tx, m.other, m.text, old.target, old.kind, replace=m.replace)
        return old.target or ZERO_ID, old.kind, old.text


_Body = Callable[[Namespace, Transaction, DirOp], tuple[ObjectId, int, str]]
_BODIES: dict[int, _Body] = {
    ACT_BIND: Namespace._bind_body,
    ACT_UNBIND: Namespace._unbind_body,
    ACT_MKDIR: Namespace._mkdir_body,
    ACT_SYMLINK: Namespace._symlink_body,
    ACT_RENAME: Namespace._rename_body,
}


def _derived(txn_id: bytes, what: str) -> bytes:
    """A sub-operation's transaction ID: retries of the whole derive the same ones."""
    return hashlib.blake2b(txn_id + b"\0" + what.encode(), digest_size=16).digest()


def _target(oid: ObjectId) -> ObjectId | None:
    return None if oid == ZERO_ID else oid
