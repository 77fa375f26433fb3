"""The namespace as one node serves it: resolve names, and change directories at their homes.

``Namespace`` is the facade the node uses, and owns the root and the life cycle;
each part lives in a module of its own: ``rights`` (the caller and the checks of
its rights), ``resolution`` (path resolution, the name cache, late binding),
``changes`` (changes as the node a request entered runs them) and ``home_changes``
(changes run at a directory's home).

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
import logging

from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.changes import DirectoryChanges
from dtwz.resolver.directory_objects import DIRECTORY_SIZE
from dtwz.resolver.home_changes import (
    ACT_BIND,
    ACT_MKDIR,
    ACT_RENAME,
    ACT_SYMLINK,
    ACT_UNBIND,
    DirectoryHome,
)
from dtwz.resolver.names import ROOT_PROT, root_home_address, root_id, root_nonce
from dtwz.resolver.resolution import NamespaceNode, PathResolver
from dtwz.resolver.rights import Caller
from dtwz.service.objects import ObjectService

__all__ = [
    "ACT_BIND",
    "ACT_MKDIR",
    "ACT_RENAME",
    "ACT_SYMLINK",
    "ACT_UNBIND",
    "Caller",
    "Namespace",
    "NamespaceNode",
]

log = logging.getLogger(__name__)


class Namespace:
    """Resolution and directory changes for this node, and the root if it is ours
    to create; ``stats`` counts them all."""

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
        self.stats = {
            "resolutions": 0,
            "walks": 0,
            "directory_reads": 0,
            "changes": 0,
            "changes_served": 0,
        }
        resolver = PathResolver(
            node,
            service,
            cluster_id=cluster_id,
            root=self.root,
            root_home_addr=self.root_home_addr,
            stats=self.stats,
        )
        at_home = DirectoryHome(node, service, self.stats)
        changes = DirectoryChanges(node, service, resolver, at_home, self.stats)
        self._resolver = resolver
        self.cache = resolver.cache
        self.resolve = resolver.resolve
        self.resolve_for_pointer = resolver.resolve_for_pointer
        self.lookup_entry = resolver.lookup_entry
        self.listdir = resolver.listdir
        self.mkdir = changes.mkdir
        self.bind = changes.bind
        self.symlink = changes.symlink
        self.unbind = changes.unbind
        self.rename = changes.rename
        self.on_dir_op = at_home.on_dir_op

    def startup(self) -> None:
        """Create the root if this node is its home and lacks it; serve late binding."""
        self._resolver.use_loop(asyncio.get_running_loop())
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
