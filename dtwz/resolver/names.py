"""The name half of the resolver, pure: the root's identity, the walk, the cache.

Theory of operation
-------------------
A name is an absolute path (``/kvs/index``); its syntax (``split_path``,
``check_name`` and the limits) lives in ``dtwz.format.names`` and is re-exported
here (docs/NAMES.md). It is resolved by walking directory
objects (``dtwz.resolver.directory_objects``) from the root, whose ID every node derives
from the cluster's identity (``root_id``), so no node has to ask where the
namespace starts.

``Walk`` is the walk as a state machine with no I/O, in the style of a sans-I/O
protocol: ``needs`` names the directory whose bytes it wants next, the driver
(a node, asynchronously; a test, from memory) reads that directory however it can
and ``feed``s it back with its version, until ``result`` is set or an error is
raised. Symbolic links are expanded in the walk; ``..`` goes back to the directory
the walk came from.

``NameCache`` keeps resolved names. Each entry remembers the (directory, version)
pairs its walk read; a hit is valid only while every one of those directories is
still at that version, which the caller checks against what it holds (a node: its
local objects and its copies, which the homes invalidate on every commit). So a
rebinding anywhere on a path is seen by the next lookup, with no timer and no
extra round trip. The cache knows nothing of rights: whoever serves a hit checks
that its caller may read each directory in ``deps`` (``Namespace.resolve``).

Limits: a walk follows at most 32 symbolic links (``SymlinkLoop``); the limits of
names and paths are those of ``dtwz.format.names`` (``InvalidName``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dtwz.errors import InvalidName, NameNotFound, NotADirectory, SymlinkLoop
from dtwz.format.ids import ZERO_ID, ObjectId, derive_object_id
from dtwz.format.layout import Protection
from dtwz.format.names import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    check_name,
    is_name,
    join,
    split_parent,
    split_path,
)
from dtwz.resolver.directory_objects import EntryKind, find, is_directory
from dtwz.resolver.locations import rendezvous_owners

if TYPE_CHECKING:
    from dtwz.store.objects import StoredObject

__all__ = [
    "DIRECTORY_PROT",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "MAX_SYMLINKS",
    "ROOT_PROT",
    "NameCache",
    "Resolved",
    "Walk",
    "check_name",
    "is_name",
    "join",
    "root_home_address",
    "root_id",
    "split_parent",
    "split_path",
]

MAX_SYMLINKS = 32
# The root's default protections, fixed in its ID. Its WRITE bit grants nothing: no
# directory's default protections grant WRITE (docs/NAMES.md §8), so the root, which
# no key owns, is changed by the admin alone.
ROOT_PROT = Protection.READ | Protection.WRITE
# A new directory's default protections unless its owner says otherwise: anyone may
# look names up in it, only its owner (the admin, a capability) may change them.
DIRECTORY_PROT = Protection.READ

# -- the root ---------------------------------------------------------------------------


def _root_nonce(cluster_id: str) -> bytes:
    return hashlib.blake2b(b"dtwz root directory\0" + cluster_id.encode(), digest_size=16).digest()


def root_id(cluster_id: str) -> ObjectId:
    """The root directory's ID: a fixed function of the cluster's identity."""
    return derive_object_id(_root_nonce(cluster_id), ZERO_ID, 0, int(ROOT_PROT))


def root_nonce(cluster_id: str) -> bytes:
    """The nonce the root is created with (so its ID is ``root_id``)."""
    return _root_nonce(cluster_id)


def root_home_address(cluster_id: str, seeds: Sequence[str], own_address: str) -> str:
    """The peer address of the node that homes (and alone may create) the root.

    Rendezvous hashing of the root ID over the *seed* addresses, not the live
    members: the answer depends on configuration every node shares, never on who
    is up, so two nodes can never both think they should create the root. A node
    with no seeds is a cluster of one and homes its own root.
    """
    if not seeds:
        return own_address
    return rendezvous_owners(root_id(cluster_id), seeds, 1)[0]


# -- the walk ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a path names.

    ``object_id`` is the target (ZERO_ID for a symbolic link not followed, whose
    text is ``text``); ``parent`` the directory holding the last binding (None for
    the root); ``directories`` every directory from the root to ``parent``; ``deps``
    the (directory, version) pairs the walk read, for cache validation.
    """

    path: str
    object_id: ObjectId
    kind: EntryKind
    parent: ObjectId | None
    name: str
    directories: tuple[ObjectId, ...]
    deps: tuple[tuple[ObjectId, int], ...]
    text: str = ""


