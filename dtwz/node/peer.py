"""The peer endpoint: node-to-node requests over ZeroMQ. The only module importing zmq.

Each node binds one ROUTER socket for requests from peers and keeps one DEALER
socket per peer it talks to. A request carries a request ID in its envelope; the
reply completes the future registered under that ID, so any number of requests
to one peer can be in flight at once.

Theory of operation
-------------------
The sockets are plain (blocking-API) zmq sockets driven straight from the event
loop; zmq.asyncio costs several times the round trip itself in enum arithmetic,
extra polling and loop iterations. Each socket's ``ZMQ_FD`` is registered with
``loop.add_reader``. That descriptor is *edge*-triggered and only says "the
socket's state may have changed", so:

- a readiness callback drains the socket while ``ZMQ_EVENTS`` has ``POLLIN``
  (and hands the rest of a long burst to ``call_soon``, as the descriptor will
  not fire again for messages already queued);
- every send processes zmq's pending commands and can swallow the edge of a
  message that has just arrived, so ``ZMQ_EVENTS`` is checked again after each
  send and a missed message is drained then (the gotcha documented under ZMQ_FD
  in zmq_getsockopt(3)).

Sends are ``NOBLOCK``. Only a DEALER that has no live connection (IMMEDIATE) or
a full queue refuses one (``zmq.Again``); the request then waits for
``POLLOUT``, woken by the readiness callback and, in case an edge is missed, by
a backoff timer, never past its deadline. A ROUTER never refuses: it drops
replies for peers that have gone.

Each request has one ``call_later`` timer for its deadline. A peer's handler is
started at once from the readiness callback, in a context of its own, and most
finish without suspending, so their replies go out in the same loop iteration
with no Task at all; a handler that does suspend is finished in a Task
(``_Resume``). Until it first suspends, a handler runs outside any Task (unlike
under 3.12's eager tasks): ``asyncio.current_task()`` is None there, so it must
not enter ``asyncio.timeout()`` before its first real wait.

Failure handling:
- DEALERs are IMMEDIATE: nothing is queued for a peer with no live connection,
  so a request to a dead peer fails within the timeout instead of waiting to be
  delivered whenever the peer returns.
- On a timeout the DEALER is closed (linger 0), dropping anything still queued;
  the next request opens a fresh one. The other requests on that DEALER fail
  with ``PeerUnavailable``, never with a ``CancelledError``.
- Malformed frames get an ``ErrorReply`` when their envelope can be read and are
  dropped otherwise; the receive loop never dies of bad input.

Authentication (``Curve``, docs/SECURITY.md §6, §8): with security on, every socket
speaks CurveZMQ. All ROUTERs share the cluster's server key pair, so any DEALER
knows the server key; each DEALER has its node's own client pair, and a ZAP
handler (a thread of pyzmq's authenticator on this endpoint's context) admits a
client key only when ``Curve.admits`` says so. An unadmitted peer's handshake
fails: its requests never reach a handler and time out on its side.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from dtwz.errors import DtwzError, PeerUnavailable, ProtocolError
from dtwz.wire.codec import Frame, decode, decode_envelope, encode, error_reply, raise_error
from dtwz.wire.messages import ErrorReply, Message

log = logging.getLogger(__name__)

Handler = Callable[[Message], Awaitable[Message]]
MAX_MESSAGE_BYTES = 256 << 20
_ZERO_COPY_FROM = 64 << 10  # below this, copying a frame is cheaper than tracking it
_BATCH = 64  # messages handled per readiness callback before other work gets a turn
_RETRY_FIRST, _RETRY_MAX = 0.002, 0.05  # seconds: re-check POLLOUT if no edge came


def curve_keypair() -> tuple[bytes, bytes]:
    """A new CurveZMQ key pair, (public, secret), as Z85 text."""
    return zmq.curve_keypair()


@dataclass(frozen=True)
class Curve:
    """CurveZMQ keys of one endpoint; ``admits(z85_public)`` is the admission list."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes
    admits: Callable[[bytes], bool]

    def callback(self, domain: str, key: bytes) -> bool:  # pyzmq's credentials provider
        return self.admits(key)


# plain ints: the zmq constants are enums, and enum arithmetic dominated the old profile
_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK, _MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)


def _events(sock: zmq.Socket[Any]) -> int:
    """``ZMQ_EVENTS``; reading it also processes zmq's pending commands."""
    return sock.get(_EVENTS)  # type: ignore[return-value]


