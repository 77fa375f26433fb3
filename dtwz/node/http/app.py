"""The node's HTTP API: the one module that builds the aiohttp application.

It holds what every request goes through and the route table; the handlers live
by resource in ``cluster``, ``objects``, ``names``, ``keys`` and ``graph``, and
see the node only as ``context.NodeApi``.

Every request passes one middleware, in this order:

1. **authentication before work** (docs/SECURITY.md §9): with security on, every
   route but the open ones (``cluster.OPEN_ROUTES``) needs a signed request (or
   one in a session, or a signed link for the pages a browser opens). What the
   headers alone tell is checked before any of the body is read
   (``Access.admit``: the proof's form, a session or a known key, the audience,
   the time window, an unused nonce), so an unsigned request, or one with an
   unknown key, a stale timestamp or a used nonce, is answered having read
   nothing of its body and having fetched, copied and counted nothing. Then the
   body is read, at most the route's limit (``body_limit``), within a time limit
   and under a bound on bodies received at once (``HttpLimits``), and only then
   is the signature over its digest checked (``Access.accept``). The requester's
   kuid and capabilities go on the request, and each handler asks
   ``context.allow`` for the rights its operation needs on each object. A body
   left unread is discarded as it arrives (aiohttp's lingering close), never
   kept;
2. **errors to HTTP**, in this one place: a ``DtwzError`` answers JSON
   ``{"error": <dtwz.errors class name>, "message": ..., <its fields>}``
   (``errors.describe``) with the status its class carries
   (``errors.http_status``: 404 unknown object, 400 bad input, 401 unknown key
   or replayed request, 403 access denied, 408 a body too slow, 409 conflicts,
   413 a body too large, 503 when another node is needed and cannot be reached
   or the node is at its bound of uploads, with Retry-After), so ``dtwz.client``
   raises the same exception type the node raised; aiohttp's own HTTP errors
   keep their status as ``InvalidArgument``;
3. **metrics**: a count per route and status, and a latency histogram, served
   with the node's counters at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from dtwz import errors
from dtwz.errors import (
    AccessDenied,
    DtwzError,
    InvalidArgument,
    NodeBusy,
    RequestTimeout,
    RequestTooLarge,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import MAX_OBJECT_SIZE
from dtwz.graph.agent import Caller
from dtwz.node.access import Admission, parse_capabilities
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


KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what a client may make a node hold (``NodeConfig``: max_uploads,
    body_timeout, header_timeout)."""

    max_uploads: int = 16  # bodies being received at once; more get 503 + Retry-After
    body_timeout: float = 30.0  # seconds a body may take, and one more per MiB received
    header_timeout: float = 60.0  # seconds for a request's headers (and an idle connection)
    retry_after: int = 1  # seconds, the Retry-After of a 503 at the bound of uploads


# The most each route's body may hold: read before its signature can be checked.
# Routes not named here take no body. Object writes are refined by ``body_limit``.
BODY_LIMITS: dict[tuple[str, str], int] = {
    ("POST", "/objects"): MAX_OBJECT_SIZE,  # at most ?size=
    ("PUT", "/objects/{id}/data"): MAX_OBJECT_SIZE,  # at most the object's size
    ("POST", "/objects/{id}/append"): MAX_OBJECT_SIZE,  # likewise
    ("POST", "/objects/{id}/pointer"): 4 * KIB,
    ("POST", "/transact"): 16 * MIB,  # JSON: writes travel in base64
    ("POST", "/keys"): 4 * KIB,  # a key record: 46 bytes and a label of up to 1 KiB
    ("POST", "/session"): 1 * KIB,  # an X25519 public key: 32 bytes
    ("POST", "/names/{action}"): 64 * KIB,  # paths of up to 4 KiB, JSON-escaped
    ("POST", "/graph/prefetch"): 1 * MIB,
    ("POST", "/graph/migrate"): 1 * MIB,
    ("POST", "/graph/colocate"): 1 * MIB,
    ("POST", "/code/run"): 1 * MIB,
}
_SIZED_BY_OBJECT = frozenset({"/objects/{id}/data", "/objects/{id}/append"})


