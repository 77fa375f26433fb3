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
asks over its own socket (the *call channel*) for an object homed here
and gets a read-only descriptor of its file, which it maps (zero-copy reads), if
the caller may read the object whole; for anything else (other homes, byte
ranges of a gated capability, writes, names) it asks for an HTTP connection and
speaks the node's API over it, which the node serves with the caller's identity
and capabilities, for this call only (docs/SECURITY.md §11).

The frames on the control socket and on a call's channel are in
``dtwz.node.code.frames``; what a call's code gets to read and write through (its
``api``, the objects it may map) in ``dtwz.node.code.dataclient``. This module is
the process: its confinement, the loop that forks a child per call (``Zygote``)
and what the child does with its request (``run_call``).

End of file on N ends the worker (exit 0). Results are JSON, never pickles: the
node must not unpickle what user code made. User code may print: a call's
stdout and stderr go to that call's own pipe, whose tail the runner keeps to
explain a death (so no caller ever sees another's output).
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import gc
import linecache
import os
import socket
import sys
import time
import traceback
import types
from collections.abc import Mapping
from typing import Any, NoReturn

from dtwz.errors import CodeError, DtwzError
from dtwz.format.ids import ObjectId
from dtwz.node.code import isolation
from dtwz.node.code.dataclient import DataClient, GrantedObjects
from dtwz.node.code.frames import (
    FRAME_LIMIT,
    FRAME_PREFIX,
    FrameSocket,
    close_all,
    decode_frame,
    encode_frame,
    frame_length,
)

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
                close_all(fds)
                self.channel.send(encode_frame({"error": f"bad request: {exc}"}))
                continue
            call_id = request.get("call")
            pid = os.fork()
            if pid == 0:  # the child: never returns
                self._child(fds[0], fds[1], cpu, memory, processes)
            close_all(fds)
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
            close_all(fds)
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
