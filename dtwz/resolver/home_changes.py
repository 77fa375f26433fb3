"""Directory changes run at a directory's home (docs/NAMES.md).

A change (bind, unbind, mkdir, symlink, rename) arrives as a ``DirOp`` and runs as
one local transaction at the home of the directory it changes (for a rename, of both
directories: the requester sends it here only when one node homes both). The home
orders them, so of two concurrent binds of one name exactly one wins and the other
gets ``NameExists``; the ``txn_id`` makes a retried change apply once
(``ObjectService.run_at_home``), and the home invalidates every copy of the
directory before it answers. Rights are not checked here: the node the request
entered did, and the home trusts its admitted peers (docs/SECURITY.md §9).
"""

from __future__ import annotations

from collections.abc import Callable

from dtwz.errors import (
    DirectoryNotEmpty,
    InvalidArgument,
    NameExists,
    NameNotFound,
    NamespaceError,
    ObjectNotFound,
)
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.directory_objects import DIRECTORY_SIZE, EntryKind
from dtwz.resolver.names import DIRECTORY_PROT, check_name, split_path
from dtwz.resolver.resolution import NamespaceNode
from dtwz.service.objects import ObjectService
from dtwz.store.transaction import Transaction
from dtwz.wire.kinds import DirAction
from dtwz.wire.messages import DirOp, DirResult, HomeRecord, ObjectVersion

# the directory actions (dtwz.wire.kinds.DirAction) under their old names
ACT_BIND, ACT_UNBIND, ACT_MKDIR = DirAction.BIND, DirAction.UNBIND, DirAction.MKDIR
ACT_SYMLINK, ACT_RENAME = DirAction.SYMLINK, DirAction.RENAME


class DirectoryHome:
    """Runs the changes of the directories homed here; counts them into ``stats``
    (``changes_served``)."""

    def __init__(self, node: NamespaceNode, service: ObjectService, stats: dict[str, int]) -> None:
        self.node = node
        self.service = service
        self.stats = stats

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


_Body = Callable[[DirectoryHome, Transaction, DirOp], tuple[ObjectId, int, str]]
_BODIES: dict[int, _Body] = {
    ACT_BIND: DirectoryHome._bind_body,
    ACT_UNBIND: DirectoryHome._unbind_body,
    ACT_MKDIR: DirectoryHome._mkdir_body,
    ACT_SYMLINK: DirectoryHome._symlink_body,
    ACT_RENAME: DirectoryHome._rename_body,
}
