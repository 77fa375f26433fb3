"""The peer endpoint: node-to-node requests over ZeroMQ. The only module importing zmq.

Each node binds one ROUTER socket for requests from peers and keeps one DEALER
socket per peer it talks to. A request carries a request ID in its envelope; the
DEALER's reader task completes the matching future when the reply comes back, so
any number of requests to one peer can be in flight at once.

Failure handling:
- DEALERs are IMMEDIATE: nothing is queued for a peer with no live connection,
  so a request to a dead peer fails within the timeout instead of waiting to be
  delivered whenever the peer returns.
- On a timeout the DEALER is closed (linger 0), dropping anything still queued;
  the next request opens a fresh one.
- Malformed frames get an ``ErrorReply`` when their envelope can be read and are
  dropped otherwise; the receive loop never dies of bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from dtwz.errors import DtwzError, PeerUnavailable, ProtocolError
from dtwz.node.protocol import (
    ErrorReply,
    Message,
    decode,
    decode_envelope,
    encode,
    error_reply,
    raise_error,
)

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[Message]]
MAX_MESSAGE_BYTES = 256 << 20
_ZERO_COPY_FROM = 64 << 10  # below this, copying a frame is cheaper than tracking it


class _Connection:
    def __init__(self, ctx: zmq.asyncio.Context, addr: str) -> None:
        self.addr = addr
        self.socket = ctx.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IMMEDIATE, 1)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.connect(addr)
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            try:
                frames = await self.socket.recv_multipart(copy=False)
            except (zmq.ZMQError, asyncio.CancelledError):
                return
            buffers = [f.buffer for f in frames]
            try:
                message, request_id, _ = decode(buffers)
            except ProtocolError as exc:
                log.warning("malformed reply from %s: %s", self.addr, exc)
                try:  # fail the request it answers now rather than at its timeout
                    _, request_id, _ = decode_envelope(buffers[0])
                except ProtocolError:
                    continue
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_exception(exc)
                continue
            future = self.pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(message)

    def close(self, reason: str) -> None:
        self.reader.cancel()
        self.socket.close(linger=0)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PeerUnavailable(f"{self.addr}: {reason}"))
        self.pending.clear()


class PeerEndpoint:
    def __init__(self, bind_addr: str, handler: Handler, *, timeout: float) -> None:
        self.bind_addr = bind_addr
        self.timeout = timeout
        self._handler = handler
        self._ctx = zmq.asyncio.Context()
        self._router: zmq.asyncio.Socket | None = None
        self._connections: dict[str, _Connection] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.stats = {"requests_in": 0, "requests_out": 0, "bytes_in": 0, "bytes_out": 0,
                      "malformed": 0, "timeouts": 0}  # fmt: skip

    async def start(self) -> str:
        """Bind the ROUTER; returns the bound address (port 0 picks a free port)."""
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        router.bind(self.bind_addr)
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        self.bind_addr = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._router = router
        self._spawn(self._serve())
        return self.bind_addr

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conn in self._connections.values():
            conn.close("endpoint closed")
        self._connections.clear()
        if self._router is not None:
            self._router.close(linger=0)
        self._ctx.term()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- serving ---------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._router is not None
        while True:
            try:
                frames = await self._router.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                log.info("peer endpoint stopped: %s", exc)
                return
            identity, body = frames[0].bytes, [f.buffer for f in frames[1:]]
            self.stats["requests_in"] += 1
            self.stats["bytes_in"] += sum(len(b) for b in body)
            self._spawn(self._answer(identity, body))

    async def _answer(self, identity: bytes, frames: list[memoryview]) -> None:
        try:
            message, request_id, is_reply = decode(frames)
            if is_reply:
                raise ProtocolError("a reply sent as a request")
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            try:
                _, request_id, _ = decode_envelope(frames[0]) if frames else (0, 0, False)
            except ProtocolError:
                log.warning("dropping malformed peer frames: %s", exc)
                return
            await self._reply(identity, error_reply(exc), request_id)
            return
        try:
            reply = await self._handler(message)
        except DtwzError as exc:
            reply = error_reply(exc)
        except Exception as exc:  # a bug must not take the node down: report it
            log.exception("handler for %s failed", type(message).__name__)
            reply = error_reply(DtwzError(f"internal error: {exc!r}"))
        await self._reply(identity, reply, request_id)

    async def _reply(self, identity: bytes, reply: Message, request_id: int) -> None:
        assert self._router is not None
        try:
            frames = encode(reply, request_id, reply=True)
        except Exception as exc:  # a handler bug: the caller must not wait for its timeout
            log.exception("reply %s could not be encoded", type(reply).__name__)
            error = ProtocolError(f"the reply could not be encoded: {exc!r}")
            frames = encode(error_reply(error), request_id, reply=True)
        self.stats["bytes_out"] += sum(len(f) for f in frames)
        big = any(len(f) >= _ZERO_COPY_FROM for f in frames)
        with contextlib.suppress(zmq.ZMQError):  # the requester may be gone
            await self._router.send_multipart([identity, *frames], copy=not big)

    # -- requesting ------------------------------------------------------------

    async def request(self, addr: str, message: Message, timeout: float | None = None) -> Message:
        """Send ``message`` to the peer at ``addr``; its reply (errors are raised)."""
        timeout = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._connections.get(addr)
        if conn is None:
            conn = self._connections[addr] = _Connection(self._ctx, addr)
        request_id = next(self._ids)
        frames = encode(message, request_id)
        future: asyncio.Future[Message] = loop.create_future()
        conn.pending[request_id] = future
        self.stats["requests_out"] += 1
        try:
            big = any(len(f) >= _ZERO_COPY_FROM for f in frames)
            while True:
                try:
                    await conn.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=not big)
                    break
                except zmq.Again:  # no live connection (yet): wait for one, bounded
                    remaining = deadline - loop.time()
                    wait_ms = int(remaining * 1000) + 1
                    # the stubs lag the runtime signature poll(timeout, flags)
                    ready = await conn.socket.poll(wait_ms, zmq.POLLOUT)  # type: ignore[call-arg]
                    if remaining <= 0 or not ready:
                        raise PeerUnavailable(f"no connection to {addr}") from None
            self.stats["bytes_out"] += sum(len(f) for f in frames)
            reply = await asyncio.wait_for(future, max(0.0, deadline - loop.time()))
        except (TimeoutError, PeerUnavailable) as exc:
            self.stats["timeouts"] += 1
            self._drop(addr, conn)
            raise PeerUnavailable(f"{addr} did not answer within {timeout:g}s") from exc
        except (asyncio.CancelledError, zmq.ZMQError) as exc:
            task = asyncio.current_task()
            if not conn.socket.closed or (task is not None and task.cancelling()):
                raise
            # another request's timeout closed the shared connection under this one
            raise PeerUnavailable(f"{addr}: connection closed while waiting") from exc
        finally:
            conn.pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a closing connection may have failed it
        if isinstance(reply, ErrorReply):
            raise_error(reply)
        return reply

    def _drop(self, addr: str, conn: _Connection) -> None:
        if self._connections.get(addr) is conn:
            del self._connections[addr]
        conn.close("timed out")

    def forget(self, addr: str) -> None:
        """Close the connection to a peer declared dead."""
        conn = self._connections.pop(addr, None)
        if conn is not None:
            conn.close("peer declared dead")