def _recv(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """One whole message (the caller has seen POLLIN: its parts are all there)."""
    frame = sock.recv(_NOBLOCK, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(_NOBLOCK, copy=False)
        parts.append(frame)
    return parts


def _send(sock: zmq.Socket[Any], frames: list[Frame]) -> int:
    """Queue a message; its size in bytes. ``zmq.Again`` means nothing was queued:
    zmq refuses the first part or none (later parts follow the first's pipe)."""
    size, last = 0, len(frames) - 1
    for i, frame in enumerate(frames):
        n = len(frame)
        size += n
        sock.send(frame, _NOBLOCK if i == last else _MORE, copy=n < _ZERO_COPY_FROM)
    return size


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Connection:
    """The DEALER to one peer and the requests waiting for its replies."""

    def __init__(
        self, ctx: zmq.Context[Any], addr: str, give_up_ms: int, curve: Curve | None = None
    ) -> None:
        self.addr = addr
        self.loop = asyncio.get_running_loop()
        try:
            self.socket = ctx.socket(zmq.DEALER)
        except zmq.ZMQError as exc:  # the context is closing
            raise PeerUnavailable(f"{addr}: {exc}") from exc
        try:
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.IMMEDIATE, 1)
            self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            # TCP gives up on unacknowledged bytes after the request timeout: a request
            # its caller was told failed must not be delivered when a partition heals
            self.socket.setsockopt(zmq.TCP_MAXRT, give_up_ms)
            if curve is not None:
                self.socket.curve_serverkey = curve.server_public
                self.socket.curve_publickey = curve.client_public
                self.socket.curve_secretkey = curve.client_secret
            self.socket.connect(addr)
        except zmq.ZMQError as exc:  # e.g. a malformed address from gossip
            self.socket.close(linger=0)  # an open socket would block the context's term
            raise PeerUnavailable(f"cannot connect to {addr}: {exc}") from exc
        self.pending: dict[int, asyncio.Future[Message]] = {}
        self.writers: list[asyncio.Future[None]] = []  # requests waiting for POLLOUT
        self.closed = False
        self.replies = 0  # replies received: proof the peer answers on this connection
        self._fd = self.socket.fileno()  # ZMQ_FD
        self.loop.add_reader(self._fd, self.on_events)

    def on_events(self) -> None:
        """Readiness callback: deliver every reply queued, wake writers if writable."""
        if self.closed:
            return
        sock = self.socket
        for _ in range(_BATCH):
            events = _events(sock)
            if not events & _POLLIN:
                break
            frames = _recv(sock)
            try:
                self._deliver(frames)
            except Exception:  # a bug here must not stop this connection's replies
                log.exception("reply from %s not delivered", self.addr)
        else:
            self.loop.call_soon(self.on_events)
            return
        if self.writers and events & _POLLOUT:
            self.wake_writers()

    def _deliver(self, frames: list[zmq.Frame]) -> None:
        buffers = [f.buffer for f in frames]
        try:
            message, request_id, _ = decode(buffers)
        except ProtocolError as exc:
            log.warning("malformed reply from %s: %s", self.addr, exc)
            try:  # fail the request it answers now rather than at its timeout
                _, request_id, _ = decode_envelope(buffers[0])
            except ProtocolError:
                return
            future = self.pending.get(request_id)
            if future is not None and not future.done():
                future.set_exception(exc)
            return
        self.replies += 1
        future = self.pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(message)

    def send(self, frames: list[Frame]) -> int:
        """Queue a request; its size, or -1 if the DEALER cannot take it now."""
        if self.closed:
            raise PeerUnavailable(f"{self.addr}: connection closed")
        try:
            size = _send(self.socket, frames)
        except zmq.Again:
            return -1
        except zmq.ZMQError as exc:
            raise PeerUnavailable(f"{self.addr}: {exc}") from exc
        if _events(self.socket) & _POLLIN:  # the send may have swallowed a reply's edge
            self.on_events()
        return size

    async def send_when_writable(self, frames: list[Frame], future: asyncio.Future[Any]) -> int:
        """Retry ``send`` on each POLLOUT until it is taken (its size) or ``future``
        is done, i.e. the request timed out or the connection closed (-1)."""
        delay = _RETRY_FIRST
        while not future.done():
            waiter = self.loop.create_future()
            self.writers.append(waiter)
            retry = self.loop.call_later(delay, _wake, waiter)
            try:
                await waiter
            finally:
                retry.cancel()
            if future.done():
                break
            size = self.send(frames)
            if size >= 0:
                return size
            delay = min(delay * 2, _RETRY_MAX)
        return -1

    def wake_writers(self) -> None:
        writers, self.writers = self.writers, []
        for waiter in writers:
            _wake(waiter)

    def expire(self, future: asyncio.Future[Message]) -> None:
        """A request's deadline passed."""
        if not future.done():
            future.set_exception(TimeoutError())
            self.wake_writers()  # it may be one of them

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._fd)
        self.socket.close(linger=0)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PeerUnavailable(f"{self.addr}: {reason}"))
        self.pending.clear()
        self.wake_writers()


