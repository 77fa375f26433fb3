"""Who a name operation runs for, and the checks of their rights (docs/NAMES.md §8).

Every operation of the namespace takes a ``Caller`` (``None``: the node itself, which
may do anything). Resolving needs read on every directory the walk reads, checked on
every lookup, cached or not: a cached resolution carries the directories it read, and
``may_read_resolved`` checks them on every hit. A change needs write on the
directories it changes (``may_change``), checked on the node the request entered
before anything is done; the home of a directory trusts the admitted node that sends
it a ``DirOp`` (docs/SECURITY.md §9).
"""

from __future__ import annotations

from typing import Protocol

from dtwz.format.ids import ObjectId
from dtwz.resolver.names import Resolved


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


async def may_read_resolved(caller: Caller | None, resolved: Resolved) -> None:
    """``AccessDenied`` unless ``caller`` may read every directory ``resolved`` was read
    from: what a cached answer needs before it is served."""
    if caller is not None:
        for oid, _ in resolved.deps:
            await caller.may_read(oid)


async def may_change(caller: Caller | None, *directories: ObjectId) -> None:
    if caller is not None:
        for directory in directories:
            await caller.may_change(directory)
