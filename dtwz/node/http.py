"""The node's HTTP API: the one module that builds the aiohttp application.

JSON for metadata, raw bytes for object contents. Errors are JSON
``{"error": <dtwz.errors class name>, "message": ...}`` with a status that fits
(404 unknown object, 400 bad input, 409 conflicts and full or immutable objects,
503 when another node is needed and cannot be reached), so ``dtwz.client.api``
raises the same exception type the node raised.

Routes::

    GET  /health /ready /metrics /cluster /
    POST /objects?size=&flags=&prot=&node=       body: initial data -> {"id", ...}
    GET  /objects/{id}                           metadata, FOT, home, version
    GET  /objects/{id}/data?offset=&length=&latest=1   raw bytes
    GET  /objects/{id}/image?latest=1            header record + data + FOT (client copies)
    PUT  /objects/{id}/data?offset=              body: bytes -> {"version"}
    POST /objects/{id}/append                    body: bytes -> {"offset", "version"}
    POST /objects/{id}/pointer                   {"at", "target", "target_offset"}
    POST /transact                               {"txn_id", "ops": [...]}
    GET  /locate/{id}                            home, version, epoch, copies
    POST /keys                                   body: a key record -> {"kuid"}

    GET  /names/root                             the root directory's ID, cluster, home
    GET  /names/resolve?path=&nofollow=1         what a path names: id, kind, parent
    GET  /names/list?path=                       a directory's entries
    POST /names/mkdir    {"path", "parents", "home"}
    POST /names/bind     {"path", "target", "replace"}
    POST /names/symlink  {"path", "text"}
    POST /names/rename   {"from", "to", "replace"}
    POST /names/unbind   {"path"}

Name changes take the ``X-Dtwz-Txn`` header as their transaction ID, like writes.

Security (docs/SECURITY.md §9): with ``security`` on, every route but the open
ones (health, readiness, metrics, the cluster view) needs a signed request; the
middleware authenticates it and each handler asks ``allow`` for the rights its
operation needs on each object it touches. ``AccessDenied`` answers 403
(``UnknownKey`` and ``ReplayedRequest`` 401).
The graph routes (``/graph/...``, ``/code/run``) are in ``dtwz.node.http_graph``.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dtwz import errors
from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, FotEntry, ObjectHeader
from dtwz.node.access import parse_capabilities
from dtwz.resolver.directory_objects import Entry
from dtwz.resolver.names import Resolved
from dtwz.security.auth import (
    CAPABILITY_HEADER,
    SESSION_HEADER,
    SIGNATURE_HEADER,
    body_sha256,
    split_link,
)
from dtwz.security.capabilities import Rights
from dtwz.security.keys import KEY_OBJECT_FLAGS, KEY_OBJECT_PROT, KeyRecord, key_object_nonce
from dtwz.service.objects import OP_ALLOC, OP_APPEND, OP_NAME_POINTER, OP_POINTER, OP_WRITE
from dtwz.wire.protocol import Create, Created, TxOp

if TYPE_CHECKING:
    from dtwz.node.server import Node
    from dtwz.resolver.namespace import Namespace

# no signature needed: liveness, metrics and the member list reveal no object data
OPEN_ROUTES = frozenset({"/health", "/ready", "/metrics", "/cluster", "/"})
_OP_KINDS = {
    "write": OP_WRITE,
    "append": OP_APPEND,
    "pointer": OP_POINTER,
    "alloc": OP_ALLOC,
    "name_pointer": OP_NAME_POINTER,
}

NODE_KEY = web.AppKey("node", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _NodeCollector(Collector):
    """Exports the node's counters at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Any:
        status = self.node.status()
        for section in ("store", "peer", "service", "cache", "node", "names"):
            family = GaugeMetricFamily(
                f"dtwz_{section}", f"dtwz {section} counters", labels=["name"]
            )
            for name, value in status[section].items():
                family.add_metric([name], float(value))
            yield family
        yield GaugeMetricFamily(
            "dtwz_members_alive",
            "live members",
            value=sum(m["state"] in ("alive", "suspect") for m in status["members"]),
        )
        yield GaugeMetricFamily("dtwz_copies", "copies of remote objects", value=status["copies"])


def _oid(request: web.Request, key: str = "id") -> ObjectId:
    try:
        return ObjectId.parse(request.match_info[key])
    except DtwzError as exc:
        raise InvalidArgument(str(exc)) from exc


