"""The worker process that runs code objects' functions next to a node's store.

``python -P -m dtwz.node.code.worker --fd N ...`` is started and kept warm by
``dtwz.node.code.runner.CodeRunner``, one per slot. It holds no key and no
identity, and it never opens the store: it confines itself first
(``dtwz.node.code.isolation``: its own uid or namespaces, Landlock, seccomp,
checked), then waits for calls. For each call it forks a child that sets the
call's limits (CPU seconds, memory) and runs the function; the child exits when
the call ends, so nothing of one call (its caller's data, what its code changed)
is left for the next, and the warm worker itself never holds a caller's data.

Everything a call reads or writes goes through the node, as its caller: the child
asks over its own socket (the *call channel*, below) for an object homed here
and gets a read-only descriptor of its file, which it maps (zero-copy reads), if
the caller may read the object whole; for anything else (other homes, byte
ranges of a gated capability, writes, names) it asks for an HTTP connection and
speaks the node's API over it, which the node serves with the caller's identity
and capabilities, for this call only (docs/SECURITY.md §11).

Frames, on both sockets: a u32 little-endian length, then that many bytes of
UTF-8 JSON, at most 64 MiB; descriptors travel with a frame (SCM_RIGHTS)::

    control (descriptor N: runner <-> this process)
    worker -> runner  {"ready": true, "pid": P, "isolation": {...}}     once confined
    runner -> worker  {"call": C, "limits": {"cpu", "memory"}} + [call socket, its output]
    worker -> runner  {"accepted": C, "pid": child}
    worker -> runner  {"exited": C, "code": exit code or -signal, "cpu": seconds}

    call channel (runner <-> the child running call C)
    runner -> child   {"call_id", "source", "entry", "root", "args"}
    child -> runner   {"op": "open", "id": hex}  -> {"ok": true, "ids": [hex, ...]} + [read-only
                        fds, that object's first, then objects it leads to] | {"ok": false}
    child -> runner   {"op": "connect"}          -> {"ok": true} + [HTTP socket] | {"ok": false}
    child -> runner   {"op": "answer", "call_id", "ok": true, "result", "stats", "elapsed"}
                    | {"op": "answer", "call_id", "ok": false, "error", "message", "traceback"}

End of file on N ends the worker (exit 0). Results are JSON, never pickles: the
node must not unpickle what user code made. User code may print: a call's
stdout and stderr go to that call's own pipe, whose tail the runner keeps to
explain a death (so no caller ever sees another's output).
"""

from __future__ import annotations

import argparse
import array
import builtins
import contextlib
import ctypes
import functools
import gc
import http.client
import json
import linecache
import mmap
import os
import socket
import struct
import sys
import threading
import time
import traceback
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from dtwz.client.api import DEFAULT_TIMEOUT, Client, ObjectRef
from dtwz.client.transport import ConnectionPool
from dtwz.errors import CodeError, DtwzError, PeerUnavailable
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.node.code import isolation
from dtwz.store.objects import NameResolver, StoredObject

__all__ = [
    "FRAME_LIMIT",
    "FRAME_PREFIX",
    "DataClient",
    "GrantedObjects",
    "decode_frame",
    "encode_frame",
    "frame_length",
    "main",
]

