"""What a call's code reads and writes through: the ``api`` it gets (``DataClient``)
and the objects of the node's store it may map (``GrantedObjects``).

Both run in a call's process (``dtwz.node.code.worker``) and ask the node over the
call's channel (``dtwz.node.code.frames``): for a read-only descriptor of an object
homed here, which the call maps (zero-copy reads) if the caller may read the object
whole; for anything else (other homes, byte ranges of a gated capability, writes,
names) for an HTTP connection to the node's API, which the node serves with the
caller's identity and capabilities, for this call only (docs/SECURITY.md §11).
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable

from dtwz.client.api import DEFAULT_TIMEOUT, Client, ObjectRef
from dtwz.client.transport import ConnectionPool
from dtwz.errors import CodeError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.node.code.frames import FrameSocket, close_all
from dtwz.store.mapping import map_file
from dtwz.store.objects import NameResolver, StoredObject

__all__ = ["MAX_MAPPINGS", "MAX_PENDING", "DataClient", "GrantedObjects"]

MAX_PENDING = 256  # descriptors handed over ahead of need, kept until mapped
MAX_MAPPINGS = 16384  # objects one call keeps mapped (each is a VMA)


class GrantedObjects:
    """The objects of the node's store this call may map: the node hands over a
    read-only descriptor of an object homed here when the caller may read it whole,
    and says no otherwise (then ``fallback`` and ``linked`` fetch through the node's
    API, which serves byte ranges of a gated capability, and objects homed elsewhere).

    The ``ObjectSource`` of the mapped objects: pointers followed out of them come
    back here. ``local_reads`` counts lookups served by mappings.
    """

    def __init__(self, channel: FrameSocket, max_mappings: int = MAX_MAPPINGS) -> None:
        self.channel = channel
        self.max_mappings = max_mappings
        self.local_reads = 0
        self.name_resolver: NameResolver | None = None
        self.fallback: Callable[[ObjectId], StoredObject] | None = None
        self.linked: Callable[[ObjectId, ObjectId], StoredObject] | None = None
        self._mapped: OrderedDict[bytes, StoredObject] = OrderedDict()
        self._refused: set[bytes] = set()  # not here, or not the caller's to map
        self._pending: OrderedDict[bytes, int] = OrderedDict()  # handed over, not mapped yet
        self._guard = threading.Lock()

    def mapped(self, oid: ObjectId) -> StoredObject | None:
        """The object mapped, if the node lets this call map it."""
        with self._guard:
            obj = self._mapped.get(oid)
            if obj is not None:
                self._mapped.move_to_end(oid)
                self.local_reads += 1
                return obj
            if oid in self._refused:
                return None
            fd = self._pending.pop(oid, None)
        if fd is None:
            fd = self._ask(oid)
            if fd is None:
                return None
        try:
            obj = self._map(oid, fd)
        finally:
            os.close(fd)
        with self._guard:
            obj = self._mapped.setdefault(oid, obj)
            self.local_reads += 1
            while len(self._mapped) > self.max_mappings:
                _, old = self._mapped.popitem(last=False)
                old.forget_targets()
        return obj

    def _ask(self, oid: ObjectId) -> int | None:
        """The node's descriptor of ``oid`` (None: not to be had); those of the objects
        it leads to, which come with it, are kept for later."""
        answer, fds = self.channel.request({"op": "open", "id": oid.hex()})
        ids = answer.get("ids")
        if (
            answer.get("ok") is not True
            or not isinstance(ids, list)
            or len(ids) != len(fds)
            or not fds
            or ids[0] != oid.hex()
        ):
            close_all(fds)
            with self._guard:
                self._refused.add(oid)
            return None
        extra: list[int] = []
        with self._guard:
            for raw, fd in zip(ids[1:], fds[1:], strict=True):
                other = ObjectId.parse(str(raw))
                if other in self._mapped or other in self._pending:
                    extra.append(fd)
                else:
                    self._pending[other] = fd
            while len(self._pending) > MAX_PENDING:
                extra.append(self._pending.popitem(last=False)[1])
        close_all(extra)
        return fds[0]

    def _map(self, oid: ObjectId, fd: int) -> StoredObject:
        size = os.fstat(fd).st_size
        # the node opened the file by its ID: the header's ID field says it is that one
        header = ObjectHeader.decode(os.pread(fd, HEADER_RECORD_SIZE, 0), check_id=False)
        if header.object_id != oid or size != header.max_size:
            raise CodeError(f"the node handed over another object than {oid.hex()}")
        return StoredObject(self, ObjectId(oid), map_file(fd, size, writable=False))

    def get(self, oid: ObjectId) -> StoredObject:
        obj = self.mapped(oid)
        if obj is not None:
            return obj
        if self.fallback is None:
            raise CodeError(f"object {oid.hex()} is not homed here and there is no api")
        return self.fallback(oid)

    def get_linked(self, oid: ObjectId, source: ObjectId) -> StoredObject:
        """``get`` for a pointer followed out of ``source`` (``StoredObject._resolve``
        asks for it by name): a fetch says where it came from, so the node counts the
        edge's use."""
        obj = self.mapped(oid)
        if obj is not None:
            return obj
        if self.linked is None:
            return self.get(oid)
        return self.linked(oid, source)