def _int(request: web.Request, key: str, default: int | None = None) -> int:
    raw = request.query.get(key)
    if raw is None:
        if default is None:
            raise InvalidArgument(f"query parameter {key!r} is required")
        return default
    try:
        return int(raw, 0)
    except ValueError as exc:
        raise InvalidArgument(f"{key}={raw!r} is not an integer") from exc


def _flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "0").lower() in ("1", "true", "yes")


def _node(request: web.Request) -> Node:
    return request.app[NODE_KEY]  # type: ignore[return-value]


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
    """Raise ``AccessDenied`` unless the requester may use ``oid`` so (security on)."""
    access = _node(request).access
    if access is not None:
        await access.check(request["accessor"], oid, rights, request["caps"], offset, length)


LINK_ROUTES = frozenset({"/graph/view"})  # pages a browser opens from a signed link


async def _authenticate(request: web.Request, route: str) -> None:
    access = _node(request).access
    if access is None or route in OPEN_ROUTES:
        return
    body = await request.read()  # aiohttp keeps it: handlers read the same bytes
    new_key = None
    if route == "/keys" and request.method == "POST":
        try:
            new_key = KeyRecord.decode(body).public_key
        except DtwzError as exc:
            raise InvalidArgument(f"the body is not a key record: {exc}") from exc
    headers: Mapping[str, str] = request.headers
    signed_path = request.raw_path
    link = split_link(signed_path) if route in LINK_ROUTES and request.method == "GET" else None
    if link is not None and SIGNATURE_HEADER not in request.headers:
        signed_path, headers = link  # a signed link, opened by a browser
    request["accessor"] = await access.authenticate(
        headers, request.method, signed_path, body_sha256(body), new_key
    )
    request["caps"] = parse_capabilities(request.headers.get(CAPABILITY_HEADER))


def build_app(node: Node) -> web.Application:
    registry = CollectorRegistry()
    registry.register(_NodeCollector(node))
    requests = Counter(
        "dtwz_http_requests", "HTTP requests", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "dtwz_http_latency_seconds", "HTTP request latency", ["route"], registry=registry
    )

    @web.middleware
    async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = (
            request.match_info.route.resource.canonical
            if request.match_info.route.resource
            else "?"
        )
        try:
            await _authenticate(request, route)
            response = await handler(request)
        except DtwzError as exc:
            kind, message, fields = errors.describe(exc)
            response = web.json_response(
                {"error": kind, "message": message, **fields}, status=errors.http_status(exc)
            )
        except web.HTTPException as exc:
            response = web.json_response(
                {"error": "InvalidArgument", "message": exc.text or exc.reason}, status=exc.status
            )
        requests.labels(route, str(response.status)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    # a request line must hold a path of the namespace (4096 bytes, 3x that URL-encoded)
    app = web.Application(
        middlewares=[errors_and_metrics],
        client_max_size=1 << 30,
        handler_args={"max_line_size": 16 << 10},
    )
    app[NODE_KEY] = node

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), content_type="text/plain", charset="utf-8"
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/cluster", cluster)
    app.router.add_get("/", index)
    app.router.add_post("/objects", create)
    app.router.add_get("/objects/{id}", info)
    app.router.add_get("/objects/{id}/data", read)
    app.router.add_get("/objects/{id}/image", image)
    app.router.add_put("/objects/{id}/data", write)
    app.router.add_post("/objects/{id}/append", append)
    app.router.add_post("/objects/{id}/pointer", pointer)
    app.router.add_post("/transact", transact)
    app.router.add_get("/locate/{id}", locate)
    app.router.add_post("/keys", register_key)
    app.router.add_post("/session", open_session)
    app.router.add_get("/names/root", names_root)
    app.router.add_get("/names/resolve", names_resolve)
    app.router.add_get("/names/list", names_list)
    app.router.add_post("/names/{action}", names_change)
    from dtwz.node import http_graph  # its handlers use this module's helpers

    http_graph.add_routes(app)
    return app


async def start_http(node: Node) -> web.AppRunner:
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, node.config.bind_host, node.config.http_port, reuse_address=True)
    await site.start()
    return runner


# -- handlers --------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node_id": _node(request).node_id})


async def ready(request: web.Request) -> web.Response:
    node = _node(request)
    ok = node.joined.is_set() and node.store is not None
    return web.json_response({"ready": ok, "node_id": node.node_id}, status=200 if ok else 503)


async def cluster(request: web.Request) -> web.Response:
    return web.json_response(_node(request).status())


