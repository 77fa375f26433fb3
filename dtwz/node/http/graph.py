"""The graph and code routes: walks, drawings, prefetch, migration, co-location
and running code at the data (``dtwz.graph``; docs/GRAPH.md describes them).

Routes::

    GET  /graph/walk?root=&depth=&budget=&uses=1     the graph as JSON (docs/GRAPH.md)
    GET  /graph/view?root=&depth=&budget=&format=    drawn: html (default), svg, dot, json
    POST /graph/prefetch?root=&depth=&budget=&to=    to=node: copies here, progress events;
                                                     to=client: also every image (stream)
    POST /graph/migrate   {"ids": [...], "to": node}
    POST /graph/colocate  {"root", "depth", "budget", "capacity", "dry_run"}
    POST /code/run        {"code", "root", "args", "where", "timeout"}

Prefetch answers with the frame stream of ``dtwz.graph.stream``: events (plan,
progress, done, error) and, for a client, one image per object.

Access (docs/SECURITY.md §9): a walk, a drawing, a prefetch or a co-location
plan is for its requester (``Caller``): every holder expands only what the
requester may read, and shows anything else, the root included, as ``hidden``,
exactly as it shows an ID no node holds; a prefetch brings only readable objects
(and to a client sends only images the requester may READ); migrating needs
WRITE on every object moved; co-location moves objects the requester did not
name, so it needs the admin; running code needs the right to run code on the
cluster (x on its run-code object: the admin, or a capability the admin granted,
docs/SECURITY.md §11), EXEC on the code object and READ on the root, and the
function then acts as its caller.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dtwz import errors
from dtwz.errors import AccessDenied, DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.graph import model, render, stream
from dtwz.graph.agent import Caller
from dtwz.node.http.context import accessor, allow, flag_query, json_body, node_of
from dtwz.security.capabilities import Rights

if TYPE_CHECKING:
    import networkx as nx

DEFAULT_TIMEOUT = 60.0  # seconds a run may take when its caller does not say
# pages a browser opens from a signed link (``dtwz graph ROOT --link``)
LINK_ROUTES = frozenset({"/graph/view"})


def _limit(raw: Any, what: str) -> int | None:
    if raw in (None, "", "none"):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} must be an integer") from exc
    if value < 0:
        raise InvalidArgument(f"{what} must not be negative")
    return value


def _root(request: web.Request) -> ObjectId:
    try:
        return ObjectId.parse(request.query.get("root", ""))
    except DtwzError as exc:
        raise InvalidArgument(f"root: {exc}") from exc


def _walk_args(request: web.Request) -> dict[str, Any]:
    q = request.query
    return {
        "depth": _limit(q.get("depth"), "depth"),
        "budget": _limit(q.get("budget"), "budget"),
        "caller": caller(request),
    }


def caller(request: web.Request) -> Caller:
    """Who a walk is for: the requester and the capabilities its request carried."""
    return Caller(accessor(request), tuple(request.get("caps", ())))


async def walk(request: web.Request) -> web.Response:
    # no check of the root here: the walk shows an unreadable root as hidden, as it
    # shows a missing one (a 403 would tell that the ID exists)
    root = _root(request)
    uses = flag_query(request, "uses") or "uses" not in request.query
    graph = await node_of(request).graph.walk(root, uses=uses, **_walk_args(request))
    return web.json_response(model.to_json(graph))


async def view(request: web.Request) -> web.Response:
    """The node's web view of a graph (the same drawings as ``dtwz graph``)."""
    fmt = request.query.get("format", "html")
    if fmt not in render.FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(render.FORMATS)}")
    root = _root(request)
    graph: nx.DiGraph[str] = await node_of(request).graph.walk(root, **_walk_args(request))
    text = render.render(graph, fmt)
    types = {
        "html": "text/html",
        "svg": "image/svg+xml",
        "dot": "text/vnd.graphviz",
        "json": "application/json",
    }
    return web.Response(text=text, content_type=types[fmt], charset="utf-8")


