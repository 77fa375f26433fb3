"""Peer requests to their handlers, by a table: message type -> handler.

Each part of the node offers the handlers of the requests it serves (``handlers()``
on the node's own parts; the functions below for the parts of the layers under
the node), and the node merges them into one ``Dispatcher``, which the peer
endpoint calls for every request.

Invariants: one handler per message type (merging two for one type is a bug and
raises at start-up); a message nobody handles (a reply sent as a request, say) is
answered with a ``ProtocolError`` reply, never dropped; the dispatcher adds no
suspension point of its own, so a handler that does not wait still answers in
the loop iteration the request arrived in (``dtwz.node.peer``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from dtwz.wire.messages import (
    Create,
    DirOp,
    EdgeUses,
    ErrorReply,
    Fetch,
    FetchMany,
    GraphExpand,
    Invalidate,
    Message,
    RunCode,
    Transact,
)

if TYPE_CHECKING:
    from dtwz.graph.agent import GraphAgent
    from dtwz.graph.execute import CodeExecutor
    from dtwz.resolver.namespace import Namespace
    from dtwz.service.objects import ObjectService

# a handler takes the one message type it is registered under
PeerHandler = Callable[[Any], Awaitable[Message]]
HandlerTable = Mapping[type[Message], PeerHandler]


class Dispatcher:
    """The node's handler table; calling it answers one peer request."""

    def __init__(self, stats: dict[str, int]) -> None:
        self._handlers: dict[type[Message], PeerHandler] = {}
        self._stats = stats  # counts requests by type, as peer_<Type>

    def add(self, table: HandlerTable) -> None:
        for kind, handler in table.items():
            if kind in self._handlers:
                raise ValueError(f"two handlers for {kind.__name__}")
            self._handlers[kind] = handler

    def handles(self) -> list[type[Message]]:
        return list(self._handlers)

    async def __call__(self, m: Message) -> Message:
        self._stats[f"peer_{type(m).__name__}"] += 1
        handler = self._handlers.get(type(m))
        if handler is None:
            return ErrorReply("ProtocolError", f"{type(m).__name__} is not a request")
        return await handler(m)


# -- the tables of parts below the node ------------------------------------------------


def object_service_handlers(service: ObjectService) -> HandlerTable:
    """Objects at their homes and their copies (``dtwz.service.objects``)."""
    return {
        Fetch: service.on_fetch,
        FetchMany: service.on_fetch_many,
        Transact: service.on_transact,
        Invalidate: service.on_invalidate,
        Create: service.on_create,
    }


def namespace_handlers(names: Namespace) -> HandlerTable:
    """Changes of the directories homed here (``dtwz.resolver.namespace``)."""
    return {DirOp: names.on_dir_op}


def graph_handlers(graph: GraphAgent, code: CodeExecutor) -> HandlerTable:
    """A holder's half of walks and edge counts, and code run here (``dtwz.graph``)."""
    return {
        GraphExpand: graph.on_expand,
        EdgeUses: graph.on_edge_uses,
        RunCode: code.on_run_code,
    }