async def index(request: web.Request) -> web.Response:
    node = _node(request)
    status = node.status()
    rows = "".join(
        f"<tr><td>{html.escape(m['node_id'])}</td><td>{m['state']}</td>"
        f"<td><a href='{html.escape(m['http'])}/'>{html.escape(m['http'])}</a></td></tr>"
        for m in status["members"]
    )
    root = status.get("root")
    graph_form = (  # the same drawings as `dtwz graph ROOT --format html`
        "<h2>object graph</h2><form action='/graph/view'>"
        "<input name='root' size=34 placeholder='object ID (32 hex digits)' required> "
        "<input name='depth' size=4 placeholder='depth'> <button>draw</button></form>"
        + (
            "<p>Security is on: a browser cannot sign, so open drawings from a signed link, "
            "<code>dtwz graph ROOT --link</code>.</p>"
            if node.access is not None
            else ""
        )
        + (
            f"<p><a href='/graph/view?root={root}&amp;depth=2'>the namespace root</a></p>"
            if root
            else ""
        )
    )
    body = (
        f"<!doctype html><title>dtwz {html.escape(status['node_id'])}</title>"
        f"<h1>dtwz node {html.escape(status['node_id'])}</h1>"
        f"<table border=1><tr><th>member</th><th>state</th><th>http</th></tr>{rows}</table>"
        f"{graph_form}"
        f"<pre>{html.escape(json.dumps(status, indent=2))}</pre>"
    )
    return web.Response(text=body, content_type="text/html")


async def create(request: web.Request) -> web.Response:
    node = _node(request)
    assert node.service is not None
    size = _int(request, "size", 1 << 20)
    flags = _int(request, "flags", 0)
    prot = _int(request, "prot", 3)
    data = await request.read()
    target = request.query.get("node", node.node_id)
    txn_id = _txn_id(request) or b""
    kuid = accessor(request)  # the requester owns what it creates
    if target == node.node_id:
        created = await node.service.create(size, flags, prot, data, txn_id, kuid=kuid)
    else:
        reply = await node.request(target, Create(txn_id, size, flags, prot, data, kuid))
        assert isinstance(reply, Created)
        created = reply
    return web.json_response(
        {
            "id": created.object_id.hex(),
            "version": created.version,
            "home": target,
            "offset": created.data_offset,
            "length": len(data),
        },
        status=201,
    )


async def info(request: web.Request) -> web.Response:
    node = _node(request)
    assert node.service is not None
    oid = _oid(request)
    obj, _, home = await node.service.open_whole(oid, latest=_flag(request, "latest"))
    await allow(request, oid, Rights.READ)  # after the fetch: the copy's header, no extra trip
    header = obj.header()
    fot = []
    for index in range(1, header.fot_count + 1):
        try:
            entry = obj.fot_entry(index)
            fot.append(_fot_json(index, entry, obj))
        except DtwzError as exc:
            fot.append({"index": index, "error": str(exc)})
    return web.json_response({**_header_json(header), "home": home, "fot": fot})


def _header_json(h: ObjectHeader) -> dict[str, Any]:
    return {
        "id": h.object_id.hex(),
        "max_size": h.max_size,
        "flags": int(h.flags),
        "default_prot": int(h.default_prot),
        "data_len": h.data_len,
        "data_end": h.data_end,
        "version": h.version,
        "fot_count": h.fot_count,
        "free": h.free_bytes,
        "kuid": h.kuid.hex(),
    }


def _fot_json(index: int, entry: FotEntry, obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "flags": int(entry.flags), "valid": entry.is_valid}
    if entry.is_name:
        out["name"] = obj.entry_name(entry)
    elif entry.target is not None:
        out["target"] = entry.target.hex()
    return out


async def read(request: web.Request) -> web.Response:
    node = _node(request)
    assert node.service is not None
    oid = _oid(request)
    latest = _flag(request, "latest")
    offset = _int(request, "offset", DATA_START)
    if "length" in request.query:  # a range: large remote objects are read by range
        # checked after the fetch (nothing is answered before): a copy fetched whole
        # brings its ID-checked header, so the check costs no round trip of its own
        length = _int(request, "length")
        data, version, home = await node.service.read(oid, offset, length, latest=latest)
        await allow(request, oid, Rights.READ, offset, length)
    else:  # everything up to the end of the data
        obj, version, home = await node.service.open_whole(oid, latest=latest)
        await allow(request, oid, Rights.READ)
        data = obj.read(offset, max(0, obj.header().data_end - offset))
    return web.Response(
        body=bytes(data),
        content_type="application/octet-stream",
        headers={"X-Dtwz-Version": str(version), "X-Dtwz-Home": home},
    )


