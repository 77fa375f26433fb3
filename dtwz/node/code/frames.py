"""The frame protocol between the runner and its workers, and the blocking socket
that speaks it in a worker and in a call's process.

Frames, on both sockets: a u32 little-endian length, then that many bytes of
UTF-8 JSON, at most 64 MiB; descriptors travel with a frame (SCM_RIGHTS)::

    control (descriptor N: runner <-> worker process)
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
node must not unpickle what user code made.

The encoding is pure and shared by both sides; ``FrameSocket`` is the worker's
side (blocking, threads allowed). The runner's side, in the event loop, is
``dtwz.node.code.processes.AsyncFrames``. This module loads no event loop: the
worker imports it before it confines itself.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from dtwz.errors import CodeError, PeerUnavailable

__all__ = [
    "FRAME_LIMIT",
    "FRAME_PREFIX",
    "MAX_CONNECTIONS",
    "MAX_FDS",
    "FrameSocket",
    "close_all",
    "decode_frame",
    "encode_frame",
    "frame_length",
]

FRAME_LIMIT = 64 << 20
FRAME_PREFIX = struct.Struct("<I")
MAX_FDS = 128  # descriptors one frame may carry (objects handed over at once)
MAX_CONNECTIONS = 16  # HTTP connections one call may ask for


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
            close_all(fds)
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
                close_all(fds)
                raise CodeError("a frame came with more descriptors than allowed")
            if not read:
                if got == 0 and eof_ok:
                    return None
                raise CodeError(f"the runner's frame ended after {got} of {n} bytes")
            got += read
        return bytes(buf)


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