class _NodeConnection(http.client.HTTPConnection):
    """An HTTP connection over a socket the node hands this call (no network)."""

    def __init__(self, channel: FrameSocket, timeout: float) -> None:
        super().__init__("dtwz-node", 80, timeout=timeout)
        self._channel = channel

    def connect(self) -> None:
        answer, fds = self._channel.request({"op": "connect"})
        if answer.get("ok") is not True or len(fds) != 1:
            close_all(fds)
            raise ConnectionRefusedError(str(answer.get("message") or "no connection to the node"))
        self.sock = socket.socket(fileno=fds[0])
        self.sock.settimeout(self.timeout)


class _ChannelPool(ConnectionPool):
    """Connections to the node, each asked of it over the call channel."""

    def __init__(self, channel: FrameSocket, timeout: float) -> None:
        super().__init__("http", "dtwz-node", 80, timeout)
        self.channel = channel

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        return _NodeConnection(self.channel, self.timeout), False


class DataClient(Client):
    """The ``api`` a code object's function gets: a client of the node it runs next
    to, acting as the caller who asked for the run.

    ``get`` (and ``view``, ``follow``, ``read``) serve an object homed here from its
    mapping, zero-copy, when the caller may read it whole; other objects are copies
    fetched through the node, as ``Client`` does. Writes, names and everything else
    go to the node's API over connections the node hands over, and are checked there
    against the caller's rights. It signs nothing: the node knows whose call it is
    by the channel a request comes over.
    """

    def __init__(
        self, channel: FrameSocket, store: GrantedObjects, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        super().__init__("http://dtwz-node", timeout=timeout)
        self._channel.transport.use_pool(_ChannelPool(channel, timeout))
        self.store = store
        self.remote_objects = 0  # copies fetched
        self.remote_reads = 0  # byte ranges read remotely
        self.remote_bytes = 0  # bytes both of those moved
        store.fallback = self.remote_get
        store.linked = self.get_linked
        store.name_resolver = self.name_resolver

    @property
    def stats(self) -> dict[str, int]:
        return {
            "remote_objects": self.remote_objects,
            "remote_reads": self.remote_reads,
            "remote_bytes": self.remote_bytes,
        }

    def get(self, oid: ObjectRef, *, latest: bool = False) -> StoredObject:
        """The object's mapping when it is homed here (always its newest) and the caller
        may read it whole, else a copy through the node (``latest``: the home's newest)."""
        oid = self.resolve(oid)
        obj = self.store.mapped(oid)
        if obj is not None:
            return obj
        return self.remote_get(oid, latest=latest)

    def remote_get(self, oid: ObjectId, *, latest: bool = False) -> StoredObject:
        """A copy of the object through the node (``Client.get``)."""
        installs = self._installs()
        obj = super().get(oid, latest=latest)
        self._count_copy(installs, obj)
        return obj

    def get_linked(self, oid: ObjectId, source: ObjectId) -> StoredObject:
        # pointers followed out of copies (and out of mapped objects to others)
        # come here: a copy may well point back into the store
        obj = self.store.mapped(oid)
        if obj is not None:
            return obj
        installs = self._installs()
        obj = super().get_linked(oid, source)
        self._count_copy(installs, obj)
        return obj

    def read(
        self,
        oid: ObjectRef,
        offset: int = DATA_START,
        length: int | None = None,
        *,
        latest: bool = False,
    ) -> bytes:
        oid = self.resolve(oid)
        obj = self.store.mapped(oid)
        if obj is not None:
            if length is None:
                length = max(0, obj.header().data_end - offset)
            return bytes(obj.read(offset, length))
        data = super().read(oid, offset, length, latest=latest)
        self.remote_reads += 1
        self.remote_bytes += len(data)
        return data

    def _installs(self) -> int:
        return self.cache_stats["installs"]

    def _count_copy(self, installs_before: int, obj: StoredObject) -> None:
        """Count ``obj`` as fetched if the copy cache installed a copy meanwhile."""
        if self._installs() != installs_before:
            header = obj.header()
            self.remote_objects += 1
            self.remote_bytes += HEADER_RECORD_SIZE + header.data_len
            self.remote_bytes += header.max_size - header.fot_start
