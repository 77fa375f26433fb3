"""The graph service seen from a client (``Client.walk``, ``prefetch``, ``run``...).

Thin calls of the node's ``/graph`` and ``/code`` routes; the one piece of work
done here is reading a prefetch stream (``dtwz.graph.stream``) and installing
each image as a checked copy in the client's cache, so that a traversal after a
prefetch never leaves the client.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from dtwz import errors
from dtwz.errors import InvalidArgument, ProtocolError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, ObjectFlags
from dtwz.graph import model, stream
from dtwz.graph.code import CodeBody, code_from_function

if TYPE_CHECKING:
    from dtwz.client.api import Client, ObjectRef

Progress = Callable[[int, int, int], None]  # (objects done, bytes done, objects in all)


def _limits(depth: int | None, budget: int | None) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if depth is not None:
        query["depth"] = depth
    if budget is not None:
        query["budget"] = budget
    return query


def walk(
    client: Client,
    root: ObjectRef,
    *,
    depth: int | None = None,
    budget: int | None = None,
    uses: bool = True,
) -> nx.DiGraph[str]:
    oid = client.resolve(root)
    query = {"root": oid.hex(), "uses": int(uses), **_limits(depth, budget)}
    return model.from_json(client._call("GET", "/graph/walk", query).json())


def view(
    client: Client,
    root: ObjectRef,
    fmt: str = "html",
    *,
    depth: int | None = None,
    budget: int | None = None,
) -> str:
    oid = client.resolve(root)
    query = {"root": oid.hex(), "format": fmt, **_limits(depth, budget)}
    return client._call("GET", "/graph/view", query).body.decode("utf-8")


@dataclass(frozen=True)
class PrefetchResult:
    objects: int  # objects in the reachable set
    fetched_by_node: int  # copies the node fetched from other homes
    received: int  # images this client installed
    bytes: int  # bytes of images received
    requests: int  # batch requests the node sent to holders


def prefetch(
    client: Client,
    root: ObjectRef,
    *,
    depth: int | None = None,
    budget: int | None = None,
    to_client: bool = True,
    progress: Progress | None = None,
) -> PrefetchResult:
    """Bring the reachable set of ``root`` to the node, and (``to_client``) into this
    client's cache, in one streamed response."""
    oid = client.resolve(root)
    query = {"root": oid.hex(), "to": "client" if to_client else "node", **_limits(depth, budget)}
    total = received = nbytes = 0
    plan: dict[str, Any] = {}
    done: dict[str, Any] | None = None
    for kind, payload in client._stream("POST", "/graph/prefetch", query):
        if kind == stream.EVENT:
            doc = stream.decode_event(payload)
            if doc["event"] == "error":
                raise errors.rebuild(str(doc.get("kind")), str(doc.get("message")), doc)
            if doc["event"] == "plan":
                plan = doc
                total = int(doc["objects"])
            elif doc["event"] == "done":
                done = doc
        else:
            image = stream.decode_image(payload)
            if not client._install(
                image.header, image.version, image.home, image.data, image.fot, image.object_id
            ):
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


def migrate(
    client: Client, objects: Sequence[ObjectRef], to_node: str, *, reachable: bool = False
) -> dict[str, Any]:
    ids = [client.resolve(o).hex() for o in objects]
    if reachable:  # the whole linked group: everything the objects reach (not directories)
        group = dict.fromkeys(ids)
        for oid in ids:
            for key, attrs in walk(client, oid, uses=False).nodes(data=True):
                if attrs.get("kind") == "object" and not attrs.get("directory"):
                    group.setdefault(key)
        ids = list(group)
    for oid in ids:
        client.refresh(oid)  # its home changes: copies are re-fetched from the new one
    return dict(client._mutate_json("POST", "/graph/migrate", {"ids": ids, "to": to_node}))


def colocate(
    client: Client,
    root: ObjectRef,
    *,
    depth: int | None = None,
    budget: int | None = None,
    capacity: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    body = {
        "root": client.resolve(root).hex(),
        "depth": depth,
        "budget": budget,
        "capacity": capacity,
        "dry_run": dry_run,
    }
    return dict(client._mutate_json("POST", "/graph/colocate", body))


def put_code(
    client: Client,
    function: Callable[..., Any] | str,
    entry: str | None = None,
    *,
    node: str | None = None,
) -> ObjectId:
    """Store a function as an immutable code object; its ID.

    ``function`` is a top-level function (its source is taken), or source text
    with ``entry`` naming the function to call."""
    if isinstance(function, str):
        if not entry:
            raise InvalidArgument("source text needs the name of its entry function")
        body = CodeBody(function, entry)
    elif inspect.isfunction(function):
        body = code_from_function(function)
    else:
        raise InvalidArgument("put_code takes a function or source text")
    data = body.encode()
    size = 1 << max(13, (DATA_START + len(data) + 64 - 1).bit_length())
    return client.create(size, data, node=node, flags=int(ObjectFlags.IMMUTABLE))


def run(
    client: Client,
    code: ObjectRef,
    root: ObjectRef,
    *args: Any,
    where: str = "auto",
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Run a code object's function against ``root`` where fewer bytes move."""
    body = {
        "code": client.resolve(code).hex(),
        "root": client.resolve(root).hex(),
        "args": list(args),
        "where": where,
        "timeout": timeout,
    }
    # a run may take its whole time limit: wait for it, plus the walk and transfer
    return dict(client._mutate_json("POST", "/code/run", body, timeout=timeout + 30))
