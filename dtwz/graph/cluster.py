"""What the graph service stands on, shared by both halves of a walk (docs/GRAPH.md).

The node it runs on (``GraphCluster``), who a walk is for (``Caller``, docs/SECURITY.md
§9) and the node's read rule that decides what that caller sees (``ReadPolicy``, one
``ReadCheck`` per request), and the sizes and limits the coordinator and the holders
agree on. Nothing here does I/O; ``dtwz.graph.agent`` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import HEADER_RECORD_SIZE
from dtwz.security.capabilities import Capability
from dtwz.wire.messages import HomeRecord, Message, Migrate, Migrated

NO_LIMIT = 0xFFFFFFFF  # max_depth on the wire when there is none
# a walk step or a batch does thousands of objects' work at the holder: allow it more
# than a single-object request (a holder that dies fails it at once anyway)
BATCH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a walk is for: the kuid the entry node authenticated and the capabilities
    the request carried. Holders trust the coordinator's word for it: nodes are
    admitted, and trusted (docs/SECURITY.md §9)."""

    kuid: ObjectId
    capabilities: tuple[Capability, ...] = ()

    def encoded(self) -> list[bytes]:
        return [c.encode() for c in self.capabilities]


NOBODY = Caller(ZERO_ID)  # owns nothing: sees what default protections let all read


class ReadCheck(Protocol):
    """May the caller read an object whole, given its ID, owner (the header's kuid)
    and default protections? (``dtwz.node.access.ReadRule``)"""

    @property
    def trusted(self) -> bool:
        """The admin or a node: may read everything."""

    def __call__(self, oid: ObjectId, owner: bytes, prot: int) -> bool: ...


class ReadPolicy(Protocol):
    """The node's access rule as walks use it (``dtwz.node.access.Access``)."""

    def is_trusted(self, kuid: ObjectId) -> bool: ...

    async def read_rule(
        self, accessor: ObjectId, capabilities: Sequence[Capability] = ...
    ) -> ReadCheck: ...


class GraphCluster(Protocol):
    node_id: str

    @property
    def access(self) -> ReadPolicy | None:
        """The access rule; None with security off (everything is readable)."""

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord: ...

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    def alive_ids(self) -> list[str]: ...

    async def migrate(self, m: Migrate) -> Migrated: ...


def image_bytes(data_len: int, fot_count: int) -> int:
    """Bytes a whole copy of an object moves: header record, data and FOT."""
    return HEADER_RECORD_SIZE + data_len + 32 * fot_count