async def image(request: web.Request) -> web.Response:
    """Everything a client needs to build its own copy: header record, data, FOT."""
    node = _node(request)
    assert node.service is not None
    oid = _oid(request)
    if "via" in request.query:  # a client followed a pointer to here (edge use counts)
        try:
            via = ObjectId.parse(request.query["via"])
        except DtwzError as exc:
            raise InvalidArgument(f"via: {exc}") from exc
        node.service.note_edge(via, oid)
    obj, _, home = await node.service.open_whole(oid, latest=_flag(request, "latest"))
    await allow(request, oid, Rights.READ)
    for _ in range(100):  # the layout must come from the same commit as the bytes
        header = ObjectHeader.decode(obj.view[:HEADER_RECORD_SIZE], check_id=False)
        header_raw, data, fot = obj.snapshot(
            [
                (0, HEADER_RECORD_SIZE),
                (DATA_START, header.data_end),
                (header.fot_start, header.max_size),
            ]
        )
        if ObjectHeader.decode(header_raw, check_id=False).version == header.version:
            break
    return web.Response(
        body=header_raw + data + fot,
        content_type="application/octet-stream",
        headers={
            "X-Dtwz-Version": str(header.version),
            "X-Dtwz-Home": home,
            "X-Dtwz-Data-Len": str(len(data)),
            "X-Dtwz-Fot-Len": str(len(fot)),
        },
    )


async def _run(request: web.Request, ops: list[TxOp], txn_id: bytes | None = None) -> Any:
    node = _node(request)
    assert node.service is not None
    for op in ops:  # every object a transaction changes needs WRITE, on the bytes it changes
        offset, length = _op_range(op)
        await allow(request, op.object_id, Rights.WRITE, offset, length)
    return await node.service.transact(ops, txn_id)


def _op_range(op: TxOp) -> tuple[int | None, int | None]:
    if op.kind == OP_WRITE:
        return op.offset, len(op.data)
    if op.kind in (OP_POINTER, OP_NAME_POINTER):
        return op.offset, 8  # the pointer word; its FOT entry is the object's own business
    return None, None  # appends and allocations land where the home decides


def _versions(result: Any) -> dict[str, int]:
    return {ov.object_id.hex(): ov.version for ov in result.versions}


async def write(request: web.Request) -> web.Response:
    oid = _oid(request)
    data = await request.read()
    result = await _run(
        request, [TxOp(OP_WRITE, oid, _int(request, "offset"), data)], _txn_id(request)
    )
    return web.json_response({"version": _versions(result).get(oid.hex(), 0), "length": len(data)})


async def append(request: web.Request) -> web.Response:
    oid = _oid(request)
    data = await request.read()
    result = await _run(request, [TxOp(OP_APPEND, oid, 0, data)], _txn_id(request))
    return web.json_response(
        {
            "offset": result.results[0],
            "length": len(data),
            "version": _versions(result).get(oid.hex(), 0),
        }
    )


async def pointer(request: web.Request) -> web.Response:
    oid = _oid(request)
    body = await _json(request)
    op = _tx_op(
        {
            "kind": "pointer",
            "object": oid.hex(),
            "offset": body.get("at"),
            "target": body.get("target"),
            "target_offset": body.get("target_offset", DATA_START),
        }
    )
    result = await _run(request, [op], _txn_id(request))
    return web.json_response({"pointer": result.results[0], "versions": _versions(result)})


async def transact(request: web.Request) -> web.Response:
    body = await _json(request)
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops:
        raise InvalidArgument("'ops' must be a non-empty list")
    txn = body.get("txn_id")
    txn_id = _parse_txn(txn) if txn else None
    result = await _run(request, [_tx_op(op) for op in ops], txn_id)
    return web.json_response({"results": list(result.results), "versions": _versions(result)})


async def locate(request: web.Request) -> web.Response:
    node = _node(request)
    oid = _oid(request)
    where = await node.describe(oid, refresh=_flag(request, "refresh"))
    record = where.record
    return web.json_response(
        {
            "id": oid.hex(),
            "home": record.home,
            "version": record.version,
            "epoch": record.epoch,
            "copies": where.copies,
        }
    )


async def open_session(request: web.Request) -> web.Response:
    """Open an HMAC session for the identity that signed this request; the body is
    the client's ephemeral X25519 public key (docs/SECURITY.md §5)."""
    node = _node(request)
    if node.access is None:
        raise InvalidArgument("security is off: there are no sessions")
    body = await request.read()
    if request.headers.get(SESSION_HEADER):
        raise InvalidArgument("a session is opened with a signed request, not in a session")
    return web.json_response(node.access.open_session(accessor(request), body), status=201)


