"""Directory changes as the node a request entered runs them (docs/NAMES.md).

``DirectoryChanges`` turns bind, unbind, mkdir, symlink and rename of paths into
``DirOp`` messages: it resolves the directories they change, checks the caller's
write on them before anything is done (``dtwz.resolver.rights``), and sends each op
to the home of its directory (``dtwz.resolver.home_changes`` runs it there), with a
``txn_id`` so that a retry applies once.

New directories are homed with their parent unless a home is asked for, so a rename
within a subtree is one atomic transaction. A rename between directories of
different homes binds the new name first and then unbinds the old one: the entry is
never lost, and for a moment both names may resolve. A change the home refused
marks the directories for a fresh read, since the refusal may overtake the
invalidation of our copy by the change that caused it.
"""

from __future__ import annotations

import hashlib
import os

from dtwz.errors import (
    DirectoryNotEmpty,
    HomeUnreachable,
    InvalidArgument,
    NameExists,
    NameNotFound,
    NamespaceError,
    PeerUnavailable,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START
from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.directory_objects import DIRECTORY_MAGIC, DIRECTORY_SIZE, Entry, EntryKind
from dtwz.resolver.home_changes import (
    ACT_BIND,
    ACT_MKDIR,
    ACT_RENAME,
    ACT_SYMLINK,
    ACT_UNBIND,
    DirectoryHome,
)
from dtwz.resolver.names import DIRECTORY_PROT, split_parent, split_path
from dtwz.resolver.resolution import NamespaceNode, PathResolver
from dtwz.resolver.rights import Caller, may_change
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import Create, Created, DirOp, DirResult, Message


class DirectoryChanges:
    """Changes directories for this node's callers; counts into ``stats``
    (``changes``). ``at_home`` runs the changes of directories homed here."""

    def __init__(
        self,
        node: NamespaceNode,
        service: ObjectService,
        resolver: PathResolver,
        at_home: DirectoryHome,
        stats: dict[str, int],
    ) -> None:
        self.node = node
        self.service = service
        self.stats = stats
        self._resolver = resolver
        self._at_home = at_home

    async def _change(self, op: DirOp) -> DirResult:
        """Run ``op`` at the home of its directory (here or there)."""
        self.stats["changes"] += 1
        if self.service.is_home(op.directory):
            return await self._at_home.on_dir_op(op)
        home = (await self.node.locate(op.directory)).home
        for attempt in range(2):  # a retry carries the same txn_id: it applies once
            try:
                reply = await self.node.request(home, op)
                break
            except PeerUnavailable as exc:
                if attempt:
                    raise HomeUnreachable(f"home {home} of the directory did not answer") from exc
            except NamespaceError:
                self._resolver.recheck.update(
                    oid for oid in (op.directory, op.other) if oid != ZERO_ID
                )
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
                found = await self._resolver.resolve(path, caller=caller)
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
        parent = await self._resolver.resolve_directory(parent_path, caller)
        await may_change(caller, parent.object_id)
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
            found = await self._resolver.resolve(path, caller=caller)
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
        parent = await self._resolver.resolve_directory(parent_path, caller)
        await may_change(caller, parent.object_id)
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
        parent = await self._resolver.resolve_directory(parent_path, caller)
        await may_change(caller, parent.object_id)
        await self._change(
            DirOp(txn_id or os.urandom(16), ACT_SYMLINK, parent.object_id, name, text=text)
        )

    async def unbind(
        self, path: str, *, txn_id: bytes = b"", caller: Caller | None = None
    ) -> Entry:
        """Remove the binding ``path`` (a directory only when empty); what it was."""
        entry = await self._resolver.lookup_entry(path, caller=caller)
        if entry.parent is None:
            raise InvalidArgument("the root directory cannot be unbound")
        await may_change(caller, entry.parent)
        if entry.kind == EntryKind.DIRECTORY:
            obj, _ = await self._resolver.open_directory(entry.object_id)
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
        entry = await self._resolver.lookup_entry(src, caller=caller)
        if entry.parent is None:
            raise InvalidArgument("the root directory cannot be renamed")
        dst_parent = await self._resolver.resolve_directory(dst_parent_path, caller)
        await may_change(caller, entry.parent, dst_parent.object_id)
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


def _derived(txn_id: bytes, what: str) -> bytes:
    """A sub-operation's transaction ID: retries of the whole derive the same ones."""
    return hashlib.blake2b(txn_id + b"\0" + what.encode(), digest_size=16).digest()


def _target(oid: ObjectId) -> ObjectId | None:
    return None if oid == ZERO_ID else oid
