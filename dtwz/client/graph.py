"""The graph service seen from a client: the calls behind ``Client.walk``,
``prefetch``, ``migrate``, ``colocate``, ``put_code`` and ``run`` (docs/GRAPH.md).

Plain functions over a ``Channel`` (``dtwz.client.auth``), the request path the
Client itself uses. They know nothing of the Client: it resolves names to IDs
before it calls them and passes what else they need as arguments (the hook that
installs a streamed image into its cache, the copies to drop before a
migration). So this module imports no other client module but the channel, and
the Client imports it, never the other way round.

The one piece of work done here is reading a prefetch stream
(``dtwz.graph.stream``) and handing each image to the install hook, which keeps
it as a checked copy, so that a traversal after a prefetch never leaves the
client.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import networkx as nx

from dtwz.client.auth import Channel
from dtwz.client.transport import error_from_event
from dtwz.errors import InvalidArgument, ProtocolError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph import model, stream
from dtwz.graph.code import CodeBody, code_from_function
from dtwz.security.auth import link_query

__all__ = [
    "Install",
    "PrefetchResult",
    "Progress",
    "code_object",
    "colocate",
    "link",
    "linked_group",
    "migrate",
    "prefetch",
    "run",
    "view",
    "walk",
]

DEFAULT_RUN_TIMEOUT = 60.0  # seconds a run may take when the caller does not say
Progress = Callable[[int, int, int], None]  # (objects done, bytes done, objects in all)
Install = Callable[[stream.StreamImage], bool]  # False: older than a version already seen


def _limits(depth: int | None, budget: int | None) -> dict[str, Any]:
    return {k: v for k, v in (("depth", depth), ("budget", budget)) if v is not None}


def walk(
    channel: Channel,
    root: ObjectId,
    *,
    depth: int | None = None,
    budget: int | None = None,
    uses: bool = True,
) -> nx.DiGraph[str]:
    """The graph reachable from ``root``, walked by the nodes that hold it."""
    query = {"root": root.hex(), "uses": int(uses), **_limits(depth, budget)}
    return model.from_json(channel.call("GET", "/graph/walk", query).json())


def view(
    channel: Channel,
    root: ObjectId,
    fmt: str = "html",
    *,
    depth: int | None = None,
    budget: int | None = None,
) -> str:
    """The graph of ``root`` drawn by the node: html, svg, dot or json."""
    query = {"root": root.hex(), "format": fmt, **_limits(depth, budget)}
    return channel.call("GET", "/graph/view", query).body.decode("utf-8")


def link(
    channel: Channel,
    root: ObjectId,
    fmt: str = "html",
    *,
    depth: int | None = None,
    budget: int | None = None,
) -> str:
    """A URL of the node's drawing of ``root`` for a browser, signed (not in a
    session: a browser holds no session key) when the channel has an identity."""
    query = {"root": root.hex(), "format": fmt, **_limits(depth, budget)}
    target = f"/graph/view?{urlencode(query)}"
    signature = link_query(channel.headers("GET", target, b"", session=False))
    return f"{channel.url}{target}&{signature}" if signature else f"{channel.url}{target}"


@dataclass(frozen=True)
class PrefetchResult:
    objects: int  # objects in the reachable set
    fetched_by_node: int  # copies the node fetched from other homes
    received: int  # images this client installed
    bytes: int  # bytes of images received
    requests: int  # batch requests the node sent to holders


def prefetch(
    channel: Channel,
    root: ObjectId,
    install: Install,
    *,
    depth: int | None = None,
    budget: int | None = None,
    to_client: bool = True,
    progress: Progress | None = None,
) -> PrefetchResult:
    """Bring the reachable set of ``root`` to the node, and (``to_client``) each image
    to ``install``, in one streamed response."""
    query = {"root": root.hex(), "to": "client" if to_client else "node", **_limits(depth, budget)}
    total = received = nbytes = 0
    plan: dict[str, Any] = {}
    done: dict[str, Any] | None = None
    for kind, payload in channel.stream("POST", "/graph/prefetch", query):
        if kind == stream.EVENT:
            doc = stream.decode_event(payload)
            if doc["event"] == "error":
                raise error_from_event(doc)
            if doc["event"] == "plan":
                plan = doc
                total = int(doc["objects"])
            elif doc["event"] == "done":
                done = doc
        else:
            image = stream.decode_image(payload)
            if not install(image):
                continue  # older than a version this client already saw
            received += 1
            nbytes += len(image.header) + len(image.data) + len(image.fot)
        if progress is not None:
            progress(
                received if to_client else int((done or plan).get("fetched", 0)), nbytes, total
            )
    if done is None:
        raise ProtocolError("the prefetch stream ended before its last event")
    return PrefetchResult(
        total, int(done.get("fetched", 0)), received, nbytes, int(done.get("requests", 0))
    )


def linked_group(channel: Channel, ids: Sequence[ObjectId]) -> list[ObjectId]:
    """``ids`` and every object they reach (directories excepted): what moves together
    in a migration with ``reachable``."""
    group = dict.fromkeys(oid.hex() for oid in ids)
    for oid in ids:
        for key, attrs in walk(channel, oid, uses=False).nodes(data=True):
            if attrs.get("kind") == "object" and not attrs.get("directory"):
                group.setdefault(key)
    return [ObjectId.parse(key) for key in group]


def migrate(channel: Channel, ids: Sequence[ObjectId], to_node: str) -> dict[str, Any]:
    """Move the objects' home to ``to_node``; the node's report."""
    body = {"ids": [oid.hex() for oid in ids], "to": to_node}
    return dict(channel.mutate_json("POST", "/graph/migrate", body))


def colocate(
    channel: Channel,
    root: ObjectId,
    *,
    depth: int | None = None,
    budget: int | None = None,
    capacity: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Re-home the objects reachable from ``root`` so that fewer pointers cross nodes."""
    body = {
        "root": root.hex(),
        "depth": depth,
        "budget": budget,
        "capacity": capacity,
        "dry_run": dry_run,
    }
    return dict(channel.mutate_json("POST", "/graph/colocate", body))


def code_object(function: Callable[..., Any] | str, entry: str | None = None) -> tuple[int, bytes]:
    """The size and data of the code object holding ``function``: a top-level function
    (its source is taken), or source text with ``entry`` naming the function to call."""
    if isinstance(function, str):
        if not entry:
            raise InvalidArgument("source text needs the name of its entry function")
        body = CodeBody(function, entry)
    elif inspect.isfunction(function):
        body = code_from_function(function)
    else:
        raise InvalidArgument("put_code takes a function or source text")
    data = body.encode()
    return 1 << max(13, (DATA_START + len(data) + 64 - 1).bit_length()), data


def run(
    channel: Channel,
    code: ObjectId,
    root: ObjectId,
    args: Sequence[Any],
    *,
    where: str = "auto",
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run a code object's function against ``root`` where fewer bytes move, within
    ``timeout`` seconds (None: the node's default, 60 s or its most if lower)."""
    body: dict[str, Any] = {
        "code": code.hex(),
        "root": root.hex(),
        "args": list(args),
        "where": where,
    }
    if timeout is not None:
        body["timeout"] = timeout
    else:
        timeout = DEFAULT_RUN_TIMEOUT
    # a run may wait up to its time limit for a worker (the node's workers are shared
    # fairly between callers), then take its whole time limit: wait for both, plus the
    # walk and transfer
    return dict(channel.mutate_json("POST", "/code/run", body, timeout=2 * timeout + 30))
