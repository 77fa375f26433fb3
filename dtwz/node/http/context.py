"""What every route shares: the node as the routes see it, the requester and the
access check, and the reading of request parameters.

``NodeApi`` is all a route may use of its node. ``dtwz.node.server.Node`` gives
it; a test can give a fake. The routes never import the server, so the HTTP
package sits below it with no cycle.

Invariants: a bad parameter raises ``InvalidArgument`` (400) before anything is
read or changed; a route asks ``allow`` for every object it touches, with the
rights and bytes its operation needs (docs/SECURITY.md §9).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from dtwz.errors import AccessDenied, DtwzError, InvalidArgument, ObjectNotFound
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.node.location_directory import nowhere
from dtwz.security.capabilities import Rights

if TYPE_CHECKING:
    from dtwz.graph.agent import GraphAgent
    from dtwz.graph.execute import CodeExecutor
    from dtwz.node.access import Access
    from dtwz.node.quotas import Quotas
    from dtwz.resolver.namespace import Namespace
    from dtwz.service.objects import ObjectService
    from dtwz.wire.messages import Location, Message


class NodeApi(Protocol):
    """What the routes use of their node: its parts, built before the routes are,
    and the node-wide answers (status, readiness, where an object lives)."""

    @property
    def node_id(self) -> str: ...

    @property
    def access(self) -> Access | None:
        """The access policy; None with security off."""

    @property
    def quotas(self) -> Quotas | None:
        """Enrollment and quotas (docs/SECURITY.md §10); None with security off."""

    @property
    def service(self) -> ObjectService: ...

    @property
    def names(self) -> Namespace: ...

    @property
    def graph(self) -> GraphAgent: ...

    @property
    def code(self) -> CodeExecutor: ...

    def is_ready(self) -> bool:
        """Joined the cluster and serving."""

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` names a member of the cluster (this node too), live or not."""

    def status(self) -> dict[str, Any]:
        """The node's view of itself and the cluster (``GET /cluster``)."""

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    async def describe(self, oid: ObjectId, *, refresh: bool = False) -> Location:
        """Where ``oid`` lives: home, version, epoch and copy holders."""


NODE_KEY: web.AppKey[NodeApi] = web.AppKey("node")


def node_of(request: web.Request) -> NodeApi:
    return request.app[NODE_KEY]


# -- who asks, and may they ----------------------------------------------------------


def accessor(request: web.Request) -> ObjectId:
    """The kuid that signed the request (zero with security off)."""
    kuid: ObjectId = request.get("accessor", ZERO_ID)
    return kuid


async def allow(
    request: web.Request,
    oid: ObjectId,
    rights: Rights,
    offset: int | None = None,
    length: int | None = None,
) -> None:
    """Raise ``AccessDenied`` unless the requester may use ``oid`` so (security on).

    A requester who may not know that ``oid`` exists (it may not read it and holds
    no capability its owner signed for it, ``Access.sees``) is answered as if it did
    not: the very ``ObjectNotFound`` a missing ID gets, so 403 and 404 tell it
    nothing (docs/SECURITY.md §9). Others learn why they are refused."""
    access = node_of(request).access
    if access is None:
        return
    who, caps = request["accessor"], request["caps"]
    try:
        await access.check(who, oid, rights, caps, offset, length)
    except ObjectNotFound:
        raise nowhere(oid) from None  # one answer, whichever way it was found missing
    except AccessDenied:
        if not await access.sees(who, oid, caps):
            raise nowhere(oid) from None
        raise


async def visible(request: web.Request, oid: ObjectId) -> None:
    """Answer as for a missing ID (``ObjectNotFound``, word for word) unless the
    requester may know that ``oid`` exists (``Access.sees``; security on); the admin
    sees the truth."""
    access = node_of(request).access
    if access is None:
        return
    try:
        if await access.sees(request["accessor"], oid, request["caps"]):
            return
    except ObjectNotFound:
        pass
    raise nowhere(oid)


# -- parameters ----------------------------------------------------------------------


def object_id(request: web.Request, key: str = "id") -> ObjectId:
    """The object ID in the path."""
    try:
        return ObjectId.parse(request.match_info[key])
    except DtwzError as exc:
        raise InvalidArgument(str(exc)) from exc


def int_query(request: web.Request, key: str, default: int | None = None) -> int:
    """An integer query parameter (any base Python reads: 0x10 is 16)."""
    raw = request.query.get(key)
    if raw is None:
        if default is None:
            raise InvalidArgument(f"query parameter {key!r} is required")
        return default
    try:
        return int(raw, 0)
    except ValueError as exc:
        raise InvalidArgument(f"{key}={raw!r} is not an integer") from exc


def flag_query(request: web.Request, key: str) -> bool:
    return request.query.get(key, "0").lower() in ("1", "true", "yes")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}") from exc
    except RecursionError:  # [[[[...: deeper than the parser goes
        raise InvalidArgument("request body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def txn_id_header(request: web.Request) -> bytes | None:
    """The transaction ID of ``X-Dtwz-Txn``: a retry with it is applied once."""
    raw = request.headers.get("X-Dtwz-Txn")
    return parse_txn_id(raw) if raw else None


def parse_txn_id(raw: Any) -> bytes:
    try:
        txn = bytes.fromhex(str(raw))
    except ValueError as exc:
        raise InvalidArgument("txn_id must be hex") from exc
    if not 8 <= len(txn) <= 32:
        raise InvalidArgument("txn_id must be 8 to 32 bytes")
    return txn
