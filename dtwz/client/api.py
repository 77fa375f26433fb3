"""A synchronous client for one node's HTTP API, and a cache of object copies.

``Client(url)`` speaks to one node; that node reaches the rest of the cluster, so
any object can be read, written or followed through any node. Errors the node
reports as ``{"error": kind, "message": ...}`` are raised again here as the same
``dtwz.errors`` class; a node that cannot be reached raises ``PeerUnavailable``
naming its URL, after at most ``timeout`` seconds per attempt.

Retries: a request that fails on a kept-alive connection the node had closed
(its idle timer, or a restart) is sent again on a fresh one, once, without
counting as a retry. Beyond that, every mutation (``create`` included) carries a
transaction ID (``X-Dtwz-Txn`` or ``txn_id``) and the home applies an ID at most
once, so a mutation is retried once, with the same ID, after any transport
failure. Reads are retried once unless they timed out (a retry would only double
the wait). So a call returns or raises within about two ``timeout`` periods.

Copies: ``get`` fetches an object's image (header record, data, FOT) into an
anonymous mapping (``dtwz.store.copies``), checks its ID against its metadata and
keeps it, tagged with its version. The client is the ``ObjectSource`` of those
copies, so ``obj.follow(word)`` and the Pointer fields of ``view`` fetch targets
on demand. Cached copies are never updated behind the caller's back: they are
snapshots until ``refresh``, ``latest=True`` or a write through this client,
which drops the copies older than the version it committed.

Names: wherever an object ID is taken, a name of the namespace (``/kvs/index``) is
taken too. The node resolves it from its name cache, which the directories' homes
keep honest by invalidating copies, so the client keeps no name cache of its own.
Late-bound pointers (FOT name entries) in copies resolve so, at every dereference.
``dtwz.connect()`` (``dtwz.node.launcher.connect``) finds a node by itself.

Security: with an ``identity``, every request is signed (``dtwz.security.auth``) for the
node's ID as audience (learnt once from ``/health``) and carries the
capabilities added with ``add_capability``. A node that does not know the key
answers ``UnknownKey``; the client then stores its key object and sends the
request again, once. ``identity_from_env()`` loads ``$DTWZ_IDENTITY``.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from dtwz import errors
from dtwz.client import graph as remote
from dtwz.errors import (
    ClusterError,
    CorruptObject,
    DtwzError,
    InvalidArgument,
    NamespaceError,
    PeerUnavailable,
    ProtocolError,
    TransactionConflict,
    UnknownKey,
    UnknownSession,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.format.views import Layout
from dtwz.graph import stream
from dtwz.resolver.names import is_name, split_path
from dtwz.security.auth import (
    CAPABILITY_HEADER,
    SESSION_TTL,
    body_sha256,
    client_session_keys,
    encode_capability_header,
    link_query,
    mac_request,
    session_key,
    sign_request,
)
from dtwz.security.capabilities import Capability
from dtwz.security.keys import Identity
from dtwz.store.copies import CopyCache
from dtwz.store.objects import NameResolver, StoredObject
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "Binding",
    "Client",
    "ObjectLocation",
    "Op",
    "RemoteTransaction",
    "TransactResult",
]

L = TypeVar("L", bound=Layout)
ObjectRef = ObjectId | str
"""An object ID, its 32 hex digits, or a name of the namespace ("/kvs/index")."""

DEFAULT_TIMEOUT = 10.0
_POOL_SIZE = 8


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction; build it with the class methods."""

    kind: str
    object_id: ObjectRef  # an ID, or a name the client resolves when it sends the op
    offset: int = 0
    data: bytes = b""
    target: ObjectRef | None = None
    target_offset: int = 0
    size: int = 0

    @classmethod
    def write(cls, oid: ObjectRef, offset: int, data: bytes) -> Op:
        return cls("write", _ref(oid), offset, bytes(data))

    @classmethod
    def append(cls, oid: ObjectRef, data: bytes) -> Op:
        return cls("append", _ref(oid), 0, bytes(data))

    @classmethod
    def pointer(
        cls, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> Op:
        """A pointer bound now: a name ``target`` is resolved once, when the op is sent."""
        return cls("pointer", _ref(src), at, b"", _ref(target), target_offset)

    @classmethod
    def name_pointer(
        cls, src: ObjectRef, at: int, name: str, target_offset: int = DATA_START
    ) -> Op:
        """A late-bound pointer: ``name`` goes into an FOT name entry of ``src`` and is
        resolved through the namespace each time the pointer is followed."""
        split_path(name)
        return cls("name_pointer", _ref(src), at, name.encode(), None, target_offset)

    @classmethod
    def alloc(cls, oid: ObjectRef, size: int) -> Op:
        return cls("alloc", _ref(oid), size=size)

    def resolved(self, resolve: Callable[[ObjectRef], ObjectId]) -> Op:
        """This op with names replaced by the IDs they name now."""
        target = None if self.target is None else resolve(self.target)
        return dataclasses.replace(self, object_id=resolve(self.object_id), target=target)

    def to_json(self) -> dict[str, Any]:
        oid = _oid(self.object_id)  # names must have been resolved (``resolved``)
        doc: dict[str, Any] = {"kind": self.kind, "object": oid.hex()}
        if self.offset:
            doc["offset"] = self.offset
        if self.data:
            doc["data"] = base64.b64encode(self.data).decode()
        if self.target is not None:
            doc["target"] = _oid(self.target).hex()
            doc["target_offset"] = self.target_offset
        elif self.kind == "name_pointer":
            doc["target_offset"] = self.target_offset
        if self.size:
            doc["size"] = self.size
        return doc


@dataclass(frozen=True, slots=True)
class TransactResult:
    """One result per op (append: offset, pointer: the word, alloc: offset, write: 0)
    and the version each touched object reached."""

    results: list[int]
    versions: dict[ObjectId, int]


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


@dataclass(slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ClusterError(f"node answered with a body that is not JSON: {exc}") from exc


@dataclass
class _Pool:
    """Idle keep-alive connections to one node; one request per connection at a time."""

    scheme: str
    host: str
    port: int
    timeout: float
    idle: list[http.client.HTTPConnection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout), False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            if len(self.idle) < _POOL_SIZE:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


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
    ) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"node URL must look like http://host:port, got {url!r}")
        if timeout <= 0:
            raise InvalidArgument("timeout must be positive")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise InvalidArgument(f"bad port in node URL {url!r}") from exc
        self.url = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        # late-bound pointers in copies resolve through the node, at every dereference
        self.name_resolver: NameResolver | None = name_resolver or self._resolve_pointer_name
        self._pool = _Pool(parts.scheme, parts.hostname, port, timeout)
        self._copies = CopyCache(self, cache_bytes)
        self._copies_lock = threading.RLock()
        self.identity = identity
        self._audience = audience  # the node's ID; asked of /health on first use
        self._capabilities: dict[ObjectId, str] = {}  # target -> header value
        self._key_stored = False
        # (session ID, key, expiry): requests carry an HMAC instead of a signature
        self._session: tuple[ObjectId, bytes, float] | None = None
        self._sessions = True  # False once a node says it has none (security off)
        self._session_lock = threading.RLock()

    def add_capability(self, cap: Capability) -> None:
        """Send ``cap`` with every request from now on (one per target object)."""
        self._capabilities[cap.target] = encode_capability_header(cap)

    def drop_capability(self, target: ObjectRef) -> None:
        self._capabilities.pop(_oid(target), None)

    def register_key(self) -> bool:
        """Store this client's public key as its key object in the cluster (idempotent);
        True when it was created now."""
        if self.identity is None:
            raise InvalidArgument("this client has no identity")
        # signed, not in a session: a session is opened by a key the cluster knows
        response = self._call(
            "POST",
            "/keys",
            None,
            self.identity.record.encode(),
            headers={"X-Dtwz-Txn": os.urandom(16).hex()},
            session=False,
        )
        self._key_stored = True
        return response.status == 201

    def _auth_headers(
        self, method: str, target: str, body: bytes | None, *, session: bool = True
    ) -> dict[str, str]:
        if self.identity is None:
            return {}
        if self._audience is None:
            self._audience = str(self._call("GET", "/health", sign=False).json()["node_id"])
        now = time.time()
        digest = body_sha256(body or b"")
        opened = self._open_session(now) if session else None
        if opened is not None:
            headers = mac_request(
                opened[0], opened[1], method, target, digest, now, audience=self._audience
            )
        else:
            headers = sign_request(
                self.identity, method, target, digest, now, audience=self._audience
            )
        if self._capabilities:
            headers[CAPABILITY_HEADER] = ",".join(self._capabilities.values())
        return headers

    def _open_session(self, now: float) -> tuple[ObjectId, bytes, float] | None:
        """The session requests are made in: one Ed25519-signed handshake (an X25519
        key agreement), then an HMAC per request (docs/SECURITY.md §5)."""
        if not self._sessions or self.identity is None:
            return None
        with self._session_lock:
            if self._session is not None and self._session[2] - now > 30:
                return self._session
            private, public = client_session_keys()
            try:
                doc = self._call("POST", "/session", None, public, session=False).json()
            except InvalidArgument:  # the node has no sessions (security off): sign
                self._sessions = False
                return None
            try:
                session_id = ObjectId.parse(str(doc["session"]))
                node_public = bytes.fromhex(str(doc["public"]))
                shared = private.exchange(X25519PublicKey.from_public_bytes(node_public))
                expires = now + min(float(doc["expires"]) - time.time(), SESSION_TTL)
            except (KeyError, ValueError, DtwzError) as exc:
                raise ProtocolError(f"{self.url} answered a session request badly: {exc}") from exc
            assert self._audience is not None
            key = session_key(
                shared, session_id, self.identity.kuid, public, node_public, self._audience
            )
            self._session = (session_id, key, expires)
            return self._session

    def close(self) -> None:
        self._pool.close()

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
        return dict(self._call("GET", "/health", sign=False).json())

    def ready(self) -> bool:
        """True when the node has joined the cluster (``/ready`` answers 200)."""
        response = self._call("GET", "/ready", check=False, sign=False)
        return response.status == 200

    def cluster_status(self) -> dict[str, Any]:
        """The node's view: members, directory, copies, cache and store counters."""
        return dict(self._call("GET", "/cluster", sign=False).json())

    def locate(self, oid: ObjectRef, *, refresh: bool = False) -> ObjectLocation:
        oid = self.resolve(oid)
        doc = self._call("GET", f"/locate/{oid.hex()}", {"refresh": _bit(refresh)}).json()
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
        return dict(self._call("GET", f"/objects/{oid.hex()}", {"latest": _bit(latest)}).json())

    # -- reading and writing -------------------------------------------------------

    def create(
        self,
        size: int = DEFAULT_OBJECT_SIZE,
        data: bytes = b"",
        *,
        node: str | None = None,
        flags: int = 0,
        prot: int = 3,
    ) -> ObjectId:
        """Create an object homed on ``node`` (a node ID; default: the node asked).

        ``data`` is appended in the creating transaction, at ``DATA_START``.
        """
        query: dict[str, Any] = {"size": size, "flags": flags, "prot": prot}
        if node is not None:
            query["node"] = node
        doc = self._mutate("POST", "/objects", query, bytes(data)).json()
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
        return self._call("GET", f"/objects/{oid.hex()}/data", query).body

    def write(self, oid: ObjectRef, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` in one transaction; the object's new version."""
        oid = self.resolve(oid)
        path = f"/objects/{oid.hex()}/data"
        doc = self._mutate("PUT", path, {"offset": offset}, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["version"])

    def append(self, oid: ObjectRef, data: bytes) -> int:
        """Append ``data`` (8-byte aligned); the offset it landed at."""
        oid = self.resolve(oid)
        doc = self._mutate("POST", f"/objects/{oid.hex()}/append", None, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["offset"])

    def write_pointer(
        self, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> int:
        """Store at ``src + at`` a persistent pointer to ``target + target_offset``;
        the pointer word (an FOT entry is added to ``src`` when needed)."""
        src, target = self.resolve(src), self.resolve(target)
        body = {"at": at, "target": target.hex(), "target_offset": target_offset}
        doc = self._mutate("POST", f"/objects/{src.hex()}/pointer", None, _json(body)).json()
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
            return _oid(ref)

        sent = [op.resolved(resolve) for op in ops]
        body = _json({"txn_id": txn.hex(), "ops": [op.to_json() for op in sent]})
        doc = self._call("POST", "/transact", None, body).json()
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
        return _oid(ref)

    def lookup(self, path: str, *, nofollow: bool = False) -> Binding:
        """What ``path`` is bound to (with ``nofollow``, a final symbolic link itself)."""
        split_path(path)  # a malformed path is refused here, without a round trip
        doc = self._call("GET", "/names/resolve", {"path": path, "nofollow": _bit(nofollow)})
        return Binding.from_json(doc.json())

    def root(self) -> ObjectId:
        """The root directory's ID (derived from the cluster's identity)."""
        return ObjectId.parse(str(self._call("GET", "/names/root").json()["id"]))

    def listdir(self, path: str = "/") -> list[Binding]:
        """The bindings of a directory, in the order they were made."""
        doc = self._call("GET", "/names/list", {"path": path}).json()
        return [Binding.from_json(e) for e in doc["entries"]]

    def mkdir(self, path: str, *, parents: bool = False, home: str | None = None) -> ObjectId:
        """Make a directory (homed with its parent, or on ``home``); its ID. ``parents``:
        as ``mkdir -p``."""
        body = {"path": path, "parents": parents, "home": home}
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
        return dict(self._mutate("POST", f"/names/{action}", None, _json(body)).json())

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
        response = self._call("GET", f"/objects/{oid.hex()}/image", query)
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

    def _saw_version(self, oid: ObjectId, version: int) -> None:
        """This client committed ``version``: older copies must not be served again."""
        with self._copies_lock:
            self._copies.invalidate(oid, version)

    # -- the object graph (dtwz.client.graph) -------------------------------------------

    def walk(
        self,
        root: ObjectRef,
        *,
        depth: int | None = None,
        budget: int | None = None,
        uses: bool = True,
    ) -> nx.DiGraph[str]:
        """The graph reachable from ``root`` (docs/GRAPH.md), walked by the nodes that
        hold it."""
        return remote.walk(self, root, depth=depth, budget=budget, uses=uses)

    def graph_view(
        self,
        root: ObjectRef,
        fmt: str = "html",
        *,
        depth: int | None = None,
        budget: int | None = None,
    ) -> str:
        """The graph of ``root`` drawn by the node: html, svg, dot or json."""
        return remote.view(self, root, fmt, depth=depth, budget=budget)

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
        query: dict[str, Any] = {"root": self.resolve(root).hex(), "format": fmt}
        query |= {k: v for k, v in (("depth", depth), ("budget", budget)) if v is not None}
        target = f"/graph/view?{urlencode(query)}"
        signature = link_query(self._auth_headers("GET", target, b"", session=False))
        return f"{self.url}{target}&{signature}" if signature else f"{self.url}{target}"

    def prefetch(
        self,
        root: ObjectRef,
        *,
        depth: int | None = None,
        budget: int | None = None,
        to_client: bool = True,
        progress: remote.Progress | None = None,
    ) -> remote.PrefetchResult:
        """Bring everything reachable from ``root`` to the node (and this client)."""
        return remote.prefetch(
            self, root, depth=depth, budget=budget, to_client=to_client, progress=progress
        )

    def migrate(
        self, objects: Sequence[ObjectRef], to_node: str, *, reachable: bool = False
    ) -> dict[str, Any]:
        """Move the objects' home to ``to_node`` (DESIGN.md §4 rules); with
        ``reachable``, everything they reach too (a linked group)."""
        return remote.migrate(self, objects, to_node, reachable=reachable)

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
            self, root, depth=depth, budget=budget, capacity=capacity, dry_run=dry_run
        )

    def put_code(
        self,
        function: Callable[..., Any] | str,
        entry: str | None = None,
        *,
        node: str | None = None,
    ) -> ObjectId:
        """Store a function as a code object (see ``run``)."""
        return remote.put_code(self, function, entry, node=node)

    def run(
        self,
        code: ObjectRef,
        root: ObjectRef,
        *args: Any,
        where: str = "auto",
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Run a code object's function ``fn(api, root, *args)`` where fewer bytes move;
        the report holds ``result``, ``ran_at``, ``choice`` and the byte estimates."""
        return remote.run(self, code, root, *args, where=where, timeout=timeout)

    # -- transport ---------------------------------------------------------------------

    def _mutate(
        self, method: str, path: str, query: Mapping[str, Any] | None, body: bytes
    ) -> _Response:
        headers = {"X-Dtwz-Txn": os.urandom(16).hex()}
        return self._call(method, path, query, body, headers=headers)

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        sign: bool = True,
        session: bool = True,
    ) -> _Response:
        target = f"{path}?{urlencode(query)}" if query else path
        base_headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        mutation = method != "GET"
        failures = 0
        stale_allowed = True
        key_retry = sign and self.identity is not None and not self._key_stored
        session_retry = sign and session and self.identity is not None
        while True:
            # signed afresh for every attempt: a node refuses a nonce it has seen
            all_headers = (
                {**base_headers, **self._auth_headers(method, target, body, session=session)}
                if sign
                else base_headers
            )
            conn, reused = self._pool.take()
            _set_timeout(conn, timeout or self.timeout)
            try:
                conn.request(method, target, body=body, headers=all_headers)
                raw = conn.getresponse()
                got = {k.lower(): v for k, v in raw.getheaders()}
                response = _Response(raw.status, got, raw.read())
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and stale_allowed and isinstance(exc, _STALE):
                    # the node closed its end of a kept-alive connection (idle timer or a
                    # restart): the other idle ones are stale too; this try does not count
                    stale_allowed = False
                    self._pool.close()
                    continue
                failures += 1
                if failures > 1 or not _may_retry(exc, mutation):
                    raise self._unavailable(method, path, exc) from exc
                continue
            if raw.will_close:
                conn.close()
            else:
                self._pool.give_back(conn)
            if session_retry and response.status == 401:
                session_retry = False
                if isinstance(_error_from(response, self.url), UnknownSession):
                    self._session = None  # expired, or the node restarted: open another
                    continue
            if key_retry and response.status == 401 and path != "/keys":
                key_retry = False
                if isinstance(_error_from(response, self.url), UnknownKey):
                    self.register_key()  # a key the cluster did not know: store it, once
                    continue
            break
        if check and response.status >= 400:
            raise _error_from(response, self.url)
        return response

    def _mutate_json(
        self, method: str, path: str, doc: Any, *, timeout: float | None = None
    ) -> Any:
        headers = {"X-Dtwz-Txn": os.urandom(16).hex(), "Content-Type": "application/json"}
        return self._call(method, path, None, _json(doc), headers=headers, timeout=timeout).json()

    def _stream(
        self, method: str, path: str, query: Mapping[str, Any]
    ) -> Iterator[tuple[int, memoryview]]:
        """The frames of a streamed answer (``dtwz.graph.stream``), read as they come."""
        target = f"{path}?{urlencode(query)}"
        if self.identity is not None and not self._key_stored:
            self.register_key()  # a stream cannot be sent again on UnknownKey: store it first
        headers = self._auth_headers(method, target, b"")
        conn, _ = self._pool.take()
        _set_timeout(conn, self.timeout)
        try:
            conn.request(method, target, body=b"", headers=headers)
            raw = conn.getresponse()
            if raw.status >= 400:
                got = {k.lower(): v for k, v in raw.getheaders()}
                raise _error_from(_Response(raw.status, got, raw.read()), self.url)
            while True:
                head = raw.read(stream.FRAME.size)
                if not head:
                    break
                kind, length = stream.frame_head(head)
                payload = raw.read(length)
                if len(payload) != length:
                    raise ProtocolError("the stream ended inside a frame")
                yield kind, memoryview(payload)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unavailable(method, path, exc) from exc
        except BaseException:
            conn.close()
            raise
        if raw.will_close:
            conn.close()
        else:
            self._pool.give_back(conn)

    def _unavailable(self, method: str, path: str, exc: BaseException) -> PeerUnavailable:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(exc) or type(exc).__name__
        return PeerUnavailable(f"node {self.url} did not answer {method} {path}: {why}")


_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def identity_from_env() -> Identity | None:
    """The identity in the file ``$DTWZ_IDENTITY`` names, if it is set."""
    path = os.environ.get("DTWZ_IDENTITY")
    return Identity.load(path) if path else None


def _set_timeout(conn: http.client.HTTPConnection, timeout: float) -> None:
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)


def _may_retry(exc: BaseException, mutation: bool) -> bool:
    """Whether a request that failed on a fresh connection may be sent once more:
    mutations always (they carry transaction IDs), reads unless they timed out."""
    return mutation or not isinstance(exc, TimeoutError)


def _error_from(response: _Response, url: str) -> DtwzError:
    """The node's error as the dtwz exception type it named."""
    try:
        doc = json.loads(response.body)
        kind, message = str(doc["error"]), str(doc["message"])
    except (ValueError, KeyError, TypeError):
        text = response.body[:200].decode("utf-8", "replace").strip()
        return ClusterError(f"node {url} answered HTTP {response.status}: {text}")
    return errors.rebuild(
        kind, message, doc, unknown=ClusterError if response.status >= 500 else DtwzError
    )


class RemoteTransaction:
    """Ops gathered by a ``with client.transaction() as tx:`` block, run together (all
    or nothing, at the home of the objects they change) when the block ends, unless
    it raised. Each method returns its op's index: ``tx.result.results[i]`` is the
    op's result (append and alloc: the offset; pointers: the word)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.ops: list[Op] = []
        self.result: TransactResult | None = None

    def __enter__(self) -> RemoteTransaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self.ops:
            self.result = self._client.transact(self.ops)

    def _add(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def write(self, oid: ObjectRef, offset: int, data: bytes) -> int:
        return self._add(Op.write(oid, offset, data))

    def append(self, oid: ObjectRef, data: bytes) -> int:
        return self._add(Op.append(oid, data))

    def alloc(self, oid: ObjectRef, size: int) -> int:
        return self._add(Op.alloc(oid, size))

    def write_pointer(
        self, src: ObjectRef, at: int, target: ObjectRef, offset: int = DATA_START
    ) -> int:
        return self._add(Op.pointer(src, at, target, offset))

    def write_name_pointer(
        self, src: ObjectRef, at: int, name: str, offset: int = DATA_START
    ) -> int:
        return self._add(Op.name_pointer(src, at, name, offset))


def _ref(value: ObjectRef) -> ObjectRef:
    """An ID, or a name kept for the client to resolve (checked for syntax now)."""
    if isinstance(value, str) and is_name(value):
        split_path(value)
        return value
    return _oid(value)


def _oid(value: ObjectRef) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str):
        try:
            return ObjectId.parse(value)
        except DtwzError as exc:
            raise InvalidArgument(f"{exc}, or a name such as /kvs/index") from exc
    raise InvalidArgument(f"an object is an ObjectId, 32 hex digits or a name, got {value!r}")


def _bit(flag: bool) -> int:
    return 1 if flag else 0


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()
