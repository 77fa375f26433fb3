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
anonymous mapping (``dtwz.node.copies``), checks its ID against its metadata and
keeps it, tagged with its version. The client is the ``ObjectSource`` of those
copies, so ``obj.follow(word)`` and the Pointer fields of ``view`` fetch targets
on demand. Cached copies are never updated behind the caller's back: they are
snapshots until ``refresh``, ``latest=True`` or a write through this client,
which drops the copies older than the version it committed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from dtwz import errors
from dtwz.errors import (
    ClusterError,
    CorruptObject,
    DtwzError,
    InvalidArgument,
    PeerUnavailable,
    TransactionConflict,
)
from dtwz.ids import ObjectId
from dtwz.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.node.copies import CopyCache
from dtwz.node.objects import NameResolver, StoredObject
from dtwz.node.transaction import DEFAULT_OBJECT_SIZE
from dtwz.views import Layout

__all__ = ["Client", "ObjectLocation", "Op", "TransactResult"]

L = TypeVar("L", bound=Layout)
ObjectRef = ObjectId | str

DEFAULT_TIMEOUT = 10.0
_POOL_SIZE = 8


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction; build it with the class methods."""

    kind: str
    object_id: ObjectId
    offset: int = 0
    data: bytes = b""
    target: ObjectId | None = None
    target_offset: int = 0
    size: int = 0

    @classmethod
    def write(cls, oid: ObjectRef, offset: int, data: bytes) -> Op:
        return cls("write", _oid(oid), offset, bytes(data))

    @classmethod
    def append(cls, oid: ObjectRef, data: bytes) -> Op:
        return cls("append", _oid(oid), 0, bytes(data))

    @classmethod
    def pointer(
        cls, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> Op:
        return cls("pointer", _oid(src), at, b"", _oid(target), target_offset)

    @classmethod
    def alloc(cls, oid: ObjectRef, size: int) -> Op:
        return cls("alloc", _oid(oid), size=size)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "object": self.object_id.hex()}
        if self.offset:
            doc["offset"] = self.offset
        if self.data:
            doc["data"] = base64.b64encode(self.data).decode()
        if self.target is not None:
            doc["target"] = self.target.hex()
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


class _ClientCopies(CopyCache):
    """The node's copy cache, plus dropping a copy on request (``refresh``)."""

    def discard(self, oid: ObjectId) -> bool:
        present = oid in self._copies
        self._drop(oid)
        return present


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
        self.name_resolver = name_resolver
        self._pool = _Pool(parts.scheme, parts.hostname, port, timeout)
        self._copies = _ClientCopies(self, cache_bytes)
        self._copies_lock = threading.RLock()

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
        return dict(self._call("GET", "/health").json())

    def ready(self) -> bool:
        """True when the node has joined the cluster (``/ready`` answers 200)."""
        response = self._call("GET", "/ready", check=False)
        return response.status == 200

    def cluster_status(self) -> dict[str, Any]:
        """The node's view: members, directory, copies, cache and store counters."""
        return dict(self._call("GET", "/cluster").json())

    def locate(self, oid: ObjectRef, *, refresh: bool = False) -> ObjectLocation:
        oid = _oid(oid)
        doc = self._call("GET", f"/locate/{oid.hex()}", {"refresh": _bit(refresh)}).json()
        return ObjectLocation(
            oid, str(doc["home"]), int(doc["version"]), int(doc["epoch"]),
            tuple(doc.get("copies", ())),
        )  # fmt: skip

    def info(self, oid: ObjectRef, *, latest: bool = False) -> dict[str, Any]:
        """Header fields, FOT entries and home of an object (the node's JSON)."""
        oid = _oid(oid)
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
        oid = _oid(oid)
        query: dict[str, Any] = {"offset": offset, "latest": _bit(latest)}
        if length is not None:
            query["length"] = length
        return self._call("GET", f"/objects/{oid.hex()}/data", query).body

    def write(self, oid: ObjectRef, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` in one transaction; the object's new version."""
        oid = _oid(oid)
        path = f"/objects/{oid.hex()}/data"
        doc = self._mutate("PUT", path, {"offset": offset}, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["version"])

    def append(self, oid: ObjectRef, data: bytes) -> int:
        """Append ``data`` (8-byte aligned); the offset it landed at."""
        oid = _oid(oid)
        doc = self._mutate("POST", f"/objects/{oid.hex()}/append", None, bytes(data)).json()
        self._saw_version(oid, int(doc["version"]))
        return int(doc["offset"])

    def write_pointer(
        self, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> int:
        """Store at ``src + at`` a persistent pointer to ``target + target_offset``;
        the pointer word (an FOT entry is added to ``src`` when needed)."""
        src, target = _oid(src), _oid(target)
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
        body = _json({"txn_id": txn.hex(), "ops": [op.to_json() for op in ops]})
        doc = self._call("POST", "/transact", None, body).json()
        versions = {ObjectId.parse(k): int(v) for k, v in doc.get("versions", {}).items()}
        for oid, version in versions.items():
            self._saw_version(oid, version)
        return TransactResult([int(r) for r in doc["results"]], versions)

    # -- copies and pointers ---------------------------------------------------------

    def get(self, oid: ObjectRef, *, latest: bool = False) -> StoredObject:
        """A read-only copy of the object, cached; ``latest`` fetches the home's newest.

        This is the ``ObjectSource`` hook: pointers in copies resolve through it.
        """
        oid = _oid(oid)
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
        with self._copies_lock:
            self._copies.discard(_oid(oid))

    def cached(self, oid: ObjectRef) -> tuple[StoredObject, int] | None:
        """The cached copy and its version, if there is one (no network)."""
        with self._copies_lock:
            copy = self._copies.peek(_oid(oid))
        return None if copy is None else (copy.obj, copy.version)

    def view(
        self, layout: type[L], oid: ObjectRef, offset: int = DATA_START, *, latest: bool = False
    ) -> L:
        """A read-only typed view; its Pointer fields fetch their targets on demand."""
        return layout._at(self.get(oid, latest=latest), offset)  # type: ignore[no-any-return]

    def follow(self, oid: ObjectRef, at: int) -> tuple[StoredObject, int]:
        """Dereference the pointer stored at ``oid + at``: (target copy, offset)."""
        obj = self.get(oid)
        return obj.follow(obj.read_u64(at))

    def _fetch_copy(self, oid: ObjectId, latest: bool) -> StoredObject | None:
        response = self._call("GET", f"/objects/{oid.hex()}/image", {"latest": _bit(latest)})
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
        record = bytes(body[:HEADER_RECORD_SIZE])
        header = ObjectHeader.decode(record)  # checks the ID against the metadata
        if header.object_id != oid:
            raise CorruptObject(
                f"{self.url} served object {header.object_id.hex()} when asked for {oid.hex()}"
            )
        data = body[HEADER_RECORD_SIZE : HEADER_RECORD_SIZE + data_len]
        fot = body[HEADER_RECORD_SIZE + data_len :]
        with self._copies_lock:
            copy = self._copies.install(record, version, home, data, fot)
        return None if copy is None else copy.obj

    def _saw_version(self, oid: ObjectId, version: int) -> None:
        """This client committed ``version``: older copies must not be served again."""
        with self._copies_lock:
            self._copies.invalidate(oid, version)

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
    ) -> _Response:
        target = f"{path}?{urlencode(query)}" if query else path
        all_headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        mutation = method != "GET"
        failures = 0
        stale_allowed = True
        while True:
            conn, reused = self._pool.take()
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
            break
        if check and response.status >= 400:
            raise _error_from(response, self.url)
        return response

    def _unavailable(self, method: str, path: str, exc: BaseException) -> PeerUnavailable:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(exc) or type(exc).__name__
        return PeerUnavailable(f"node {self.url} did not answer {method} {path}: {why}")


_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


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
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, DtwzError)):
        cls = ClusterError if response.status >= 500 else DtwzError
        message = f"{kind}: {message}"
    return cls(message)


def _oid(value: ObjectRef) -> ObjectId:
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str):
        try:
            return ObjectId.parse(value)
        except DtwzError as exc:
            raise InvalidArgument(str(exc)) from exc
    raise InvalidArgument(f"an object ID is an ObjectId or 32 hex digits, got {value!r}")


def _bit(flag: bool) -> int:
    return 1 if flag else 0


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()
