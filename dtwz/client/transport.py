"""HTTP to one node: kept-alive connections, requests, streamed answers, retries.

The bottom of the client. It moves requests and answers and knows nothing of
what they mean; ``dtwz.client.auth`` signs each attempt above it, and the API
and graph calls above that give the paths and bodies.

Retries: a request that fails on a kept-alive connection the node had closed
(its idle timer, or a restart) is sent again on a fresh one, once, without
counting as a retry. Beyond that, every mutation (``create`` included) carries a
transaction ID (``X-Dtwz-Txn`` or ``txn_id``) and the home applies an ID at most
once, so a mutation is retried once, with the same ID, after any transport
failure. Reads are retried once unless they timed out (a retry would only double
the wait). So a request returns or raises within about two ``timeout`` periods.

Errors: a node that cannot be reached raises ``PeerUnavailable`` naming its URL.
An error the node reports as ``{"error": kind, "message": ...}`` becomes the same
``dtwz.errors`` class again through ``error_from``, the one place the client turns
an answer into an exception (``dtwz.errors.rebuild`` does the lookup).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dtwz import errors
from dtwz.errors import ClusterError, DtwzError, InvalidArgument, PeerUnavailable, ProtocolError
from dtwz.graph import stream

__all__ = [
    "DEFAULT_TIMEOUT",
    "ConnectionPool",
    "Response",
    "Transport",
    "error_from",
    "error_from_event",
]

DEFAULT_TIMEOUT = 10.0
POOL_SIZE = 8  # idle connections kept per node

HeaderSource = Callable[[], Mapping[str, str]]
"""Headers made afresh for each attempt (a signature: a node refuses a nonce it has seen)."""


@dataclass(slots=True)
class Response:
    """A node's whole answer."""

    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ClusterError(f"node answered with a body that is not JSON: {exc}") from exc


@dataclass
class ConnectionPool:
    """Idle keep-alive connections to one node; one request per connection at a time."""

    scheme: str
    host: str
    port: int
    timeout: float
    idle: list[http.client.HTTPConnection] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection, and whether it was kept alive from an earlier request."""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout), False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            if len(self.idle) < POOL_SIZE:
                self.idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Transport:
    """Requests to the node at ``url``, each attempt bounded by ``timeout`` seconds.
    Safe to share between threads."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
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
        self._pool = ConnectionPool(parts.scheme, parts.hostname, port, timeout)

    def use_pool(self, pool: ConnectionPool) -> None:
        """Send over ``pool``'s connections from now on (a code worker's connections
        are handed to it by its node, not dialled)."""
        self._pool.close()
        self._pool = pool

    def close(self) -> None:
        self._pool.close()

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        sign: HeaderSource | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request (retried as the module says); the answer, whatever its status.

        ``sign`` adds headers to each attempt; ``target`` is the path and query."""
        base_headers = {"Content-Type": "application/octet-stream", **(headers or {})}
        mutation = method != "GET"
        failures = 0
        stale_allowed = True
        while True:
            all_headers = {**base_headers, **sign()} if sign is not None else base_headers
            conn, reused = self._pool.take()
            _set_timeout(conn, timeout or self.timeout)
            try:
                conn.request(method, target, body=body, headers=all_headers)
                raw = conn.getresponse()
                got = {k.lower(): v for k, v in raw.getheaders()}
                response = Response(raw.status, got, raw.read())
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
                    raise self._unavailable(method, target, exc) from exc
                continue
            self._release(conn, raw)
            return response

    def stream(
        self, method: str, target: str, headers: Mapping[str, str]
    ) -> Iterator[tuple[int, memoryview]]:
        """The frames of a streamed answer (``dtwz.graph.stream``), read as they come.

        Sent once: a stream is not retried, so its signature is made by the caller."""
        conn, _ = self._pool.take()
        _set_timeout(conn, self.timeout)
        try:
            conn.request(method, target, body=b"", headers=headers)
            raw = conn.getresponse()
            if raw.status >= 400:
                got = {k.lower(): v for k, v in raw.getheaders()}
                raise error_from(Response(raw.status, got, raw.read()), self.url)
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
            raise self._unavailable(method, target, exc) from exc
        except BaseException:
            conn.close()
            raise
        self._release(conn, raw)

    def _release(self, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse) -> None:
        if raw.will_close:
            conn.close()
        else:
            self._pool.give_back(conn)

    def _unavailable(self, method: str, target: str, exc: BaseException) -> PeerUnavailable:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self.timeout:g}s"
        else:
            why = str(exc) or type(exc).__name__
        path = target.split("?", 1)[0]
        return PeerUnavailable(f"node {self.url} did not answer {method} {path}: {why}")


_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def error_from(response: Response, url: str) -> DtwzError:
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


def error_from_event(doc: Mapping[str, Any]) -> DtwzError:
    """The error an ``error`` event of a streamed answer describes (``dtwz.graph.stream``)."""
    return errors.rebuild(str(doc.get("kind")), str(doc.get("message")), doc)


def _set_timeout(conn: http.client.HTTPConnection, timeout: float) -> None:
    conn.timeout = timeout
    if conn.sock is not None:
        conn.sock.settimeout(timeout)


def _may_retry(exc: BaseException, mutation: bool) -> bool:
    """Whether a request that failed on a fresh connection may be sent once more:
    mutations always (they carry transaction IDs), reads unless they timed out."""
    return mutation or not isinstance(exc, TimeoutError)
