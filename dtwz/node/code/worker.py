"""The worker process that runs code objects' functions next to a node's store.

``python -m dtwz.node.code.worker --store DIR --node URL --fd N`` is started and kept
warm by ``dtwz.node.code.runner.CodeRunner``. It maps the node's store to read it
zero-copy and never writes it: user functions get a ``DataClient`` (``api``)
whose reads come from the store when it holds the object and from the node's
HTTP API otherwise, and whose writes go through that API, to each object's home.

Protocol, on descriptor N only (one end of a Unix socket pair): every frame is a
u32 little-endian length, then that many bytes of UTF-8 JSON, at most 64 MiB::

    worker -> runner  {"ready": true, "pid": P}                 once the store is open
    runner -> worker  {"call_id", "source", "entry", "root", "args"}
    worker -> runner  {"accepted": call_id}                     as soon as it is read
    worker -> runner  {"call_id", "ok": true, "result", "stats", "elapsed"}
                    | {"call_id", "ok": false, "error", "message", "traceback"}

End of file on N ends the worker (exit 0). Results are JSON, never pickles: the
node must not unpickle what user code made. User code may print: stdout is sent
to stderr, which the runner keeps the tail of.
"""

from __future__ import annotations

import argparse
import builtins
import ctypes
import hashlib
import json
import linecache
import os
import signal
import socket
import struct
import sys
import time
import traceback
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dtwz.client.api import DEFAULT_TIMEOUT, Client, ObjectRef, identity_from_env
from dtwz.errors import CodeError, DtwzError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE
from dtwz.graph.code import CodeBody
from dtwz.store.objects import StoredObject
from dtwz.store.redo import RedoOp
from dtwz.store.store import Store

if TYPE_CHECKING:
    from dtwz.store.transaction import Transaction

__all__ = [
    "FRAME_LIMIT",
    "DataClient",
    "LocalStore",
    "decode_frame",
    "encode_frame",
    "frame_length",
    "main",
]

FRAME_LIMIT = 64 << 20
FRAME_PREFIX = struct.Struct("<I")
_CODE_CACHE = 64  # compiled sources kept by a warm worker
_TRACEBACK_CHARS = 4000
_MESSAGE_CHARS = 16000


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


# -- the store and the api --------------------------------------------------------------


class LocalStore(Store):
    """The node's store, opened next to the node to read only.

    Recovery is the node's job (it opened the store first, and its commits reach
    the objects before they are acknowledged), so opening runs no checkpoint, and
    transactions are refused: this process writes nothing to the store.
    ``local_reads`` counts lookups served from the store's own objects.
    """

    def __init__(self, path: Path, **options: Any) -> None:
        self.local_reads = 0
        self._generation: int | None = None  # the node's deletion count at the last call
        # the client's get_linked: a remote pointer target fetched with its source
        self.linked: Callable[[ObjectId, ObjectId], StoredObject] | None = None
        super().__init__(path, **options)

    def checkpoint(self) -> int:
        return 0

    def transaction(self) -> Transaction:
        raise CodeError("code reads the node's store directly; write through the api")

    def commit(self, ops: list[RedoOp]) -> None:
        raise CodeError("code reads the node's store directly; write through the api")

    def get(self, oid: ObjectId) -> StoredObject:
        obj = super().get(oid)
        if obj._store is self:  # not a remote copy from the fallback
            self.local_reads += 1
        return obj

    def get_linked(self, oid: ObjectId, source: ObjectId) -> StoredObject:
        """``get`` for a pointer followed out of local object ``source``
        (``StoredObject._resolve`` asks for it by name): a remote target is fetched
        saying where it was linked from, so the node counts the edge's use."""
        linked = self.linked
        if linked is None or self.exists(oid):
            return self.get(oid)
        return linked(oid, source)

    def begin_call(self, generation: int | None = None) -> None:
        """Start a call. Pointers into remote objects resolve to fresh copies, not ones
        a previous call fetched. Mappings are kept (mapping thousands of objects again
        would cost more than most calls) unless the node's ``generation`` changed:
        it did delete objects (moved away) that a kept mapping would still show."""
        with self._mappings_guard:
            if generation is None or generation != self._generation:
                self._mappings.clear()
                self._generation = generation
            else:
                for obj in self._mappings.values():
                    obj.forget_foreign()
        self.local_reads = 0