def body_limit(node: NodeApi, request: web.Request, route: str) -> int:
    """The most ``request``'s body may hold (0: it takes none). A write to an object
    this node holds (home or copy) is bounded by that object's size; a creation by
    its ``?size=``; nothing is fetched to learn either."""
    limit = BODY_LIMITS.get((request.method, route), 0)
    if limit == 0:
        return 0
    if route == "/objects":
        with contextlib.suppress(ValueError):  # the handler says what is wrong with it
            limit = min(limit, max(0, int(request.query.get("size", str(1 << 20)), 0)))
    elif route in _SIZED_BY_OBJECT:
        try:
            oid = ObjectId.parse(request.match_info["id"])
            limit = min(limit, node.service.get(oid).header().max_size)
        except (DtwzError, KeyError):
            pass  # not here (or not an ID): the handler finds out, after the check
    return limit


async def read_body(
    request: web.Request, limit: int, uploads: asyncio.Semaphore, limits: HttpLimits
) -> web.Request:
    """``request`` with its body read (at most ``limit`` bytes, within the time
    limit, holding one of the upload slots): handlers ``await request.read()`` the
    same bytes. ``RequestTooLarge``, ``RequestTimeout``, ``NodeBusy``."""
    declared = request.content_length
    if not request.body_exists and not declared:
        return request
    if limit == 0 or (declared is not None and declared > limit):
        what = "no body" if limit == 0 else f"at most {limit} bytes"
        size = f"{declared} bytes" if declared is not None else "a body"
        raise RequestTooLarge(f"{request.method} {request.path} takes {what}; this one has {size}")
    if uploads.locked():
        raise NodeBusy(
            f"the node is receiving {limits.max_uploads} request bodies already; send it "
            f"again in {limits.retry_after} s"
        )
    sized = request.clone(client_max_size=limit)
    async with uploads:
        try:
            await _read_in_time(sized, limits.body_timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body came too slowly: a body may take {limits.body_timeout:g} s "
                "and one more per MiB received"
            ) from None
        except ConnectionError:  # the client went away mid-body: nobody reads the answer
            raise RequestTimeout("the connection closed before the request body arrived") from None
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(
                f"{request.method} {request.path} takes at most {limit} bytes"
            ) from None
    return sized


