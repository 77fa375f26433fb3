"""The node's HTTP API: the one module that builds the aiohttp application.

It holds what every request goes through and the route table; the handlers live
by resource in ``cluster``, ``objects``, ``names``, ``keys`` and ``graph``, and
see the node only as ``context.NodeApi``.

Every request passes one middleware, in this order:

1. **authentication** (docs/SECURITY.md §9): with security on, every route but
   the open ones (``cluster.OPEN_ROUTES``) needs a signed request (or one in a
   session, or a signed link for the pages a browser opens); the requester's
   kuid and capabilities go on the request, and each handler asks
   ``context.allow`` for the rights its operation needs on each object;
2. **errors to HTTP**, in this one place: a ``DtwzError`` answers JSON
   ``{"error": <dtwz.errors class name>, "message": ..., <its fields>}``
   (``errors.describe``) with the status its class carries
   (``errors.http_status``: 404 unknown object, 400 bad input, 401 unknown key
   or replayed request, 403 access denied, 409 conflicts, 503 when another node
   is needed and cannot be reached), so ``dtwz.client`` raises the same
   exception type the node raised; aiohttp's own HTTP errors keep their status
   as ``InvalidArgument``;
3. **metrics**: a count per route and status, and a latency histogram, served
   with the node's counters at ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from dtwz import errors
from dtwz.errors import AccessDenied, DtwzError, InvalidArgument
from dtwz.format.layout import MAX_OBJECT_SIZE
from dtwz.graph.agent import Caller
from dtwz.node.access import parse_capabilities
from dtwz.node.http import cluster, graph, keys, names, objects
from dtwz.node.http.context import NODE_KEY, NodeApi
from dtwz.security.auth import CAPABILITY_HEADER, SIGNATURE_HEADER, body_sha256, split_link
from dtwz.security.keys import KeyRecord

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES = [
    web.get("/health", cluster.health),
    web.get("/ready", cluster.ready),
    web.get("/metrics", cluster.metrics),
    web.get("/cluster", cluster.cluster),
    web.get("/", cluster.index),
    web.post("/objects", objects.create),
    web.get("/objects/{id}", objects.info),
    web.get("/objects/{id}/data", objects.read),
    web.get("/objects/{id}/image", objects.image),
    web.put("/objects/{id}/data", objects.write),
    web.post("/objects/{id}/append", objects.append),
    web.post("/objects/{id}/pointer", objects.pointer),
    web.post("/transact", objects.transact),
    web.get("/locate/{id}", objects.locate),
    web.post("/keys", keys.register_key),
    web.post("/session", keys.open_session),
    web.get("/names/root", names.root),
    web.get("/names/resolve", names.resolve),
    web.get("/names/list", names.list_directory),
    web.post("/names/{action}", names.change),
    web.get("/graph/walk", graph.walk),
    web.get("/graph/view", graph.view),
    web.post("/graph/prefetch", graph.prefetch),
    web.post("/graph/migrate", graph.migrate),
    web.post("/graph/colocate", graph.colocate),
    web.post("/code/run", graph.run_code),
]


async def authenticate(request: web.Request, route: str) -> None:
    """Who signed the request, and the capabilities it brings (security on)."""
    access = request.app[NODE_KEY].access
    if access is None or route in cluster.OPEN_ROUTES:
        return
    body = await request.read()  # aiohttp keeps it: handlers read the same bytes
    new_key = None
    if route == "/keys" and request.method == "POST":  # signed by the key it stores
        try:
            new_key = KeyRecord.decode(body).public_key
        except DtwzError as exc:
            raise InvalidArgument(f"the body is not a key record: {exc}") from exc
    headers: Mapping[str, str] = request.headers
    signed_path = request.raw_path
    link = (
        split_link(signed_path) if route in graph.LINK_ROUTES and request.method == "GET" else None
    )
    if link is not None and SIGNATURE_HEADER not in request.headers:
        signed_path, headers = link  # a signed link, opened by a browser
    request["accessor"] = await access.authenticate(
        headers, request.method, signed_path, body_sha256(body), new_key
    )
    request["caps"] = parse_capabilities(request.headers.get(CAPABILITY_HEADER))


def build_app(node: NodeApi) -> web.Application:
    registry = CollectorRegistry()
    registry.register(cluster.NodeCollector(node))
    requests = Counter(
        "dtwz_http_requests", "HTTP requests", ["route", "status"], registry=registry
    )
    latency = Histogram(
        "dtwz_http_latency_seconds", "HTTP request latency", ["route"], registry=registry
    )

    @web.middleware
    async def every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "?"
        try:
            await authenticate(request, route)
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
        middlewares=[every_request],
        client_max_size=1 << 30,
        handler_args={"max_line_size": 16 << 10},
    )
    app[NODE_KEY] = node
    app[cluster.METRICS_KEY] = registry
    app.router.add_routes(ROUTES)
    return app


async def start_http(node: NodeApi, host: str, port: int) -> web.AppRunner:
    """Serve the API on ``host:port``; the runner's ``cleanup()`` stops it."""
    runner = web.AppRunner(build_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


# -- the API as a call of code at the data sees it (docs/SECURITY.md §11) -----------------

# what a call may not do as its caller: keys and sessions would outlive the call,
# and a call starts no other call (nor reads the node's counters or its web page)
CODE_REFUSED = frozenset({"/keys", "/session", "/code/run", "/metrics", "/"})


def build_code_app(
    node: NodeApi, caller_of: Callable[[web.Request], Caller | None]
) -> web.Application:
    """The node's routes (less ``CODE_REFUSED``) for the processes that run code:
    served on connections the node hands one call (``dtwz.node.code.host``), never
    on a port. A request proves nothing itself: it acts as the caller of the call
    its connection belongs to (``caller_of``), with that caller's capabilities and
    those it brings, and is checked like any of that caller's; a connection whose
    call is over is refused. Errors answer as ``build_app``'s do."""

    @web.middleware
    async def as_caller(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            caller = caller_of(request)
            if caller is None:
                raise AccessDenied("the call this connection was made for is over")
            request["accessor"] = caller.kuid
            brought = parse_capabilities(request.headers.get(CAPABILITY_HEADER))
            request["caps"] = [*caller.capabilities, *brought]
            return await handler(request)
        except DtwzError as exc:
            kind, message, fields = errors.describe(exc)
            return web.json_response(
                {"error": kind, "message": message, **fields}, status=errors.http_status(exc)
            )
        except web.HTTPException as exc:
            return web.json_response(
                {"error": "InvalidArgument", "message": exc.text or exc.reason}, status=exc.status
            )

    app = web.Application(
        middlewares=[as_caller],
        client_max_size=MAX_OBJECT_SIZE,
        handler_args={"max_line_size": 16 << 10},
    )
    app[NODE_KEY] = node
    app.router.add_routes([r for r in ROUTES if getattr(r, "path", "/") not in CODE_REFUSED])
    return app
