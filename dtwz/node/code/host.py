"""What a call of code at the data gets of its node, as its caller (docs/SECURITY.md §11).

``StoreCodeHost`` is the ``CodeHost`` a node hands its ``CodeRunner``:

- ``open_objects``: a read-only descriptor of an object's file, for an object this
  node homes and the caller may read *whole* (``Access.check`` for READ without a
  byte range); nothing otherwise, not even why: the call then asks the API, which
  answers as it answers the caller anywhere else (a gated capability gets its
  range, an unreadable object looks missing). With it come descriptors of objects
  its pointers lead to, by the same rule, so a traversal asks once per batch;
- ``connect``: the node's API served on one end of a socket pair whose other end
  the call's process holds, every request acting as the caller (the application
  of ``make_app``, ``dtwz.node.http.app.build_code_app``). The connection is the
  credential: it is not on any port, it exists for one call, and the runner ends
  it when the call ends, so nothing the call learns can act for the caller later.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable, Set
from typing import TYPE_CHECKING

from aiohttp import web

from dtwz.errors import DtwzError
from dtwz.format.ids import ObjectId
from dtwz.graph.agent import Caller
from dtwz.security.capabilities import Rights
from dtwz.store.store import Store

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

    from dtwz.node.access import Access

__all__ = ["CallerOf", "StoreCodeHost"]

CallerOf = Callable[[web.Request], Caller | None]
"""Whose call a request of the code API comes from (None: that call is over)."""

KEEPALIVE = 3600.0  # a call's connection stays open while the call lasts
NEIGHBOUR_ENTRIES = 64  # FOT entries of an object looked at for what to hand over with it


class StoreCodeHost:
    """A node's store and API as code runs see them (the module docstring)."""

    def __init__(
        self,
        store: Store,
        make_app: Callable[[CallerOf], web.Application],
        access: Callable[[], Access | None] = lambda: None,
    ) -> None:
        self.store = store
        self._make_app = make_app
        self._access = access
        self._runner: web.AppRunner | None = None
        self._starting = asyncio.Lock()
        self._callers: dict[RequestHandler, Caller] = {}
        self.stats = {"opened": 0, "not_opened": 0, "connections": 0}

    def caller_of(self, request: web.Request) -> Caller | None:
        return self._callers.get(request.protocol)

    async def open_objects(
        self, caller: Caller, oid: ObjectId, *, limit: int = 1, skip: Set[ObjectId] = frozenset()
    ) -> list[tuple[ObjectId, int]]:
        """Read-only descriptors of ``oid`` and, up to ``limit`` in all, of objects its
        pointers lead to (breadth first, not those in ``skip``), each homed here and
        readable whole by ``caller``; empty when ``oid`` itself is not. A traversal
        then asks once per ``limit`` objects instead of once per object."""
        first = await self._open(caller, oid)
        if first is None:
            return []
        found = [(oid, first)]
        seen, queue = {oid, *skip}, deque([oid])
        try:
            while queue and len(found) < limit:
                for target in self._targets(queue.popleft()):
                    if target in seen:
                        continue
                    seen.add(target)
                    fd = await self._open(caller, target)
                    if fd is not None:
                        found.append((target, fd))
                        queue.append(target)
                        if len(found) >= limit:
                            break
        except BaseException:
            for _, fd in found:
                os.close(fd)
            raise
        return found

    def _targets(self, oid: ObjectId) -> list[ObjectId]:
        """The objects the first of ``oid``'s FOT entries name (ID entries only)."""
        try:
            obj = self.store.get(oid)
            count = min(obj.header().fot_count, NEIGHBOUR_ENTRIES)
            entries = [obj.fot_entry(i) for i in range(1, count + 1)]
        except DtwzError:
            return []
        return [ObjectId(e.target) for e in entries if e.target is not None and e.is_valid]

    async def _open(self, caller: Caller, oid: ObjectId) -> int | None:
        if not self.store.exists(oid):
            self.stats["not_opened"] += 1
            return None
        access = self._access()
        if access is not None:
            try:
                await access.check(caller.kuid, oid, Rights.READ, caller.capabilities)
            except DtwzError:
                self.stats["not_opened"] += 1
                return None
        try:
            fd = os.open(self.store.object_path(oid), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # gone meanwhile (migrated away)
            self.stats["not_opened"] += 1
            return None
        self.stats["opened"] += 1
        return fd

    async def connect(self, caller: Caller, sock: socket.socket) -> Callable[[], None]:
        server = await self._server()
        callers = self._callers
        handlers: list[RequestHandler] = []

        def made() -> RequestHandler:
            handler = server()
            callers[handler] = caller  # before any byte of a request is read
            handlers.append(handler)
            return handler

        try:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(made, sock)
        except BaseException:
            for handler in handlers:
                callers.pop(handler, None)
            sock.close()
            raise
        self.stats["connections"] += 1

        def close() -> None:
            for handler in handlers:
                callers.pop(handler, None)
            transport.abort()

        return close

    async def _server(self) -> web.Server:
        async with self._starting:
            if self._runner is None:
                runner = web.AppRunner(
                    self._make_app(self.caller_of), access_log=None, keepalive_timeout=KEEPALIVE
                )
                await runner.setup()
                self._runner = runner
        server = self._runner.server
        assert server is not None
        return server

    async def close(self) -> None:
        self._callers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
