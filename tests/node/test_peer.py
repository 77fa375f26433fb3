"""The peer endpoint over real ZeroMQ sockets on loopback.

Two in-process ``PeerEndpoint``s (and, for bad input, a plain DEALER or ROUTER
that speaks raw frames) check that requests meet their replies, that errors
cross as the same dtwz.errors type, and that no input, however broken, stops an
endpoint from serving the next request. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import random
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio

from dtwz import errors
from dtwz.errors import DtwzError, PeerUnavailable, ProtocolError
from dtwz.format.ids import ObjectId
from dtwz.node.peer import PeerEndpoint
from dtwz.wire.codec import decode, encode
from dtwz.wire.messages import Ack, Create, Created, ErrorReply, Fetch, Message, ObjectData, Ping
from tests.helpers import free_port

T = TypeVar("T")
BOUND = 20.0  # seconds: no test step may wait longer than this
OID = ObjectId(bytes(range(16)))
MIB = 1 << 20


async def bounded(aw: Awaitable[T], seconds: float = BOUND) -> T:
    return await asyncio.wait_for(aw, seconds)


_SLOW_FETCHES: list[int] = []


async def handler(m: Message) -> Message:
    """A small server. ``Ping(sender)`` is a command:

    - ``"<n>"``: answer ``Ack(n)`` after a random short delay (replies come back out of order)
    - ``"raise <ErrorName>"``: raise that dtwz.errors class
    - ``"bug"``: raise ValueError, as a handler with a bug would
    - ``"bad reply"``: return a reply that cannot be encoded
    - ``"slow"``: answer after 30 s (the caller times out first)
    """
    match m:
        case Ping(sender=cmd) if cmd.isdigit():
            await asyncio.sleep(random.random() * 0.01)
            return Ack(int(cmd))
        case Ping(sender=cmd) if cmd.startswith("raise "):
            raise getattr(errors, cmd.removeprefix("raise "))("the handler says no")
        case Ping(sender="bug"):
            raise ValueError("a bug in the handler")
        case Ping(sender="bad reply"):
            return Ack(-1)
        case Ping(sender="slow"):
            await asyncio.sleep(30)
            return Ack()
        case Create(data=data):  # echo the digest: the request payload arrived intact
            return Created(ObjectId(hashlib.sha256(data).digest()[:16]), len(data), 0)
        case Fetch(offset=1, length=length):  # slow the first time each is asked
            _SLOW_FETCHES.append(length)
            if _SLOW_FETCHES.count(length) == 1:
                await asyncio.sleep(2)
            return ObjectData(OID, 1, 0, 0, 0, 0, b"h", _pattern(length), b"")
        case Fetch(length=length):
            return ObjectData(OID, 1, 0, 0, 0, 0, b"h", _pattern(length), b"")
    return ErrorReply("ProtocolError", "not a request")


def _pattern(length: int) -> bytes:
    return bytes(range(256)) * (length // 256) + bytes(length % 256)


Factory = Callable[..., Awaitable[tuple[PeerEndpoint, str]]]


@pytest.fixture
async def endpoint() -> AsyncIterator[Factory]:
    """Start endpoints on free loopback ports; all are closed when the test ends."""
    started: list[PeerEndpoint] = []

    async def start(
        serve: Callable[[Message], Awaitable[Message]] = handler, timeout: float = 5.0
    ) -> tuple[PeerEndpoint, str]:
        peer = PeerEndpoint("tcp://127.0.0.1:0", serve, timeout=timeout)
        started.append(peer)
        return peer, await peer.start()

    try:
        yield start
    finally:
        for peer in started:
            await peer.close()


@pytest.fixture
async def raw_context() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


# -- requests and replies -------------------------------------------------------------


async def test_request_gets_its_reply(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    assert server_addr.startswith("tcp://127.0.0.1:") and not server_addr.endswith(":0")
    assert await bounded(client.request(server_addr, Ping("7"))) == Ack(7)
    assert client.stats["requests_out"] == 1


async def test_both_endpoints_serve_and_request(endpoint: Factory) -> None:
    a, a_addr = await endpoint()
    b, b_addr = await endpoint()
    assert await bounded(a.request(b_addr, Ping("1"))) == Ack(1)
    assert await bounded(b.request(a_addr, Ping("2"))) == Ack(2)


async def test_many_requests_in_flight_meet_their_own_replies(endpoint: Factory) -> None:
    server, server_addr = await endpoint()
    client, _ = await endpoint()
    replies = await bounded(
        asyncio.gather(*(client.request(server_addr, Ping(str(n))) for n in range(500)))
    )
    assert replies == [Ack(n) for n in range(500)]
    assert server.stats["requests_in"] == 500


async def test_requests_from_many_clients_at_once(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    clients = [(await endpoint())[0] for _ in range(5)]
    requests = [
        c.request(server_addr, Ping(str(i * 100 + n)))
        for i, c in enumerate(clients)
        for n in range(50)
    ]
    replies = await bounded(asyncio.gather(*requests))
    assert replies == [Ack(i * 100 + n) for i in range(5) for n in range(50)]


@pytest.mark.parametrize("size", [0, 64 * 1024 - 1, 8 * MIB])
async def test_large_payloads_arrive_intact(endpoint: Factory, size: int) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    data = random.randbytes(size)
    created = await bounded(client.request(server_addr, Create(b"t", 1 << 30, 0, 3, data)))
    assert created == Created(ObjectId(hashlib.sha256(data).digest()[:16]), size, 0)
    reply = await bounded(client.request(server_addr, Fetch(OID, 0, size, False, False, "c")))
    assert isinstance(reply, ObjectData) and bytes(reply.data) == _pattern(size)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        errors.ObjectNotFound,
        errors.TransactionConflict,
        errors.InvalidArgument,
        errors.HomeUnreachable,
        errors.CorruptObject,
        errors.DtwzError,
    ],
    ids=lambda c: c.__name__,
)
async def test_handler_error_is_raised_on_the_caller_as_the_same_type(
    endpoint: Factory, error: type[DtwzError]
) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    with pytest.raises(error) as info:
        await bounded(client.request(server_addr, Ping(f"raise {error.__name__}")))
    assert type(info.value) is error and str(info.value) == "the handler says no"
    assert await bounded(client.request(server_addr, Ping("3"))) == Ack(3)


async def test_handler_bug_becomes_dtwz_error_and_the_endpoint_keeps_serving(
    endpoint: Factory,
) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    for _ in range(3):
        with pytest.raises(DtwzError) as info:
            await bounded(client.request(server_addr, Ping("bug")))
        assert type(info.value) is DtwzError and "a bug in the handler" in str(info.value)
        assert await bounded(client.request(server_addr, Ping("4"))) == Ack(4)


async def test_a_reply_that_cannot_be_encoded_is_an_error_not_a_timeout(
    endpoint: Factory,
) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint(timeout=10.0)
    with pytest.raises(ProtocolError):
        await bounded(client.request(server_addr, Ping("bad reply")), 5.0)
    assert await bounded(client.request(server_addr, Ping("5"))) == Ack(5)


@pytest.mark.parametrize("error", [errors.StoreError, ValueError], ids=lambda c: c.__name__)
async def test_huge_error_messages_still_arrive(endpoint: Factory, error: type[Exception]) -> None:
    async def verbose(m: Message) -> Message:
        raise error("no store at /data/\udcff/" + "x" * 100_000)  # undecodable file name

    _, server_addr = await endpoint(verbose)
    client, _ = await endpoint(timeout=10.0)
    expected = error if issubclass(error, DtwzError) else DtwzError
    with pytest.raises(expected, match="no store at") as info:
        await bounded(client.request(server_addr, Ping("1")), 5.0)
    assert type(info.value) is expected and len(str(info.value)) < 20_000


async def test_a_request_that_cannot_be_encoded_fails_before_sending(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    with pytest.raises(ProtocolError):
        await bounded(client.request(server_addr, Ack(1 << 40)))
    assert client.stats["bytes_out"] == 0


# -- bad input from the network ------------------------------------------------------


def _envelope(op: int, request_id: int, flags: int = 0) -> bytes:
    """magic "DZ", version 1, op, flags, reserved zero, request ID (docs/PROTOCOL.md)"""
    return struct.pack("<2sBBHHQ", b"DZ", 1, op, flags, 0, request_id)


async def test_garbage_frames_do_not_stop_the_endpoint(
    endpoint: Factory, raw_context: zmq.asyncio.Context
) -> None:
    server, server_addr = await endpoint()
    raw = raw_context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server_addr)
    ping = encode(Ping("9"), 100)
    answered = {  # request id -> what the ErrorReply must say
        11: "unknown op",
        12: "too short",
        13: "trailing",
        14: "at least 2 frames",
        15: "reply sent as a request",
        16: "bool",
        17: "no field refers",
    }
    sends: list[list[bytes]] = [
        [b"XZ" + ping[0][2:], ping[1]],  # wrong magic: dropped
        [b"DZ\x01\x03\x00", ping[1]],  # short envelope: dropped
        [b"DZ\x07" + ping[0][3:], ping[1]],  # another protocol version: dropped
        [b""],  # an empty frame: dropped
        [b"\xff" * 64, b"\x00" * 3, b"x"],  # noise: dropped
        [_envelope(3, 10, flags=4), ping[1]],  # unknown envelope flag: dropped
        [_envelope(99, 11), b""],
        [_envelope(3, 12), b"\x09\x00ab"],
        [_envelope(3, 13), ping[1] + b"!"],
        [_envelope(3, 14)],
        [_envelope(3, 15, flags=1), ping[1]],
        [_envelope(30, 16), bytes(32) + b"\x07" + bytes(3)],
        [_envelope(3, 17), ping[1], b"stray payload"],
        ping,
    ]
    for frames in sends:
        await raw.send_multipart(frames)
    replies: dict[int, Message] = {}
    while 100 not in replies or len(replies) < len(answered) + 1:
        message, request_id, is_reply = decode(await bounded(raw.recv_multipart()))
        assert is_reply and request_id not in replies
        replies[request_id] = message
    assert replies.pop(100) == Ack(9)
    assert set(replies) == set(answered)
    for request_id, why in answered.items():
        reply = replies[request_id]
        assert isinstance(reply, ErrorReply) and reply.kind == "ProtocolError"
        assert why in reply.message, (request_id, reply)
    assert await raw.poll(200) == 0  # nothing for the dropped ones
    assert server.stats["malformed"] == len(sends) - 1
    client, _ = await endpoint()
    assert await bounded(client.request(server_addr, Ping("8"))) == Ack(8)


async def test_a_handler_may_answer_with_an_error_reply(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint()
    with pytest.raises(ProtocolError, match="not a request"):  # what server.py does
        await bounded(client.request(server_addr, Ack(1)))


async def test_malformed_reply_fails_that_request_and_keeps_the_connection(
    endpoint: Factory, raw_context: zmq.asyncio.Context
) -> None:
    """A peer that answers garbage with a readable envelope: ProtocolError at once,
    not a timeout; garbage without one is dropped, and the next reply still lands."""
    router = raw_context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client, _ = await endpoint(timeout=10.0)
    addr = f"tcp://127.0.0.1:{port}"

    async def serve_two() -> None:
        for answer in (b"\x05\x00", None):  # an Ack body is 4 bytes
            identity, envelope, body = await router.recv_multipart()
            _, request_id, _ = decode([envelope, body])
            await router.send_multipart([identity, b"junk"])  # dropped by the client
            if answer is not None:
                await router.send_multipart([identity, _envelope(2, request_id, 1), answer])
            else:
                await router.send_multipart([identity, *encode(Ack(6), request_id, reply=True)])

    server = asyncio.ensure_future(serve_two())
    try:
        with pytest.raises(ProtocolError):
            await bounded(client.request(addr, Ping("1")), 5.0)
        assert await bounded(client.request(addr, Ping("2")), 5.0) == Ack(6)
        await bounded(server)
    finally:
        server.cancel()


# -- peers that are not there ----------------------------------------------------------


async def test_nobody_listening_raises_peer_unavailable(endpoint: Factory) -> None:
    client, _ = await endpoint(timeout=0.5)
    with pytest.raises(PeerUnavailable):
        await bounded(client.request(f"tcp://127.0.0.1:{free_port()}", Ping("1")))
    assert client.stats["timeouts"] == 1


async def test_a_peer_that_stops_mid_conversation(endpoint: Factory) -> None:
    server, server_addr = await endpoint()
    client, _ = await endpoint(timeout=1.0)
    assert await bounded(client.request(server_addr, Ping("1"))) == Ack(1)
    in_flight = asyncio.ensure_future(client.request(server_addr, Ping("slow")))
    await asyncio.sleep(0.1)
    await server.close()
    with pytest.raises(PeerUnavailable):
        await bounded(in_flight)
    with pytest.raises(PeerUnavailable):  # and the requests after it
        await bounded(client.request(server_addr, Ping("2")))


async def test_slow_handler_times_out_and_the_peer_is_reached_again(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint(timeout=0.3)
    with pytest.raises(PeerUnavailable):
        await bounded(client.request(server_addr, Ping("slow")))
    # the timed-out connection was closed; the next request opens a fresh one
    assert await bounded(client.request(server_addr, Ping("3"), timeout=5.0)) == Ack(3)


async def test_a_peer_that_comes_back_is_reached_again(endpoint: Factory) -> None:
    server, server_addr = await endpoint()
    client, _ = await endpoint(timeout=0.5)
    assert await bounded(client.request(server_addr, Ping("1"))) == Ack(1)
    await server.close()
    with pytest.raises(PeerUnavailable):
        await bounded(client.request(server_addr, Ping("2")))
    again = PeerEndpoint(server_addr, handler, timeout=5.0)
    try:
        await again.start()
        assert await bounded(client.request(server_addr, Ping("3"), timeout=5.0)) == Ack(3)
    finally:
        await again.close()


async def test_forget_fails_requests_in_flight(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client, _ = await endpoint(timeout=10.0)
    in_flight = asyncio.ensure_future(client.request(server_addr, Ping("slow")))
    await asyncio.sleep(0.1)
    client.forget(server_addr)
    with pytest.raises(PeerUnavailable):
        await bounded(in_flight, 5.0)


async def test_close_is_safe_with_requests_in_flight(endpoint: Factory) -> None:
    _, server_addr = await endpoint()
    client = PeerEndpoint("tcp://127.0.0.1:0", handler, timeout=10.0)
    await client.start()
    in_flight: asyncio.Future[Any] = asyncio.ensure_future(
        client.request(server_addr, Ping("slow"))
    )
    await asyncio.sleep(0.1)
    await bounded(client.close())
    with pytest.raises(PeerUnavailable):
        await bounded(in_flight, 5.0)


async def test_a_request_waits_for_a_peer_that_is_starting(endpoint: Factory) -> None:
    """No connection yet: the request waits for one (bounded), it does not fail at once."""
    client, _ = await endpoint(timeout=5.0)
    addr = f"tcp://127.0.0.1:{free_port()}"
    waiting = asyncio.ensure_future(client.request(addr, Ping("1")))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    late = PeerEndpoint(addr, handler, timeout=5.0)
    try:
        await late.start()
        assert await bounded(waiting, 5.0) == Ack(1)
    finally:
        waiting.cancel()
        await late.close()


async def test_one_timeout_fails_the_others_on_that_connection_as_peer_unavailable(
    endpoint: Factory,
) -> None:
    """Dropping a timed-out DEALER fails its other requests at once, never with a
    CancelledError: both those waiting for a reply and those waiting to be sent."""
    _, server_addr = await endpoint()
    client, _ = await endpoint(timeout=10.0)
    nobody = f"tcp://127.0.0.1:{free_port()}"
    for addr in (server_addr, nobody):
        others = [asyncio.ensure_future(client.request(addr, Ping("slow"))) for _ in range(5)]
        await asyncio.sleep(0.05)
        with pytest.raises(PeerUnavailable):
            await bounded(client.request(addr, Ping("slow"), timeout=0.3), 5.0)
        results = await bounded(asyncio.gather(*others, return_exceptions=True), 5.0)
        assert all(type(r) is PeerUnavailable for r in results), (addr, results)
    assert await bounded(client.request(server_addr, Ping("2"), timeout=5.0)) == Ack(2)


async def test_a_read_cut_off_by_another_requests_timeout_is_sent_again(
    endpoint: Factory,
) -> None:
    """A Fetch in flight when a timed-out request drops the connection is sent once
    more on a fresh connection (reads may arrive twice); a Ping, which is not marked
    idempotent, fails as before (the test above)."""
    _, server_addr = await endpoint()
    client, _ = await endpoint(timeout=10.0)
    length = 1000 + len(_SLOW_FETCHES)  # unique: the handler is slow once per length
    read = asyncio.ensure_future(
        client.request(server_addr, Fetch(OID, 1, length, False, False, "me"))
    )
    await asyncio.sleep(0.05)
    with pytest.raises(PeerUnavailable):
        await bounded(client.request(server_addr, Ping("slow"), timeout=0.3), 5.0)
    reply = await bounded(read, 5.0)
    assert isinstance(reply, ObjectData) and reply.data == _pattern(length)
    assert client.stats["resent"] == 1


async def test_requests_both_ways_at_once_all_meet_their_replies(endpoint: Factory) -> None:
    """Each endpoint sends and serves on one loop at once, the ground on which a
    readiness edge swallowed by a send would show up as a stalled request."""
    a, a_addr = await endpoint(timeout=5.0)
    b, b_addr = await endpoint(timeout=5.0)

    async def one(src: PeerEndpoint, dst: str, n: int) -> None:
        if n % 2:  # answered after a sleep (the handler suspends)
            assert await src.request(dst, Ping(str(n))) == Ack(n)
        else:  # answered at once (the handler never suspends)
            reply = await src.request(dst, Fetch(OID, 0, n, False, False, "c"))
            assert isinstance(reply, ObjectData) and bytes(reply.data) == _pattern(n)

    for _ in range(3):
        await bounded(
            asyncio.gather(
                *(one(a, b_addr, n) for n in range(300)), *(one(b, a_addr, n) for n in range(300))
            )
        )
    assert a.stats["timeouts"] == b.stats["timeouts"] == 0
    assert a.stats["requests_in"] == b.stats["requests_in"] == 900


request_tag: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="")


async def test_each_request_is_handled_in_a_context_of_its_own(endpoint: Factory) -> None:
    """Handlers start outside a Task; a context variable set by one request must not
    be seen by the next, whether the handler suspends or not."""

    async def tagging(m: Message) -> Message:
        assert isinstance(m, Ping)
        seen = request_tag.get()
        request_tag.set(m.sender)
        if m.sender.startswith("suspend"):
            await asyncio.sleep(0)
        return Ping(seen)

    _, server_addr = await endpoint(tagging)
    client, _ = await endpoint()
    for sender in ("one", "suspend two", "three", "suspend four"):
        assert await bounded(client.request(server_addr, Ping(sender))) == Ping("")


async def test_a_malformed_address_raises_peer_unavailable(endpoint: Factory) -> None:
    client, _ = await endpoint()
    with pytest.raises(PeerUnavailable):
        await bounded(client.request("not an address", Ping("1")))
    await bounded(client.close())  # nothing left open that would block it


@pytest.mark.parametrize("suspend_first", [False, True], ids=["at once", "after a wait"])
async def test_a_handler_cancelled_from_inside_answers_with_an_error(
    endpoint: Factory, suspend_first: bool
) -> None:
    """A handler that awaits something cancelled (not the endpoint closing) still
    answers, so its caller does not wait for the timeout."""

    async def cancelled(m: Message) -> Message:
        if suspend_first:
            await asyncio.sleep(0.01)
        doomed = asyncio.get_running_loop().create_future()
        doomed.cancel()
        return await doomed  # type: ignore[no-any-return]

    _, server_addr = await endpoint(cancelled)
    client, _ = await endpoint(timeout=10.0)
    with pytest.raises(DtwzError, match="cancelled"):
        await bounded(client.request(server_addr, Ping("1")), 5.0)
