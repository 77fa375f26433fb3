"""What the object service needs of its node: the ``Cluster`` protocol.

The service knows no sockets. It asks the node where an object lives, sends
messages to other nodes through it and tells it of objects created here;
``dtwz.node.server.Node`` is the real one, a test passes a fake in memory.
"""

from __future__ import annotations

from typing import Protocol

from dtwz.format.ids import ObjectId
from dtwz.wire.messages import HomeRecord, Message


class Cluster(Protocol):
    """What the service needs from its node."""

    node_id: str

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord:
        """The home record of ``oid`` (cached unless ``refresh``)."""
        ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        """Send ``message`` to another node; its reply (errors raised as themselves)."""
        ...

    async def publish_created(self, record: HomeRecord) -> None:
        """Record in the location directory an object created here."""
        ...

    def learn_location(self, record: HomeRecord) -> None:
        """Cache a location learnt on the way (an ``ObjectMoved`` forwarding address)."""
        ...