class DataClient(Client):
    """The ``api`` a code object's function gets: a client of the node it runs next to.

    ``get`` (and ``view``, ``follow``, ``read``) serve an object the store holds
    from the store itself, zero-copy; other objects are copies fetched through the
    node, as ``Client`` does. The client becomes the store's ``fallback`` and name
    resolver, so pointers followed out of local objects reach remote ones too.
    Writes go through the node's HTTP API like any client's.
    """

    def __init__(self, url: str, store: Store, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        # signs as the node (DTWZ_IDENTITY, set by the runner): docs/SECURITY.md §9
        super().__init__(url, timeout=timeout, identity=identity_from_env())
        self.store = store
        self.remote_objects = 0  # copies fetched
        self.remote_reads = 0  # byte ranges read remotely
        self.remote_bytes = 0  # bytes both of those moved
        store.fallback = self.remote_get
        store.name_resolver = self.name_resolver
        if isinstance(store, LocalStore):
            store.linked = self.get_linked

    @property
    def stats(self) -> dict[str, int]:
        return {
            "remote_objects": self.remote_objects,
            "remote_reads": self.remote_reads,
            "remote_bytes": self.remote_bytes,
        }

    def get(self, oid: ObjectRef, *, latest: bool = False) -> StoredObject:
        """The store's own object when it holds it (always its newest: the node is its
        home), else a copy through the node (``latest``: the home's newest)."""
        oid = self.resolve(oid)
        if self.store.exists(oid):
            return self.store.get(oid)
        return self.remote_get(oid, latest=latest)

    def remote_get(self, oid: ObjectId, *, latest: bool = False) -> StoredObject:
        """A copy of the object through the node (``Client.get``)."""
        installs = self._installs()
        obj = super().get(oid, latest=latest)
        self._count_copy(installs, obj)
        return obj

    def get_linked(self, oid: ObjectId, source: ObjectId) -> StoredObject:
        # pointers followed out of copies (and out of local objects to remote ones)
        # come here: a copy may well point back into the store
        if self.store.exists(oid):
            return self.store.get(oid)
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
        if self.store.exists(oid):
            obj = self.store.get(oid)
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


# -- running calls ---------------------------------------------------------------------


class CallRunner:
    """Runs requests against one store: compiles (cached by source), calls, answers."""

    def __init__(self, store: LocalStore, node_url: str) -> None:
        self.store = store
        self.node_url = node_url
        self._compiled: OrderedDict[tuple[str, str], tuple[types.CodeType, str]] = OrderedDict()

    def handle(self, request: Mapping[str, Any]) -> bytes:
        """The answer frame to one request; never raises for anything user code does."""
        call_id = request.get("call_id")
        try:
            entry, code, filename, root, args = self._parse(request)
        except CodeError as exc:
            return _error_frame(call_id, "CodeError", str(exc), "")
        generation = request.get("generation")
        self.store.begin_call(generation if isinstance(generation, int) else None)
        api = DataClient(self.node_url, self.store)
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
        stats = {"local_reads": self.store.local_reads, **api.stats}
        answer = {"call_id": call_id, "ok": True, "result": result, "stats": stats}
        try:
            return encode_frame({**answer, "elapsed": elapsed})
        except CodeError as exc:
            return _error_frame(call_id, "CodeError", f"the result of {entry} is {exc}", "")
        except BaseException as exc:  # a dict subclass runs its own items() when encoded
            why = f"not JSON-serialisable: {type(exc).__name__}: {_text(exc)}"
            return _error_frame(call_id, "CodeError", f"the result of {entry} is {why}", "")

    def _parse(
        self, request: Mapping[str, Any]
    ) -> tuple[str, types.CodeType, str, ObjectId, list[Any]]:
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
        code, filename = self._compile(source, entry)
        return entry, code, filename, root_id, args

    def _compile(self, source: str, entry: str) -> tuple[types.CodeType, str]:
        key = (hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(), entry)
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        CodeBody(source, entry)  # checks it the way a code object is checked
        filename = f"<dtwz code {entry} {key[0][:12]}>"
        code = compile(source, filename, "exec", dont_inherit=True)
        # tracebacks show the source lines (an mtime of None: never checked on disk)
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        self._compiled[key] = (code, filename)
        if len(self._compiled) > _CODE_CACHE:
            _, (_, old) = self._compiled.popitem(last=False)
            linecache.cache.pop(old, None)
        return code, filename


def _error_frame(call_id: Any, kind: str, message: str, trace: str) -> bytes:
    if len(message) > _MESSAGE_CHARS:  # an exception may carry any amount of text
        message = message[:_MESSAGE_CHARS] + "..."
    return encode_frame(
        {"call_id": call_id, "ok": False, "error": kind, "message": message, "traceback": trace}
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


class _Channel:
    """Frames over the worker's end of the socket pair (blocking)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def receive(self) -> bytes | None:
        """A frame's body; None at end of file between frames."""
        prefix = self._exactly(FRAME_PREFIX.size, eof_ok=True)
        if prefix is None:
            return None
        body = self._exactly(frame_length(prefix), eof_ok=False)
        assert body is not None
        return body

    def _exactly(self, n: int, *, eof_ok: bool) -> bytes | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            read = self.sock.recv_into(view[got:])
            if not read:
                if got == 0 and eof_ok:
                    return None
                raise CodeError(f"the runner's frame ended after {got} of {n} bytes")
            got += read
        return bytes(buf)


def _die_with_parent(parent: int | None) -> None:
    """On Linux, have the kernel SIGKILL this worker when its parent dies, so a node
    killed -9 while a function loops forever leaves nothing behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: end of file on the socket must do
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the request above was made


def _send_prints_to_stderr() -> None:
    # the runner reads only the tail of stderr; descriptor 1 too, for C extensions
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dtwz.node.code.worker", description="Run code objects next to a store."
    )
    parser.add_argument("--store", required=True, type=Path, help="the node's store folder")
    parser.add_argument("--node", required=True, help="the node's HTTP URL")
    parser.add_argument("--fd", required=True, type=int, help="descriptor of the socket pair")
    parser.add_argument("--parent", type=int, default=None, help="PID of the runner")
    return parser.parse_args(argv)


def _fail(message: str, status: int) -> NoReturn:
    print(f"dtwz code worker: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _die_with_parent(args.parent)
    _send_prints_to_stderr()
    try:
        os.set_inheritable(args.fd, False)  # not into processes user code starts
        sock = socket.socket(fileno=args.fd)
    except OSError as exc:
        _fail(f"descriptor {args.fd} is not a socket: {exc}", 2)
    channel = _Channel(sock)
    try:
        store = LocalStore(args.store)
    except DtwzError as exc:
        _fail(f"cannot open the store {args.store}: {exc}", 3)
    try:
        runner = CallRunner(store, args.node)
        channel.send(encode_frame({"ready": True, "pid": os.getpid()}))
        return _serve(channel, runner)
    except OSError as exc:  # the runner went away mid-frame
        _fail(f"the runner's socket failed: {exc}", 4)
    except CodeError as exc:  # a frame we cannot read past: no way to resynchronise
        _fail(str(exc), 2)
    finally:
        store.close()
        sock.close()


def _serve(channel: _Channel, runner: CallRunner) -> int:
    while True:
        body = channel.receive()
        if body is None:
            return 0
        try:
            request = decode_frame(body)
        except CodeError as exc:
            channel.send(_error_frame(None, "CodeError", f"bad request: {exc}", ""))
            continue
        channel.send(encode_frame({"accepted": request.get("call_id")}))
        channel.send(runner.handle(request))


if __name__ == "__main__":
    sys.exit(main())