class _ConnectionReset(Exception):
    """A request's connection was closed under it (not by its own timeout)."""


class _Resume:
    """Awaiting this finishes a coroutine that has already run its first step (and
    suspended, yielding ``yielded``) outside any Task: PEP 380's ``yield from``,
    minus the first ``send``, so the Task sees exactly what the coroutine yields."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Message], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Message]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError included: the coroutine decides
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]


class PeerEndpoint:
    def __init__(
        self, bind_addr: str, handler: Handler, *, timeout: float, curve: Curve | None = None
    ) -> None:
        self.bind_addr = bind_addr
        self.curve = curve
        self._auth: ThreadAuthenticator | None = None
        self.timeout = timeout
        self._handler = handler
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._router: zmq.Socket[Any] | None = None
        self._router_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._connections: dict[str, _Connection] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()  # handlers that suspended
        self._closed = False
        self.stats = {
            "requests_in": 0,
            "requests_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "malformed": 0,
            "timeouts": 0,
            "resent": 0,  # reads sent again after a connection reset
        }

    async def start(self) -> str:
        """Bind the ROUTER; returns the bound address (port 0 picks a free port)."""
        if self.curve is not None:
            self._auth = ThreadAuthenticator(self._ctx, log=log)
            self._auth.start()
            self._auth.configure_curve_callback("*", self.curve)
        router = self._ctx.socket(zmq.ROUTER)
        if self.curve is not None:
            router.curve_server = True
            router.curve_publickey = self.curve.server_public
            router.curve_secretkey = self.curve.server_secret
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        router.bind(self.bind_addr)
        endpoint = router.getsockopt(zmq.LAST_ENDPOINT)
        self.bind_addr = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._router = router
        self._loop = asyncio.get_running_loop()
        self._router_fd = router.fileno()  # ZMQ_FD
        self._loop.add_reader(self._router_fd, self._on_requests)
        return self.bind_addr

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in self._connections.values():
            conn.close("endpoint closed")
        self._connections.clear()
        if self._router is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._router_fd)
            self._router.close(linger=0)
            self._router = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.destroy(linger=0)  # closes anything left open, so term never blocks

    # -- serving ---------------------------------------------------------------

    def _on_requests(self) -> None:
        """Readiness callback of the ROUTER: answer every request queued."""
        router, loop = self._router, self._loop
        if router is None or loop is None or self._draining:
            return
        self._draining = True
        try:
            for _ in range(_BATCH):
                if not _events(router) & _POLLIN:
                    return
                frames = _recv(router)
                try:
                    self._on_request(frames[0].bytes, [f.buffer for f in frames[1:]])
                except Exception:  # a bug here must not stop the endpoint serving
                    log.exception("peer request not handled")
                if self._router is not router:  # a handler closed the endpoint
                    return
            loop.call_soon(self._on_requests)
        except zmq.ZMQError as exc:
            log.info("peer endpoint stopped: %s", exc)
        finally:
            self._draining = False

    def _on_request(self, identity: bytes, frames: list[memoryview]) -> None:
        self.stats["requests_in"] += 1
        self.stats["bytes_in"] += sum(len(b) for b in frames)
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
            self._reply(identity, error_reply(exc), request_id)
            return
        # the handler's first step runs now, in a context of its own as a Task's would
        context = contextvars.copy_context()
        try:
            aw = context.run(self._handler, message)
            if isinstance(aw, Coroutine):
                yielded = context.run(aw.send, None)
                aw = _Resume(aw, yielded)  # it suspended: a Task finishes it
        except StopIteration as done:
            reply = done.value
        except Exception as exc:
            reply = self._failure(message, exc)
        except asyncio.CancelledError:
            reply = error_reply(DtwzError("the request was cancelled"))
        else:
            self._spawn(self._finish(aw, identity, request_id), context)
            return
        self._reply(identity, reply, request_id)

    async def _finish(self, aw: Awaitable[Message], identity: bytes, request_id: int) -> None:
        try:
            reply = await aw
        except Exception as exc:
            reply = self._failure(None, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the endpoint is closing
                raise
            reply = error_reply(DtwzError("the request was cancelled"))
        self._reply(identity, reply, request_id)

    @staticmethod
    def _failure(message: Message | None, exc: Exception) -> Message:
        if isinstance(exc, DtwzError):
            return error_reply(exc)
        # a bug must not take the node down: report it
        name = type(message).__name__ if message is not None else "a request"
        log.error("handler for %s failed", name, exc_info=exc)
        return error_reply(DtwzError(f"internal error: {exc!r}"))

    def _spawn(self, coro: Coroutine[Any, Any, None], context: contextvars.Context) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro, context=context)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply(self, identity: bytes, reply: Message, request_id: int) -> None:
        router = self._router
        if router is None:
            return
        try:
            frames = encode(reply, request_id, reply=True)
        except Exception as exc:  # a handler bug: the caller must not wait for its timeout
            log.exception("reply %s could not be encoded", type(reply).__name__)
            error = ProtocolError(f"the reply could not be encoded: {exc!r}")
            frames = encode(error_reply(error), request_id, reply=True)
        try:  # a ROUTER drops what it cannot route: a requester that has gone
            self.stats["bytes_out"] += _send(router, [identity, *frames]) - len(identity)
            if not self._draining and _events(router) & _POLLIN:
                assert self._loop is not None  # the send may have swallowed a request's edge
                self._loop.call_soon(self._on_requests)
        except zmq.ZMQError as exc:
            log.debug("reply to a peer not sent: %s", exc)

    # -- requesting ------------------------------------------------------------

    async def request(self, addr: str, message: Message, timeout: float | None = None) -> Message:
        """Send ``message`` to the peer at ``addr``; its reply (errors are raised).

        A read (``message.IDEMPOTENT``) whose connection was closed under it by
        something else (another request's timeout, a peer declared dead) is sent once
        more on a fresh connection, within what is left of its time.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            return await self._request_once(addr, message, timeout)
        except _ConnectionReset as exc:
            left = deadline - time.monotonic()
            if not message.IDEMPOTENT or left <= 0 or self._closed:
                raise PeerUnavailable(str(exc)) from None
            self.stats["resent"] += 1
            try:
                return await self._request_once(addr, message, left)
            except _ConnectionReset as again:
                raise PeerUnavailable(str(again)) from None

    async def _request_once(self, addr: str, message: Message, timeout: float) -> Message:
        conn = self._connections.get(addr)
        if conn is None:
            if self._closed:
                raise PeerUnavailable(f"{addr}: this endpoint is closed")
            give_up_ms = max(1, int(self.timeout * 1000))
            conn = self._connections[addr] = _Connection(self._ctx, addr, give_up_ms, self.curve)
        request_id = next(self._ids)
        frames = encode(message, request_id)
        loop = conn.loop
        future: asyncio.Future[Message] = loop.create_future()
        conn.pending[request_id] = future
        self.stats["requests_out"] += 1
        timer = loop.call_later(max(0.0, timeout), conn.expire, future)
        sent = -1
        replies_before = conn.replies
        try:
            sent = conn.send(frames)
            if sent < 0:  # no live connection (yet) or a full queue: wait, bounded
                sent = await conn.send_when_writable(frames, future)
            if sent >= 0:
                self.stats["bytes_out"] += sent
            reply = await future
        except PeerUnavailable as exc:
            # the connection closed under this request: not its own timeout
            self._drop(addr, conn, "closed")
            raise _ConnectionReset(str(exc)) from None
        except TimeoutError:
            self.stats["timeouts"] += 1
            # A connection that answered something sent after this request is alive:
            # this request was delivered ahead of it (one ordered stream) or lost with
            # the peer's previous incarnation, so nothing of it can arrive late, and
            # dropping the connection would only fail the requests in flight on it
            # (a peer that restarted would see its first answers thrown away).
            if sent < 0 or conn.replies == replies_before:
                self._drop(addr, conn, "timed out")
            if sent < 0:
                raise PeerUnavailable(f"no connection to {addr} within {timeout:g}s") from None
            raise PeerUnavailable(f"{addr} did not answer within {timeout:g}s") from None
        finally:
            timer.cancel()
            conn.pending.pop(request_id, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a closing connection may have failed it
        if isinstance(reply, ErrorReply):
            raise_error(reply)
        return reply

    def _drop(self, addr: str, conn: _Connection, reason: str) -> None:
        if self._connections.get(addr) is conn:
            del self._connections[addr]
        conn.close(reason)

    def forget(self, addr: str) -> None:
        """Close the connection to a peer declared dead."""
        conn = self._connections.pop(addr, None)
        if conn is not None:
            conn.close("peer declared dead")