async def prefetch(request: web.Request) -> web.StreamResponse:
    node = node_of(request)
    agent = node.graph
    root = _root(request)
    to = request.query.get("to", "node")
    if to not in ("node", "client"):
        raise InvalidArgument("to must be 'node' or 'client'")
    args = _walk_args(request)  # the walk hides what the requester may not read
    response = web.StreamResponse(headers={"Content-Type": "application/x-dtwz-stream"})
    await response.prepare(request)
    progress: list[tuple[int, int]] = []
    try:
        graph, stats = await agent.prefetch(
            root, progress=lambda n, b: progress.append((n, b)), **args
        )
        objects = [n for n, a in graph.nodes(data=True) if a["kind"] == "object"]
        await response.write(
            stream.event(
                {"event": "plan", "objects": len(objects), "bytes": graph.graph["bytes"], **stats}
            )
        )
        if to == "client":
            sent = sent_bytes = 0
            for key in objects:
                try:
                    await allow(request, ObjectId.parse(key), Rights.READ)
                    image = node.service.image(ObjectId.parse(key))
                except DtwzError:  # not readable by the requester, or gone:
                    continue  # dropped or moved since the walk: the client fetches it itself
                home = graph.nodes[key]["home"]
                for part in stream.image(
                    image.object_id, image.version, home, image.header, image.data, image.fot
                ):
                    await response.write(part)
                sent += 1
                sent_bytes += len(image.header) + len(image.data) + len(image.fot)
                if sent % 256 == 0:
                    await response.write(
                        stream.event({"event": "progress", "objects": sent, "bytes": sent_bytes})
                    )
            stats = {**stats, "sent": sent, "sent_bytes": sent_bytes}
        await response.write(stream.event({"event": "done", "objects": len(objects), **stats}))
    except DtwzError as exc:
        await response.write(stream.event({"event": "error", **_error_doc(exc)}))
    await response.write_eof()
    return response


def _ids(raw: Any) -> list[ObjectId]:
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("ids must be a non-empty list of object IDs")
    return [ObjectId.parse(str(x)) for x in raw]


async def migrate(request: web.Request) -> web.Response:
    body = await json_body(request)
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise InvalidArgument("to must name a node")
    ids = _ids(body.get("ids"))
    for oid in ids:
        await allow(request, oid, Rights.WRITE)
    done = await node_of(request).graph.migrate(ids, to)
    return web.json_response(
        {
            "to": to,
            "migrated": [
                {"epoch": m.epoch, "versions": {v.object_id.hex(): v.version for v in m.versions}}
                for m in done
            ],
        }
    )


async def colocate(request: web.Request) -> web.Response:
    body = await json_body(request)
    root = ObjectId.parse(str(body.get("root")))
    access = node_of(request).access
    if access is not None and not body.get("dry_run") and not access.is_trusted(accessor(request)):
        raise AccessDenied("co-location moves objects nobody named: only the admin may run it")
    plan, done = await node_of(request).graph.colocate(
        root,
        depth=_limit(body.get("depth"), "depth"),
        budget=_limit(body.get("budget"), "budget"),
        capacity=_limit(body.get("capacity"), "capacity"),
        dry_run=bool(body.get("dry_run")),
        caller=caller(request),
    )
    return web.json_response(
        {
            "moves": plan.moves,
            "placement": plan.placement,
            "cross_before": plan.cross_before,
            "cross_after": plan.cross_after,
            "weighted_before": plan.weighted_before,
            "weighted_after": plan.weighted_after,
            "bytes_moved": plan.bytes_moved,
            "migrations": len(done),
            "dry_run": bool(body.get("dry_run")),
        }
    )


async def run_code(request: web.Request) -> web.Response:
    node = node_of(request)
    access = node.access
    if access is not None:  # who may run code at all: before anything is read or run
        await access.check_run_code(accessor(request), request["caps"])
    body = await json_body(request)
    args = body.get("args", [])
    if not isinstance(args, list):
        raise InvalidArgument("args must be a JSON list")
    timeout = body.get("timeout", min(DEFAULT_TIMEOUT, node.code.max_timeout))
    if not isinstance(timeout, int | float) or isinstance(timeout, bool):
        raise InvalidArgument("timeout must be a number of seconds")
    node.code.check_timeout(float(timeout))  # at most this node's --code-max-timeout
    code, root = ObjectId.parse(str(body.get("code"))), ObjectId.parse(str(body.get("root")))
    await allow(request, code, Rights.EXEC)
    await allow(request, root, Rights.READ)
    report = await node.code.run(
        code,
        root,
        args,
        where=str(body.get("where") or "auto"),
        timeout=float(timeout),
        caller=caller(request),
    )
    return web.json_response(report, dumps=lambda doc: json.dumps(doc, allow_nan=False))


def _error_doc(exc: BaseException) -> dict[str, Any]:
    kind, message, fields = errors.describe(exc)
    return {"kind": kind, "message": message, **fields}