async def _read_in_time(request: web.Request, grace: float) -> None:
    """Read ``request``'s body, which may take ``grace`` seconds and one more per MiB
    received (a sender slower than 1 MiB/s on average past the grace is cut, whatever
    length it announced); ``TimeoutError`` past that."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reading = asyncio.ensure_future(request.read())
    try:
        while True:
            left = start + grace + request.content.total_bytes / MIB - loop.time()
            if left <= 0:
                raise TimeoutError
            done, _ = await asyncio.wait({reading}, timeout=left)
            if done:
                reading.result()  # its error, if any
                return
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading


async def admit(
    request: web.Request, route: str, uploads: asyncio.Semaphore, limits: HttpLimits
) -> web.Request:
    """Authenticate ``request`` and read its body, in that order (see the module
    docstring); the request the handler gets, with "accessor" and "caps" set."""
    node = request.app[NODE_KEY]
    access = node.access
    admission: Admission | None = None
    if access is not None and route not in cluster.OPEN_ROUTES:
        headers: Mapping[str, str] = request.headers
        signed_path = request.raw_path
        link = (
            split_link(signed_path)
            if route in graph.LINK_ROUTES and request.method == "GET"
            else None
        )
        if link is not None and SIGNATURE_HEADER not in request.headers:
            signed_path, headers = link  # a signed link, opened by a browser
        registering = route == "/keys" and request.method == "POST"
        admission = await access.admit(headers, request.method, signed_path, brings_key=registering)
    request = await read_body(request, body_limit(node, request, route), uploads, limits)
    if access is None or admission is None:
        return request
    body = await request.read()
    new_key = None
    if route == "/keys" and request.method == "POST":  # signed by the key it stores
        try:
            new_key = KeyRecord.decode(body).public_key
        except DtwzError as exc:
            raise InvalidArgument(f"the body is not a key record: {exc}") from exc
    request["accessor"] = await access.accept(admission, body_sha256(body), new_key)
    request["caps"] = parse_capabilities(request.headers.get(CAPABILITY_HEADER))
    return request


def build_app(node: NodeApi, limits: HttpLimits | None = None) -> web.Application:
    limits = limits or HttpLimits()
    uploads = asyncio.Semaphore(limits.max_uploads)
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
            request = await admit(request, route, uploads, limits)
            response = await handler(request)
        except DtwzError as exc:
            kind, message, fields = errors.describe(exc)
            response = web.json_response(
                {"error": kind, "message": message, **fields}, status=errors.http_status(exc)
            )
            if isinstance(exc, NodeBusy):
                response.headers["Retry-After"] = str(limits.retry_after)
            elif isinstance(exc, RequestTimeout):
                response.force_close()  # the rest of a slow body is not waited for
        except RecursionError:  # input nested deeper than Python goes (JSON, a repr of it)
            response = web.json_response(
                {"error": "InvalidArgument", "message": "the request is nested too deeply"},
                status=400,
            )
        except web.HTTPException as exc:
            response = web.json_response(
                {"error": "InvalidArgument", "message": exc.text or exc.reason}, status=exc.status
            )
        requests.labels(route, str(response.status)).inc()
        latency.labels(route).observe(time.perf_counter() - start)
        return response

    # a request line must hold a path of the namespace (4096 bytes, 3x that URL-encoded)
    # headers must arrive within header_timeout: aiohttp's keep-alive timer runs from
    # the connection's start and closes it while no whole request has come
    app = web.Application(
        middlewares=[every_request],
        client_max_size=MAX_OBJECT_SIZE,
        handler_args={
            "max_line_size": 16 << 10,
            "keepalive_timeout": limits.header_timeout,
            "lingering_time": 5.0,  # an unread body is discarded this long, then closed
        },
    )
    app[NODE_KEY] = node
    app[cluster.METRICS_KEY] = registry
    app.router.add_routes(ROUTES)
    return app


async def start_http(
    node: NodeApi, host: str, port: int, limits: HttpLimits | None = None
) -> web.AppRunner:
    """Serve the API on ``host:port``; the runner's ``cleanup()`` stops it."""
    runner = web.AppRunner(build_app(node, limits), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return runner


# -- the API as a call of code at the data sees it (docs/SECURITY.md §11) -----------------

# what a call may not do as its caller: keys and sessions would outlive the call,
# and a call starts no other call (nor reads the node's counters or its web page)
CODE_REFUSED = frozenset({"/keys", "/session", "/code/run", "/metrics", "/"})


def build_code_app(
    node: NodeApi,
    caller_of: Callable[[web.Request], Caller | None],
    limits: HttpLimits | None = None,
) -> web.Application:
    """The node's routes (less ``CODE_REFUSED``) for the processes that run code:
    served on connections the node hands one call (``dtwz.node.code.host``), never
    on a port. A request proves nothing itself: it acts as the caller of the call
    its connection belongs to (``caller_of``), with that caller's capabilities and
    those it brings, and is checked like any of that caller's; a connection whose
    call is over is refused. Bodies have the same limits as on the port (per route,
    in time, a bound on those read at once). Errors answer as ``build_app``'s do."""
    limits = limits or HttpLimits()
    uploads = asyncio.Semaphore(limits.max_uploads)

    @web.middleware
    async def as_caller(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            caller = caller_of(request)
            if caller is None:
                raise AccessDenied("the call this connection was made for is over")
            resource = request.match_info.route.resource
            route = resource.canonical if resource else "?"
            request = await read_body(request, body_limit(node, request, route), uploads, limits)
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
