"""``Client``: the public API of one node, and a cache of object copies.

``Client(url)`` speaks to one node; that node reaches the rest of the cluster, so
any object can be read, written or followed through any node. The client is
built in layers, each in its own module:

- ``dtwz.client.transport``: connections, retries, and the node's errors raised
  again as the same ``dtwz.errors`` class (``PeerUnavailable`` when it cannot be
  reached, after at most ``timeout`` seconds per attempt);
- ``dtwz.client.auth``: with an ``identity``, every request signed or made in a
  session, with the capabilities added by ``add_capability`` (docs/SECURITY.md);
- ``dtwz.client.transactions``: ``Op`` and ``RemoteTransaction``;
- ``dtwz.client.graph``: walks, prefetch, migration and code runs;
- this module: the methods a user calls, and the copies;
- ``dtwz.client.local``: ``dtwz.connect()``, which finds a node by itself.

Copies: ``get`` fetches an object's image (header record, data, FOT) into an
anonymous mapping (``dtwz.store.copies``), checks its ID against its metadata and
keeps it, tagged with its version. The client is the ``ObjectSource`` of those
copies, so ``obj.follow(word)`` and the Pointer fields of ``view`` fetch targets
on demand. Cached copies are never updated behind the caller's back: they are
snapshots until ``refresh``, ``latest=True`` or a write through this client,
which drops the copies older than the version it committed.

Names: wherever an object ID is taken, a name of the namespace (``/kvs/index``) is
taken too (docs/NAMES.md). The node resolves it from its name cache, which the
directories' homes keep honest by invalidating copies, so the client keeps no
name cache of its own. Late-bound pointers (FOT name entries) in copies resolve
so, at every dereference.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from dtwz.client import graph as remote
from dtwz.client.auth import Channel, identity_from_env
from dtwz.client.transactions import (
    ObjectRef,
    Op,
    RemoteTransaction,
    TransactResult,
    as_object_id,
)
from dtwz.client.transport import DEFAULT_TIMEOUT, Transport
from dtwz.errors import (
    CorruptObject,
    InvalidArgument,
    NamespaceError,
    TransactionConflict,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import (
    DATA_START,
    HEADER_RECORD_SIZE,
    ObjectFlags,
    ObjectHeader,
    Protection,
)
from dtwz.format.names import is_name, split_path
from dtwz.format.views import Layout
from dtwz.graph.stream import StreamImage
from dtwz.security.auth import decode_capability_header, encode_capability_header
from dtwz.security.capabilities import Capability
from dtwz.security.keys import Identity
from dtwz.store.copies import CopyCache
from dtwz.store.objects import NameResolver, StoredObject
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE

if TYPE_CHECKING:
    import networkx as nx

# DEFAULT_TIMEOUT, ObjectRef, Op, RemoteTransaction, TransactResult and
# identity_from_env live in the modules split out of this one; importable from
# here as before
__all__ = [
    "DEFAULT_TIMEOUT",
    "Binding",
    "Client",
    "ObjectLocation",
    "ObjectRef",
    "Op",
    "RemoteTransaction",
    "TransactResult",
    "identity_from_env",
]

L = TypeVar("L", bound=Layout)


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    """Where an object lives, as the asked node sees it. ``copies`` (the nodes
    holding copies) is known only when the asked node is the home."""

    object_id: ObjectId
    home: str
    version: int
    epoch: int
    copies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Binding:
    """A name's binding: ``kind`` is "object", "directory" or "symlink" (whose link
    is ``text`` and whose ``object_id`` is None)."""

    name: str
    kind: str
    object_id: ObjectId | None
    text: str = ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Binding:
        oid = doc.get("id")
        target = ObjectId.parse(str(oid)) if oid and oid != "0" * 32 else None
        return cls(str(doc.get("name", "")), str(doc["kind"]), target, str(doc.get("text", "")))


def _capability_text(cap: Capability | str | None) -> str | None:
    """A capability in its header form (a text is checked to decode)."""
    if cap is None:
        return None
    if isinstance(cap, Capability):
        return encode_capability_header(cap)
    decode_capability_header(cap.strip())  # InvalidCapability if it is not one
    return cap.strip()


class Client:
    """A client of one node. Safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_bytes: int = 256 << 20,
        name_resolver: NameResolver | None = None,
        identity: Identity | None = None,
        audience: str | None = None,
        enrollment: Capability | str | None = None,
    ) -> None:
        transport = Transport(url, timeout=timeout)  # checks the URL and the timeout
        self.url = transport.url
        self.timeout = timeout
        # every request goes through the channel: signed as ``identity``, if any;
        # ``enrollment``: the admin's consent to store its key (docs/SECURITY.md §10)
        self._channel = Channel(transport, identity, audience, _capability_text(enrollment))
        # late-bound pointers in copies resolve through the node, at every dereference
        self.name_resolver: NameResolver | None = name_resolver or self._resolve_pointer_name
        self._copies = CopyCache(self, cache_bytes)
        self._copies_lock = threading.RLock()

    @property
    def identity(self) -> Identity | None:
        """Who this client's requests are signed as (None: not signed)."""
        return self._channel.identity

    def add_capability(self, cap: Capability) -> None:
        """Send ``cap`` with every request from now on (one per target object)."""
        self._channel.capabilities[cap.target] = encode_capability_header(cap)

    def drop_capability(self, target: ObjectRef) -> None:
        self._channel.capabilities.pop(as_object_id(target), None)

    def register_key(self, enrollment: Capability | str | None = None) -> bool:
        """Store this client's public key as its key object in the cluster, that is
        enroll it (idempotent); True when it was created now. It needs the admin's
        consent: ``enrollment`` (an enrollment capability, ``dtwz identity enroll``),
        else the one this client was given, else ``$DTWZ_ENROLLMENT``; without one
        the node refuses (``AccessDenied``, saying how to get enrolled) unless the
        cluster has open enrollment or this client signs as the admin."""
        if enrollment is not None:
            self._channel.enrollment = _capability_text(enrollment)
        return self._channel.register_key()

    def close(self) -> None:
        self._channel.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    @property
    def cache_stats(self) -> dict[str, int]:
        """Hits, misses, installs and drops of this client's copy cache."""
        with self._copies_lock:
            return dict(self._copies.stats) | {"copies": len(self._copies)}

    # -- node and cluster --------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._channel.call("GET", "/health", sign=False).json())

    def ready(self) -> bool:
        """True when the node has joined the cluster (``/ready`` answers 200)."""
        response = self._channel.call("GET", "/ready", check=False, sign=False)
        return response.status == 200

    def cluster_status(self) -> dict[str, Any]:
        """The node's view: members, directory, copies, cache and store counters."""
        return dict(self._channel.call("GET", "/cluster", sign=False).json())

    def locate(self, oid: ObjectRef, *, refresh: bool = False) -> ObjectLocation:
        oid = self.resolve(oid)
        doc = self._channel.call("GET", f"/locate/{oid.hex()}", {"refresh": _bit(refresh)}).json()
        return ObjectLocation(
            oid,
            str(doc["home"]),
            int(doc["version"]),
            int(doc["epoch"]),
            tuple(doc.get("copies", ())),
        )

    def info(self, oid: ObjectRef, *, latest: bool = False) -> dict[str, Any]:
        """Header fields, FOT entries and home of an object (the node's JSON)."""
        oid = self.resolve(oid)
        query = {"latest": _bit(latest)}
        return dict(self._channel.call("GET", f"/objects/{oid.hex()}", query).json())

    # -- reading and writing -------------------------------------------------------

    def create(
        self,
        size: int = DEFAULT_OBJECT_SIZE,
        data: bytes = b"",
        *,
        node: str | None = None,
        flags: int = 0,
        prot: int | None = None,
        default_prot: int | None = None,
    ) -> ObjectId:
        """Create an object homed on ``node`` (a node ID; default: the node asked),
        owned by this client's identity.

        ``data`` is appended in the creating transaction, at ``DATA_START``.
        ``prot`` (or its other name ``default_prot``): the rights everyone has
        without a capability, ``Protection`` bits; by default none, so only the
        owner (and the admin) may use the object until the owner grants more.
        """
        if prot is not None and default_prot is not None and prot != default_prot:
            raise InvalidArgument("give prot or default_prot, not two different values")
        chosen = prot if prot is not None else default_prot
        query: dict[str, Any] = {"size": size, "flags": flags, "prot": chosen or 0}
        if node is not None:
            query["node"] = node
        doc = self._channel.mutate("POST", "/objects", query, bytes(data)).json()
        return ObjectId.parse(str(doc["id"]))

    def read(
        self,
        oid: ObjectRef,
        offset: int = DATA_START,
        length: int | None = None,
        *,
        latest: bool = False,
    ) -> bytes:
        """Bytes of an object (default: ``offset`` up to the end of its data).

        With ``latest`` the node first makes sure its copy is the home's newest.
        """
        oid = self.resolve(oid)
        query: dict[str, Any] = {"offset": offset, "latest": _bit(latest)}
        if length is not None:
            query["length"] = length
        return self._channel.call("GET", f"/objects/{oid.hex()}/data", query).body

    def write(self, oid: ObjectRef, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` in one transaction; the object's new version."""
        oid = self.resolve(oid)
        path = f"/objects/{oid.hex()}/data"
        doc = self._channel.mutate("PUT", path, {"offset": offset}, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["version"])

    def append(self, oid: ObjectRef, data: bytes) -> int:
        """Append ``data`` (8-byte aligned); the offset it landed at."""
        oid = self.resolve(oid)
        doc = self._channel.mutate("POST", f"/objects/{oid.hex()}/append", None, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["offset"])

    def write_pointer(
        self, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> int:
        """Store at ``src + at`` a persistent pointer to ``target + target_offset``;
        the pointer word (an FOT entry is added to ``src`` when needed)."""
        src, target = self.resolve(src), self.resolve(target)
        body = {"at": at, "target": target.hex(), "target_offset": target_offset}
        path = f"/objects/{src.hex()}/pointer"
        doc = self._channel.mutate("POST", path, None, _json(body)).json()
        for hexid, version in doc.get("versions", {}).items():
            self._saw_version(ObjectId.parse(hexid), int(version))
        return int(doc["pointer"])

    def transact(self, ops: Sequence[Op], *, txn_id: bytes | None = None) -> TransactResult:
        """Run ``ops`` atomically at their home (every changed object must share one).

        ``txn_id`` (8-32 bytes, random by default) makes the call safe to repeat:
        the home applies one ID at most once.
        """
        if not ops:
            raise InvalidArgument("a transaction needs at least one operation")
        txn = txn_id if txn_id is not None else os.urandom(16)
        names: dict[str, ObjectId] = {}  # each name resolved once per call

        def resolve(ref: ObjectRef) -> ObjectId:
            if isinstance(ref, str) and is_name(ref):
                if ref not in names:
                    names[ref] = self.resolve(ref)
                return names[ref]
            return as_object_id(ref)

        sent = [op.resolved(resolve) for op in ops]
        body = _json({"txn_id": txn.hex(), "ops": [op.to_json() for op in sent]})
        doc = self._channel.call("POST", "/transact", None, body).json()
        versions = {ObjectId.parse(k): int(v) for k, v in doc.get("versions", {}).items()}
        for oid, version in versions.items():
            self._saw_version(oid, version)
        return TransactResult([int(r) for r in doc["results"]], versions)

    def transaction(self) -> RemoteTransaction:
        """``with client.transaction() as tx:``: ops gathered in the block run as one
        transaction at its end (at their home); ``tx.result`` holds their results."""
        return RemoteTransaction(self)

    def write_name_pointer(
        self, src: ObjectRef, at: int, name: str, target_offset: int = DATA_START
    ) -> int:
        """Store at ``src + at`` a late-bound pointer to ``name`` (+ ``target_offset``),
        resolved at every dereference; the pointer word (``tx.pointer_by_name`` remotely)."""
        return self.transact([Op.name_pointer(src, at, name, target_offset)]).results[0]

    # -- names ---------------------------------------------------------------------------

    def resolve(self, ref: ObjectRef) -> ObjectId:
        """The ID an object reference stands for: an ID as it is, a name as the node
        resolves it now (``NameNotFound``, ``NotADirectory``, ``SymlinkLoop``, ...)."""
        if type(ref) is ObjectId:
            return ref
        if isinstance(ref, str) and is_name(ref):
            oid = self.lookup(ref).object_id
            assert oid is not None  # symbolic links were followed
            return oid
        return as_object_id(ref)

    def lookup(self, path: str, *, nofollow: bool = False) -> Binding:
        """What ``path`` is bound to (with ``nofollow``, a final symbolic link itself)."""
        split_path(path)  # a malformed path is refused here, without a round trip
        query = {"path": path, "nofollow": _bit(nofollow)}
        return Binding.from_json(self._channel.call("GET", "/names/resolve", query).json())

    def root(self) -> ObjectId:
        """The root directory's ID (derived from the cluster's identity)."""
        return ObjectId.parse(str(self._channel.call("GET", "/names/root").json()["id"]))

    def listdir(self, path: str = "/") -> list[Binding]:
        """The bindings of a directory, in the order they were made."""
        doc = self._channel.call("GET", "/names/list", {"path": path}).json()
        return [Binding.from_json(e) for e in doc["entries"]]

    def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        home: str | None = None,
        prot: int = Protection.READ,
    ) -> ObjectId:
        """Make a directory (homed with its parent, or on ``home``), owned by this
        client's identity; its ID. ``parents``: as ``mkdir -p``. ``prot``: READ
        (anyone may look names up in it, the default) or NONE (only its owner, the
        admin and capabilities); changing its names is always its owner's."""
        body = {"path": path, "parents": parents, "home": home, "prot": int(prot)}
        return ObjectId.parse(str(self._name_change("mkdir", body)["id"]))

    def bind(self, path: str, target: ObjectRef, *, replace: bool = False) -> ObjectId | None:
        """Bind ``path`` to an object (``NameExists`` if bound, unless ``replace``: then
        the target replaced is returned)."""
        body = {"path": path, "target": self.resolve(target).hex(), "replace": replace}
        replaced = self._name_change("bind", body).get("replaced")
        return ObjectId.parse(str(replaced)) if replaced else None

    def symlink(self, path: str, text: str) -> None:
        """Bind ``path`` to a symbolic link to ``text`` (a path, absolute or relative)."""
        self._name_change("symlink", {"path": path, "text": text})

    def rename(self, src: str, dst: str, *, replace: bool = False) -> Binding:
        """Move the binding ``src`` to ``dst``; the binding moved."""
        return Binding.from_json(
            self._name_change("rename", {"from": src, "to": dst, "replace": replace})
        )

    def unbind(self, path: str) -> Binding:
        """Remove the binding ``path`` (a directory only when empty); what it was."""
        return Binding.from_json(self._name_change("unbind", {"path": path}))

    def _name_change(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._channel.mutate("POST", f"/names/{action}", None, _json(body)).json())

    def _resolve_pointer_name(self, name: str, source: ObjectId) -> ObjectId:
        try:
            if not is_name(name):
                raise InvalidArgument("it is not an absolute path of the namespace")
            return self.resolve(name)
        except (NamespaceError, InvalidArgument) as exc:
            raise UnresolvedName(f"name {name!r} (FOT entry of {source.hex()}): {exc}") from exc

    # -- copies and pointers ---------------------------------------------------------

    def get(self, oid: ObjectRef, *, latest: bool = False) -> StoredObject:
        """A read-only copy of the object, cached; ``latest`` fetches the home's newest.

        This is the ``ObjectSource`` hook: pointers in copies resolve through it.
        """
        oid = self.resolve(oid)
        if not latest:
            with self._copies_lock:
                copy = self._copies.get(oid)
            if copy is not None:
                return copy.obj
        for _ in range(3):
            obj = self._fetch_copy(oid, latest)
            if obj is not None:
                return obj
            latest = True  # a write we made is newer than what the node served
        raise TransactionConflict(f"object {oid.hex()} kept changing while fetched")

    def refresh(self, oid: ObjectRef) -> None:
        """Drop the cached copy: the next ``get`` fetches it again."""
        oid = self.resolve(oid)
        with self._copies_lock:
            self._copies.discard(oid)

    def cached(self, oid: ObjectRef) -> tuple[StoredObject, int] | None:
        """The cached copy and its version, if there is one (no network)."""
        oid = self.resolve(oid)
        with self._copies_lock:
            copy = self._copies.peek(oid)
        return None if copy is None else (copy.obj, copy.version)

    def view(
        self, layout: type[L], oid: ObjectRef, offset: int = DATA_START, *, latest: bool = False
    ) -> L:
        """A read-only typed view; its Pointer fields fetch their targets on demand."""
        return layout._at(self.get(oid, latest=latest), offset)  # type: ignore[no-any-return]

    def get_linked(self, oid: ObjectId, source: ObjectId) -> StoredObject:
        """``get`` for a pointer followed out of ``source``: a fetch says where it came
        from, so the nodes can count how often each edge crosses (co-location)."""
        with self._copies_lock:
            copy = self._copies.get(oid)
        if copy is not None:
            return copy.obj
        obj = self._fetch_copy(oid, False, via=source)
        return obj if obj is not None else self.get(oid, latest=True)

    def follow(self, oid: ObjectRef, at: int) -> tuple[StoredObject, int]:
        """Dereference the pointer stored at ``oid + at``: (target copy, offset)."""
        obj = self.get(oid)
        return obj.follow(obj.read_u64(at))

    def _fetch_copy(
        self, oid: ObjectId, latest: bool, via: ObjectId | None = None
    ) -> StoredObject | None:
        query: dict[str, Any] = {"latest": _bit(latest)}
        if via is not None:
            query["via"] = via.hex()
        response = self._channel.call("GET", f"/objects/{oid.hex()}/image", query)
        try:
            version = int(response.headers["x-dtwz-version"])
            data_len = int(response.headers["x-dtwz-data-len"])
            fot_len = int(response.headers["x-dtwz-fot-len"])
            home = response.headers.get("x-dtwz-home", "")
        except (KeyError, ValueError) as exc:
            raise CorruptObject(f"image of {oid.hex()} from {self.url}: bad headers") from exc
        body = memoryview(response.body)
        if min(data_len, fot_len) < 0 or len(body) != HEADER_RECORD_SIZE + data_len + fot_len:
            raise CorruptObject(f"image of {oid.hex()} from {self.url}: lengths do not add up")
        record = body[:HEADER_RECORD_SIZE]
        data = body[HEADER_RECORD_SIZE : HEADER_RECORD_SIZE + data_len]
        fot = body[HEADER_RECORD_SIZE + data_len :]
        if not self._install(record, version, home, data, fot, oid):
            return None
        return self._copies.peek(oid).obj  # type: ignore[union-attr]

    def _install(
        self,
        record: bytes | memoryview,
        version: int,
        home: str,
        data: bytes | memoryview,
        fot: bytes | memoryview,
        oid: ObjectId,
    ) -> bool:
        """Keep a served image as a copy after checking it is the object asked for;
        False if this client already saw a newer version."""
        header = ObjectHeader.decode(bytes(record))  # checks the ID against the metadata
        if header.object_id != oid:
            raise CorruptObject(
                f"{self.url} served object {header.object_id.hex()} when asked for {oid.hex()}"
            )
        with self._copies_lock:
            return self._copies.install(bytes(record), version, home, data, fot) is not None

    def _install_streamed(self, image: StreamImage) -> bool:
        """The install hook of ``prefetch``: one image of a prefetch stream."""
        return self._install(
            image.header, image.version, image.home, image.data, image.fot, image.object_id
        )

    def _saw_version(self, oid: ObjectId, version: int) -> None:
        """This client committed ``version``: older copies must not be served again."""
        with self._copies_lock:
            self._copies.invalidate(oid, version)

    # -- the object graph (dtwz.client.graph, docs/GRAPH.md) --------------------------

    def walk(
        self,
        root: ObjectRef,
        *,
        depth: int | None = None,
        budget: int | None = None,
        uses: bool = True,
    ) -> nx.DiGraph[str]:
        """The graph reachable from ``root``, walked by the nodes that hold it."""
        return remote.walk(self._channel, self.resolve(root), depth=depth, budget=budget, uses=uses)

    def graph_view(
        self,
        root: ObjectRef,
        fmt: str = "html",
        *,
        depth: int | None = None,
        budget: int | None = None,
    ) -> str:
        """The graph of ``root`` drawn by the node: html, svg, dot or json."""
        return remote.view(self._channel, self.resolve(root), fmt, depth=depth, budget=budget)

    def graph_link(
        self,
        root: ObjectRef,
        fmt: str = "html",
        *,
        depth: int | None = None,
        budget: int | None = None,
    ) -> str:
        """A URL of the node's drawing of ``root`` that a browser can open: signed by
        this client's identity, good once, within the node's time window (60 s)."""
        return remote.link(self._channel, self.resolve(root), fmt, depth=depth, budget=budget)

    def prefetch(
        self,
        root: ObjectRef,
        *,
        depth: int | None = None,
        budget: int | None = None,
        to_client: bool = True,
        progress: remote.Progress | None = None,
    ) -> remote.PrefetchResult:
        """Bring everything reachable from ``root`` to the node (and, with
        ``to_client``, into this client's cache), in one streamed response."""
        return remote.prefetch(
            self._channel,
            self.resolve(root),
            self._install_streamed,
            depth=depth,
            budget=budget,
            to_client=to_client,
            progress=progress,
        )

    def migrate(
        self, objects: Sequence[ObjectRef], to_node: str, *, reachable: bool = False
    ) -> dict[str, Any]:
        """Move the objects' home to ``to_node`` (docs/GRAPH.md); with ``reachable``,
        everything they reach too (a linked group)."""
        ids = [self.resolve(o) for o in objects]
        if reachable:
            ids = remote.linked_group(self._channel, ids)
        for oid in ids:
            self.refresh(oid)  # its home changes: copies are fetched again from the new one
        return remote.migrate(self._channel, ids, to_node)

    def colocate(
        self,
        root: ObjectRef,
        *,
        depth: int | None = None,
        budget: int | None = None,
        capacity: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Re-home the objects reachable from ``root`` so that fewer pointers cross nodes."""
        return remote.colocate(
            self._channel,
            self.resolve(root),
            depth=depth,
            budget=budget,
            capacity=capacity,
            dry_run=dry_run,
        )

    def put_code(
        self,
        function: Callable[..., Any] | str,
        entry: str | None = None,
        *,
        node: str | None = None,
        prot: int | None = None,
    ) -> ObjectId:
        """Store a function as an immutable code object (see ``run``); its ID.

        ``function`` is a top-level function (its source is taken), or source text
        with ``entry`` naming the function to call. ``prot``: as for ``create``
        (by default none: others run it only with a capability for x)."""
        size, data = remote.code_object(function, entry)
        flags = int(ObjectFlags.IMMUTABLE)
        return self.create(size, data, node=node, flags=flags, prot=prot)

    def run(
        self,
        code: ObjectRef,
        root: ObjectRef,
        *args: Any,
        where: str = "auto",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run a code object's function ``fn(api, root, *args)`` where fewer bytes move,
        within ``timeout`` seconds (None: the node's default); the report holds
        ``result``, ``ran_at``, ``choice`` and the byte estimates."""
        return remote.run(
            self._channel,
            self.resolve(code),
            self.resolve(root),
            args,
            where=where,
            timeout=timeout,
        )


def _bit(flag: bool) -> int:
    return 1 if flag else 0


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()