FRAME_LIMIT = 64 << 20
FRAME_PREFIX = struct.Struct("<I")
MAX_FDS = 128  # descriptors one frame may carry (objects handed over at once)
MAX_PENDING = 256  # descriptors handed over ahead of need, kept until mapped
MAX_CONNECTIONS = 16  # HTTP connections one call may ask for
MAX_MAPPINGS = 16384  # objects one call keeps mapped (each is a VMA)
_TRACEBACK_CHARS = 4000
_MESSAGE_CHARS = 16000
# what code commonly imports, loaded before the worker is confined: a root node's
# worker runs as a uid of its own, which may not be able to read the Python
# installation (a pyenv under /root); modules loaded here are there all the same
PRELOAD = [
    *("array", "base64", "binascii", "bisect", "calendar", "collections", "collections.abc"),
    *("copy", "csv", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools"),
    *("hashlib", "heapq", "hmac", "io", "itertools", "json", "math", "numbers", "operator"),
    *("pathlib", "pprint", "random", "re", "statistics", "string", "struct", "textwrap"),
    *("time", "typing", "unicodedata", "uuid", "zlib", "subprocess", "threading", "signal"),
    *("concurrent.futures", "contextlib", "logging", "inspect", "traceback", "shlex", "glob"),
    *("fnmatch", "weakref", "queue", "sqlite3", "encodings.idna", "encodings.latin_1"),
    *("encodings.ascii", "encodings.utf_16", "encodings.utf_32", "encodings.cp1252"),
    *("dtwz", "dtwz.format.views"),
]


# -- frames (pure: shared with the runner) ---------------------------------------------


def encode_frame(doc: Mapping[str, Any]) -> bytes:
    """One frame holding ``doc`` (``CodeError`` if it is not JSON or too large)."""
    try:
        body = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise CodeError(f"not JSON-serialisable: {exc}") from exc
    if len(body) > FRAME_LIMIT:
        raise CodeError(f"a {len(body)}-byte message exceeds the {FRAME_LIMIT >> 20} MiB limit")
    return FRAME_PREFIX.pack(len(body)) + body


def frame_length(prefix: bytes) -> int:
    """The body length a frame prefix announces (``CodeError`` past the limit)."""
    (length,) = FRAME_PREFIX.unpack(prefix)
    if length > FRAME_LIMIT:
        raise CodeError(f"a {length}-byte frame exceeds the {FRAME_LIMIT >> 20} MiB limit")
    return int(length)


def decode_frame(body: bytes) -> dict[str, Any]:
    """The JSON object a frame body holds (``CodeError`` for anything else)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CodeError(f"a frame that is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CodeError(f"a frame that is not a JSON object: {type(doc).__name__}")
    return doc


# -- a socket of frames and descriptors (blocking) ---------------------------------------


class FrameSocket:
    """Frames over one end of a socket pair; ``request`` is one exchange, safe to call
    from several threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def receive(self) -> tuple[bytes | None, list[int]]:
        """A frame's body and the descriptors that came with it; None at end of file
        between frames."""
        fds: list[int] = []
        prefix = self._exactly(FRAME_PREFIX.size, fds, eof_ok=True)
        if prefix is None:
            return None, fds
        try:
            body = self._exactly(frame_length(prefix), fds, eof_ok=False)
        except BaseException:
            _close_all(fds)
            raise
        assert body is not None
        return body, fds

    def request(self, doc: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
        with self.lock:
            self.send(encode_frame(doc))
            body, fds = self.receive()
        if body is None:
            raise PeerUnavailable("the node closed this call's channel")
        return decode_frame(body), fds

    def _exactly(self, n: int, fds: list[int], *, eof_ok: bool) -> bytes | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        space = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
        while got < n:
            read, ancillary, flags, _ = self.sock.recvmsg_into([view[got:]], space)
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
            if flags & socket.MSG_CTRUNC:
                _close_all(fds)
                raise CodeError("a frame came with more descriptors than allowed")
            if not read:
                if got == 0 and eof_ok:
                    return None
                raise CodeError(f"the runner's frame ended after {got} of {n} bytes")
            got += read
        return bytes(buf)


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the objects a call may map, and the api ------------------------------------------------


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
except (OSError, AttributeError):
    _libc = None
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_read_only(fd: int, size: int) -> ctypes.Array[ctypes.c_char] | mmap.mmap:
    """A read-only shared mapping of ``size`` bytes of ``fd`` that keeps no descriptor."""
    if _libc is None:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
    mapped = _mapping_type(size).from_address(addr)
    weakref.finalize(mapped, _libc.munmap, addr, size)
    return mapped


@functools.cache
def _mapping_type(size: int) -> type[ctypes.Array[ctypes.c_char]]:
    # a subclass: plain ctypes arrays cannot be weakly referenced (the finalizer)
    return type(f"ReadOnly{size}", (ctypes.c_char * size,), {})


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
            _close_all(fds)
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
        _close_all(extra)
        return fds[0]

    def _map(self, oid: ObjectId, fd: int) -> StoredObject:
        size = os.fstat(fd).st_size
        # the node opened the file by its ID: the header's ID field says it is that one
        header = ObjectHeader.decode(os.pread(fd, HEADER_RECORD_SIZE, 0), check_id=False)
        if header.object_id != oid or size != header.max_size:
            raise CodeError(f"the node handed over another object than {oid.hex()}")
        return StoredObject(self, ObjectId(oid), _map_read_only(fd, size))

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
            _close_all(fds)
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


# -- one call ------------------------------------------------------------------------------


def run_call(channel: FrameSocket, request: Mapping[str, Any]) -> bytes:
    """The answer frame to one request; never raises for anything user code does."""
    call_id = request.get("call_id")
    try:
        entry, code, filename, root, args = _parse(request)
    except CodeError as exc:
        return _error_frame(call_id, "CodeError", str(exc), "")
    store = GrantedObjects(channel)
    api = DataClient(channel, store)
    started = time.perf_counter()
    try:
        namespace: dict[str, Any] = {"__name__": filename, "__builtins__": builtins}
        exec(code, namespace)  # the module's top level: defines the function
        fn = namespace.get(entry)
        if not callable(fn):
            raise CodeError(f"{entry} is not a function once the source has run")
        result = fn(api, root, *args)
    except BaseException as exc:  # SystemExit and all: user code must not end us
        kind = type(exc).__name__
        message = f"{entry} raised {kind}: {_text(exc)}"
        return _error_frame(call_id, kind, message, _short_traceback(exc))
    finally:
        elapsed = time.perf_counter() - started
        api.close()
    stats = {"local_reads": store.local_reads, **api.stats}
    answer = {"op": "answer", "call_id": call_id, "ok": True, "result": result, "stats": stats}
    try:
        return encode_frame({**answer, "elapsed": elapsed})
    except CodeError as exc:
        return _error_frame(call_id, "CodeError", f"the result of {entry} is {exc}", "")
    except BaseException as exc:  # a dict subclass runs its own items() when encoded
        why = f"not JSON-serialisable: {type(exc).__name__}: {_text(exc)}"
        return _error_frame(call_id, "CodeError", f"the result of {entry} is {why}", "")


def _parse(request: Mapping[str, Any]) -> tuple[str, types.CodeType, str, ObjectId, list[Any]]:
    source, entry = request.get("source"), request.get("entry")
    root, args = request.get("root"), request.get("args", [])
    if not isinstance(source, str) or not isinstance(entry, str):
        raise CodeError("a request needs a source and an entry (strings)")
    if not isinstance(root, str):
        raise CodeError("a request needs a root object ID (32 hex digits)")
    if not isinstance(args, list):
        raise CodeError("a request's args must be a list")
    try:
        root_id = ObjectId.parse(root)
    except DtwzError as exc:
        raise CodeError(f"bad root object ID: {exc}") from exc
    if not entry.isidentifier():
        raise CodeError(f"entry {entry!r} is not a valid Python identifier")
    filename = f"<dtwz code {entry}>"
    try:  # the node checked it as a code object (CodeBody): this compiles it once more
        code = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CodeError(f"source does not compile: {type(exc).__name__}: {exc}") from None
    # tracebacks show the source lines (an mtime of None: never checked on disk)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return entry, code, filename, root_id, args


def _error_frame(call_id: Any, kind: str, message: str, trace: str) -> bytes:
    if len(message) > _MESSAGE_CHARS:  # an exception may carry any amount of text
        message = message[:_MESSAGE_CHARS] + "..."
    return encode_frame(
        {
            "op": "answer",
            "call_id": call_id,
            "ok": False,
            "error": kind,
            "message": message,
            "traceback": trace,
        }
    )


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a user exception whose __str__ fails
        return f"<{type(exc).__name__} that cannot be shown>"


def _short_traceback(exc: BaseException) -> str:
    """The traceback from the user's frames on (ours are noise), kept short."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # formatting runs user __str__/__repr__ again
        text = f"{type(exc).__name__} (traceback unavailable)\n"
    if len(text) > _TRACEBACK_CHARS:
        text = "...\n" + text[-_TRACEBACK_CHARS:]
    return text


# -- the process -----------------------------------------------------------------------


def _send_prints_to_stderr() -> None:
    # the runner reads only the tail of stderr; descriptor 1 too, for C extensions
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _preload() -> None:
    import importlib
    import sysconfig

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    sysconfig.get_paths()  # loads (and keeps) the installation's configuration


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dtwz.node.code.worker", description="Run code objects next to a store."
    )
    parser.add_argument("--fd", required=True, type=int, help="descriptor of the socket pair")
    parser.add_argument("--parent", type=int, default=None, help="PID of the runner")
    parser.add_argument("--uid", type=int, default=None, help="root: the uid to run as")
    parser.add_argument(
        "--protect", action="append", default=[], help="a path the worker must not open"
    )
    parser.add_argument("--probe", default=None, help="HOST:PORT the worker must not reach")
    parser.add_argument(
        "--allow-unisolated", action="store_true", help="run even where isolation fails"
    )
    parser.add_argument(
        "--unprivileged",
        action="store_true",
        help="root: become --uid first, then confine as an unprivileged node would (tests)",
    )
    return parser.parse_args(argv)


def _fail(message: str, status: int) -> NoReturn:
    print(f"dtwz code worker: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    isolation.die_with_parent(args.parent)
    _send_prints_to_stderr()
    try:
        os.set_inheritable(args.fd, False)  # not into processes user code starts
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        _fail(f"descriptor {args.fd} is not a socket: {exc}", 2)
    channel = FrameSocket(sock)
    _preload()
    probe = None
    if args.probe:
        host, _, port = args.probe.rpartition(":")
        probe = (host.strip("[]"), int(port))
    uid = args.uid
    if args.unprivileged and uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        uid = None
    confinement = isolation.Confinement(
        uid=uid,
        protect=args.protect,
        probe=probe,
        allow_unisolated=args.allow_unisolated,
        parent=args.parent,
    )
    try:
        report = isolation.confine(confinement)
    except isolation.IsolationError as exc:
        _fail(str(exc), 5)
    isolation.die_with_parent(args.parent)  # a change of credentials cleared it
    # signals scoped to its sandbox: it may sweep away whatever a call left running;
    # a root node's worker (a uid of its own) limits the processes of that uid
    own_uid = report.mode == "root" and not report.unisolated
    zygote = Zygote(channel, sweep=report.signals_scoped and not report.unisolated)
    gc.freeze()  # what is loaded now stays put: a call's process copies fewer pages
    try:
        channel.send(
            encode_frame({"ready": True, "pid": os.getpid(), "isolation": report.as_json()})
        )
        return zygote.serve(processes=64 if own_uid else None)
    except OSError as exc:  # the runner went away mid-frame
        _fail(f"the runner's socket failed: {exc}", 4)
    except CodeError as exc:  # a frame we cannot read past: no way to resynchronise
        _fail(str(exc), 2)
    finally:
        sock.close()


class Zygote:
    """The warm worker: forks one child per call, reports how each ended."""

    def __init__(self, channel: FrameSocket, *, sweep: bool) -> None:
        self.channel = channel
        self.sweep = sweep

    def serve(self, processes: int | None) -> int:
        while True:
            body, fds = self.channel.receive()
            if body is None:
                return 0
            try:
                request = decode_frame(body)
                limits = request.get("limits") or {}
                cpu, memory = int(limits.get("cpu", 60)), int(limits.get("memory", 0))
                if len(fds) != 2:
                    raise CodeError(f"a call needs a socket and a pipe, {len(fds)} came")
            except (CodeError, TypeError, ValueError) as exc:
                _close_all(fds)
                self.channel.send(encode_frame({"error": f"bad request: {exc}"}))
                continue
            call_id = request.get("call")
            pid = os.fork()
            if pid == 0:  # the child: never returns
                self._child(fds[0], fds[1], cpu, memory, processes)
            _close_all(fds)
            self.channel.send(encode_frame({"accepted": call_id, "pid": pid}))
            _, status, usage = os.wait4(pid, 0)
            self._reap_leftovers()
            cpu_used = usage.ru_utime + usage.ru_stime
            code = os.waitstatus_to_exitcode(status)
            self.channel.send(
                encode_frame({"exited": call_id, "code": code, "cpu": round(cpu_used, 3)})
            )

    def _child(
        self, call_fd: int, output_fd: int, cpu: int, memory: int, processes: int | None
    ) -> NoReturn:
        status = 70
        try:
            os.setpgid(0, 0)  # a group of its own: the runner kills it with what it started
            isolation.die_with_parent(os.getppid())
            self.channel.sock.close()  # the control socket is the worker's, not the call's
            # prints go to this call's own pipe: no caller sees another's output
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.close(output_fd)
            isolation.set_run_limits(max(1, cpu), memory, processes)
            call = FrameSocket(socket.socket(fileno=call_fd))
            body, fds = call.receive()
            _close_all(fds)
            if body is None:
                os._exit(0)
            call.send(run_call(call, decode_frame(body)))
            status = 0
        except BaseException as exc:  # nothing of ours may outlive the call
            try:
                print(f"dtwz code worker: the call failed: {exc!r}", file=sys.stderr, flush=True)
            finally:
                os._exit(status)
        sys.stderr.flush()
        os._exit(status)

    def _reap_leftovers(self) -> None:
        """Processes the call started and left behind: with a uid of its own (or
        signals scoped to the sandbox), the worker ends them; it reaps any it finds."""
        if self.sweep:
            with contextlib.suppress(OSError):
                os.kill(-1, 9)  # everything this worker may signal: its own, left over
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


if __name__ == "__main__":
    sys.exit(main())