class Walk:
    """One path resolution as a state machine (see the module docstring)."""

    __slots__ = (
        "_deps",
        "_links",
        "_names",
        "_path",
        "_root",
        "_stack",
        "_todo",
        "follow_last",
        "result",
    )

    def __init__(self, path: str, root: ObjectId, *, follow_last: bool = True) -> None:
        self._path = path
        self._root = root
        self._todo = split_path(path)[::-1]  # a stack: the next component is last
        self._stack: list[ObjectId] = [root]  # directories from the root to the current one
        self._names: list[str] = []  # their names, for messages
        self._deps: dict[ObjectId, int] = {}
        self._links = 0
        self.follow_last = follow_last
        self.result: Resolved | None = None
        self._advance()

    @property
    def needs(self) -> ObjectId | None:
        """The directory to read next, or None once ``result`` is set."""
        return None if self.result is not None else self._stack[-1]

    @property
    def came_from(self) -> ObjectId | None:
        """The directory the walk reached ``needs`` through (None for the root)."""
        return self._stack[-2] if len(self._stack) > 1 else None

    def _where(self) -> str:
        return join(self._names)

    def _advance(self) -> None:
        """Consume what needs no directory bytes ('..'); finish when nothing is left."""
        todo = self._todo
        while todo and todo[-1] == "..":
            todo.pop()
            if len(self._stack) > 1:
                self._stack.pop()
                self._names.pop()
        if not todo:
            here = self._stack[-1]
            parent = self._stack[-2] if len(self._stack) > 1 else None
            name = self._names[-1] if self._names else ""
            self._finish(here, EntryKind.DIRECTORY, parent, name, tuple(self._stack[:-1]))

    def _finish(
        self,
        oid: ObjectId,
        kind: EntryKind,
        parent: ObjectId | None,
        name: str,
        directories: tuple[ObjectId, ...],
        text: str = "",
    ) -> None:
        deps = tuple(self._deps.items())
        self.result = Resolved(self._path, oid, kind, parent, name, directories, deps, text)

    def feed(self, directory: StoredObject, version: int) -> None:
        """The bytes of ``needs`` (any ``StoredObject``) at ``version``."""
        oid = self._stack[-1]
        if directory.object_id != oid or self.result is not None:
            raise ValueError(f"the walk needs {self.needs!r}, was fed {directory.object_id!r}")
        self._deps[oid] = version
        if not is_directory(directory):
            raise NotADirectory(f"{self._where()} is not a directory (object {oid.hex()})")
        name = self._todo.pop()
        entry = find(directory, name)
        if entry is None:
            raise NameNotFound(f"no {name!r} in {self._where()}")
        last = not self._todo
        if entry.kind == EntryKind.SYMLINK:
            if last and not self.follow_last:
                self._finish(ZERO_ID, entry.kind, oid, name, tuple(self._stack), entry.text)
                return
            self._links += 1
            if self._links > MAX_SYMLINKS:
                raise SymlinkLoop(
                    f"more than {MAX_SYMLINKS} symbolic links resolving {self._path!r} "
                    f"(at {join([*self._names, name])} -> {entry.text!r}): a loop?"
                )
            link = split_path(entry.text, relative=True)
            if len(self._todo) + len(link) > MAX_DEPTH * (MAX_SYMLINKS + 1):
                raise InvalidName(f"symbolic links make {self._path!r} too long to resolve")
            if entry.text.startswith("/"):
                del self._stack[1:]
                self._names.clear()
            self._todo.extend(reversed(link))
            self._advance()
            return
        assert entry.target is not None
        if last:
            self._finish(entry.target, entry.kind, oid, name, tuple(self._stack))
            return
        if entry.kind != EntryKind.DIRECTORY:
            raise NotADirectory(f"{join([*self._names, name])} is not a directory")
        self._stack.append(entry.target)
        self._names.append(name)
        self._advance()


# -- the cache --------------------------------------------------------------------------

VersionOf = Callable[[ObjectId], int | None]
"""The version of a directory as the caller holds it now (None: not held)."""


class NameCache:
    """Resolved names, each valid while the directories it read keep their versions."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[tuple[str, bool], Resolved] = OrderedDict()
        self.max_entries = max_entries
        self.stats = {"hits": 0, "misses": 0, "stale": 0}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, follow_last: bool, version_of: VersionOf) -> Resolved | None:
        key = (path, follow_last)
        found = self._entries.get(key)
        if found is None:
            self.stats["misses"] += 1
            return None
        for oid, version in found.deps:
            if version_of(oid) != version:
                del self._entries[key]
                self.stats["stale"] += 1
                return None
        self._entries.move_to_end(key)
        self.stats["hits"] += 1
        return found

    def put(self, resolved: Resolved, follow_last: bool) -> None:
        key = (resolved.path, follow_last)
        self._entries[key] = resolved
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