async def register_key(request: web.Request) -> web.Response:
    """Store a public key as its key object (idempotent): the key's owner can then
    sign requests on any node, and own objects. The request is signed by that key."""
    node = _node(request)
    assert node.service is not None
    record = KeyRecord.decode(await request.read())
    kuid = record.object_id
    try:
        await node.service.header_of(kuid)
        created = False
    except errors.ObjectNotFound:
        await node.service.create(
            4096 * 2,
            int(KEY_OBJECT_FLAGS),
            int(KEY_OBJECT_PROT),
            record.encode(),
            _txn_id(request),
            nonce=key_object_nonce(record.public_key),
        )
        created = True
    return web.json_response(
        {"kuid": kuid.hex(), "created": created}, status=201 if created else 200
    )


# -- names ------------------------------------------------------------------------


def _names(request: web.Request) -> Namespace:
    names = _node(request).names
    assert names is not None
    return names


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


async def names_root(request: web.Request) -> web.Response:
    names = _names(request)
    return web.json_response(
        {
            "id": names.root.hex(),
            "cluster_id": names.cluster_id,
            "home_address": names.root_home_addr,
        }
    )


async def names_resolve(request: web.Request) -> web.Response:
    follow = not _flag(request, "nofollow")
    resolved = await _names(request).resolve(_path(request), follow_last=follow)
    return web.json_response(_resolved_json(resolved))


async def names_list(request: web.Request) -> web.Response:
    where, entries = await _names(request).listdir(_path(request))
    return web.json_response(
        {**_resolved_json(where), "entries": [_entry_json(e) for e in entries]}
    )


async def names_change(request: web.Request) -> web.Response:
    names = _names(request)
    action = request.match_info["action"]
    body = await _json(request)
    txn_id = _txn_id(request) or b""

    def text(key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str):
            raise InvalidArgument(f"{key!r} must be a string")
        return value

    replace = bool(body.get("replace", False))
    if action == "mkdir":
        home = body.get("home")
        oid = await names.mkdir(
            text("path"),
            parents=bool(body.get("parents", False)),
            home=str(home) if home else None,
            txn_id=txn_id,
        )
        return web.json_response({"path": text("path"), "id": oid.hex()}, status=201)
    if action == "bind":
        try:
            target = ObjectId.parse(text("target"))
        except errors.FormatError as exc:
            raise InvalidArgument(str(exc)) from exc
        old = await names.bind(text("path"), target, replace=replace, txn_id=txn_id)
        return web.json_response(
            {"path": text("path"), "id": target.hex(), "replaced": old.hex() if old else None}
        )
    if action == "symlink":
        await names.symlink(text("path"), text("text"), txn_id=txn_id)
        return web.json_response({"path": text("path"), "text": text("text")}, status=201)
    if action == "rename":
        moved = await names.rename(text("from"), text("to"), replace=replace, txn_id=txn_id)
        return web.json_response({"from": text("from"), "to": text("to"), **_entry_json(moved)})
    if action == "unbind":
        gone = await names.unbind(text("path"), txn_id=txn_id)
        return web.json_response({"path": text("path"), **_entry_json(gone)})
    raise web.HTTPNotFound(text=f"no name operation {action!r}")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def _txn_id(request: web.Request) -> bytes | None:
    raw = request.headers.get("X-Dtwz-Txn")
    return _parse_txn(raw) if raw else None


def _parse_txn(raw: Any) -> bytes:
    try:
        txn = bytes.fromhex(str(raw))
    except ValueError as exc:
        raise InvalidArgument("txn_id must be hex") from exc
    if not 8 <= len(txn) <= 32:
        raise InvalidArgument("txn_id must be 8 to 32 bytes")
    return txn


def _tx_op(raw: Any) -> TxOp:
    if not isinstance(raw, dict):
        raise InvalidArgument("each op must be a JSON object")
    kind = _OP_KINDS.get(str(raw.get("kind")))
    if kind is None:
        raise InvalidArgument(f"op kind must be one of {sorted(_OP_KINDS)}")
    try:
        data = base64.b64decode(raw.get("data", ""), validate=True)
        target = raw.get("target")
        return TxOp(
            kind,
            ObjectId.parse(str(raw.get("object"))),
            int(raw.get("offset") or 0),
            data,
            ObjectId.parse(target) if target else ObjectId(bytes(16)),
            int(raw.get("target_offset") or 0),
            int(raw.get("size") or 0),
        )
    except (ValueError, TypeError, errors.FormatError) as exc:
        raise InvalidArgument(f"bad op {raw!r}: {exc}") from exc
