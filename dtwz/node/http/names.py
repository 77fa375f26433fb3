"""The namespace routes: resolve paths, list directories, change names
(``dtwz.resolver.namespace`` does the work; docs/NAMES.md describes it).

Routes::

    GET  /names/root                             the root directory's ID, cluster, home
    GET  /names/resolve?path=&nofollow=1         what a path names: id, kind, parent
    GET  /names/list?path=                       a directory's entries
    POST /names/mkdir    {"path", "parents", "home", "prot"}
    POST /names/bind     {"path", "target", "replace"}
    POST /names/symlink  {"path", "text"}
    POST /names/rename   {"from", "to", "replace"}
    POST /names/unbind   {"path"}

Name changes take the ``X-Dtwz-Txn`` header as their transaction ID, like writes.

Every route runs for its requester (``RequestCaller``): resolving and listing need
read on every directory read, changes need write on the directories changed,
and a new directory belongs to its maker (docs/NAMES.md §8).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dtwz import errors
from dtwz.errors import AccessDenied, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.node.http.context import (
    accessor,
    flag_query,
    json_body,
    node_of,
    txn_id_header,
    visible,
)
from dtwz.resolver.directory_objects import Entry
from dtwz.resolver.names import DIRECTORY_PROT, Resolved
from dtwz.security.capabilities import Rights


class RequestCaller:
    """The requester of one HTTP request, as the namespace sees it
    (``dtwz.resolver.namespace.Caller``): the node's access rule with the request's
    signer and capabilities. Default protections may grant read of a directory,
    never a change of its entries. With security off it may do anything."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    @property
    def kuid(self) -> ObjectId:
        return accessor(self._request)

    async def may_read(self, directory: ObjectId) -> None:
        await self._check(directory, Rights.READ, "look names up in")

    async def may_change(self, directory: ObjectId) -> None:
        await self._check(directory, Rights.WRITE, "change the names in")

    async def may_name(self, target: ObjectId) -> None:
        await visible(self._request, target)

    async def _check(self, directory: ObjectId, rights: Rights, what: str) -> None:
        access = node_of(self._request).access
        if access is None:
            return
        request = self._request
        try:
            await access.check(
                request["accessor"],
                directory,
                rights,
                request["caps"],
                by_default=rights == Rights.READ,
            )
        except AccessDenied as exc:
            raise type(exc)(f"may not {what} directory {directory}: {exc}") from exc


def _path(request: web.Request) -> str:
    path = request.query.get("path")
    if path is None:
        raise InvalidArgument("query parameter 'path' is required")
    return path


def _resolved_json(r: Resolved) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "path": r.path,
        "id": r.object_id.hex(),
        "kind": r.kind.name.lower(),
        "name": r.name,
        "parent": r.parent.hex() if r.parent else None,
    }
    if r.text:
        doc["text"] = r.text
    return doc


def _entry_json(e: Entry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": e.name, "kind": e.kind.name.lower()}
    if e.target is not None:
        doc["id"] = e.target.hex()
    if e.text:
        doc["text"] = e.text
    return doc


async def root(request: web.Request) -> web.Response:
    names = node_of(request).names
    return web.json_response(
        {
            "id": names.root.hex(),
            "cluster_id": names.cluster_id,
            "home_address": names.root_home_addr,
        }
    )


async def resolve(request: web.Request) -> web.Response:
    follow = not flag_query(request, "nofollow")
    resolved = await node_of(request).names.resolve(
        _path(request), follow_last=follow, caller=RequestCaller(request)
    )
    return web.json_response(_resolved_json(resolved))


async def list_directory(request: web.Request) -> web.Response:
    where, entries = await node_of(request).names.listdir(
        _path(request), caller=RequestCaller(request)
    )
    return web.json_response(
        {**_resolved_json(where), "entries": [_entry_json(e) for e in entries]}
    )


async def change(request: web.Request) -> web.Response:
    """``POST /names/{action}``: one change of a directory, as one transaction."""
    names = node_of(request).names
    action = request.match_info["action"]
    body = await json_body(request)
    txn_id = txn_id_header(request) or b""
    caller = RequestCaller(request)

    def text(key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str):
            raise InvalidArgument(f"{key!r} must be a string")
        return value

    replace = bool(body.get("replace", False))
    if action == "mkdir":
        home = body.get("home")
        prot = body.get("prot", int(DIRECTORY_PROT))
        if not isinstance(prot, int) or isinstance(prot, bool):
            raise InvalidArgument("'prot' must be an integer (1: read for all, 0: none)")
        oid = await names.mkdir(
            text("path"),
            parents=bool(body.get("parents", False)),
            home=str(home) if home else None,
            txn_id=txn_id,
            caller=caller,
            prot=prot,
        )
        return web.json_response({"path": text("path"), "id": oid.hex()}, status=201)
    if action == "bind":
        try:
            target = ObjectId.parse(text("target"))
        except errors.FormatError as exc:
            raise InvalidArgument(str(exc)) from exc
        old = await names.bind(text("path"), target, replace=replace, txn_id=txn_id, caller=caller)
        return web.json_response(
            {"path": text("path"), "id": target.hex(), "replaced": old.hex() if old else None}
        )
    if action == "symlink":
        await names.symlink(text("path"), text("text"), txn_id=txn_id, caller=caller)
        return web.json_response({"path": text("path"), "text": text("text")}, status=201)
    if action == "rename":
        moved = await names.rename(
            text("from"), text("to"), replace=replace, txn_id=txn_id, caller=caller
        )
        return web.json_response({"from": text("from"), "to": text("to"), **_entry_json(moved)})
    if action == "unbind":
        gone = await names.unbind(text("path"), txn_id=txn_id, caller=caller)
        return web.json_response({"path": text("path"), **_entry_json(gone)})
    raise web.HTTPNotFound(text=f"no name operation {action!r}")
