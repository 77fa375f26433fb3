"""Who the client is to a node: request signing and the session flow.

``Channel`` is what the API (``dtwz.client.api``) and the graph calls
(``dtwz.client.graph``) send their requests through: the ``Transport`` below it
moves them, and the channel makes each attempt carry proof of the client's
identity, built on the formats of ``dtwz.security.auth`` (docs/SECURITY.md):

1. the node's ID is the audience every proof names; it is asked of ``/health``
   once, unless the caller gave it;
2. a session is opened with one Ed25519-signed handshake (an X25519 key
   agreement, docs/SECURITY.md §5); then each request carries an HMAC under the
   session key. A node with security off has no sessions: requests are signed;
3. every attempt is proved afresh (a node refuses a nonce it has seen), and the
   capabilities added with ``Client.add_capability`` ride along;
4. a node that no longer knows the session answers ``UnknownSession``: another
   is opened and the request sent again, once. A node that does not know the key
   answers ``UnknownKey``: the client stores its key object (``/keys``) and sends
   the request again, once. Storing a key is enrolling it, which needs the admin's
   consent: the enrollment capability the client was given (``enrollment``, else
   ``$DTWZ_ENROLLMENT``) goes with that request; without one, or with a refused
   one, the node's ``AccessDenied`` says how to get enrolled (docs/SECURITY.md §10).

Without an identity nothing is signed and the flow is a plain request.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from dtwz.client.transport import Response, Transport, error_from
from dtwz.errors import (
    DtwzError,
    InvalidArgument,
    ProtocolError,
    UnknownKey,
    UnknownSession,
)
from dtwz.format.ids import ObjectId
from dtwz.security.auth import (
    CAPABILITY_HEADER,
    SESSION_TTL,
    body_sha256,
    client_session_keys,
    mac_request,
    session_key,
    sign_request,
)
from dtwz.security.keys import Identity

__all__ = ["Channel", "identity_from_env"]

SESSION_MARGIN = 30.0  # seconds before its expiry a session is replaced


def identity_from_env() -> Identity | None:
    """The identity in the file ``$DTWZ_IDENTITY`` names, if it is set."""
    path = os.environ.get("DTWZ_IDENTITY")
    return Identity.load(path) if path else None


class Channel:
    """Requests to one node, proved as ``identity`` (when there is one). Safe to
    share between threads."""

    def __init__(
        self,
        transport: Transport,
        identity: Identity | None = None,
        audience: str | None = None,
        enrollment: str | None = None,
    ) -> None:
        self.transport = transport
        self.identity = identity
        self.audience = audience  # the node's ID; asked of /health on first use
        self.capabilities: dict[ObjectId, str] = {}  # target -> header value
        # the admin's consent to store the key (a capability, header form): sent with
        # POST /keys only
        self.enrollment = enrollment or os.environ.get("DTWZ_ENROLLMENT") or None
        self.key_stored = False
        # (session ID, key, expiry): requests carry an HMAC instead of a signature
        self.session: tuple[ObjectId, bytes, float] | None = None
        self.sessions = True  # False once the node says it has none (security off)
        self._session_lock = threading.RLock()

    @property
    def url(self) -> str:
        return self.transport.url

    # -- requests ----------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        sign: bool = True,
        session: bool = True,
    ) -> Response:
        """One request through the flow above; with ``check``, an error status raises
        the node's error. ``sign=False`` sends it unproved, ``session=False`` signed
        rather than in a session."""
        target = f"{path}?{urlencode(query)}" if query else path
        proof = None
        if sign and self.identity is not None:

            def proof() -> dict[str, str]:
                return self.headers(method, target, body, session=session)

        key_retry = proof is not None and not self.key_stored and path != "/keys"
        session_retry = proof is not None and session
        while True:
            response = self.transport.send(
                method, target, body, headers=headers, sign=proof, timeout=timeout
            )
            if response.status == 401 and (session_retry or key_retry):
                error = error_from(response, self.url)
                if session_retry:
                    session_retry = False
                    if isinstance(error, UnknownSession):
                        self.session = None  # expired, or the node restarted: open another
                        continue
                if key_retry:
                    key_retry = False
                    if isinstance(error, UnknownKey):
                        self.register_key()  # a key the cluster did not know: store it
                        continue
            break
        if check and response.status >= 400:
            raise error_from(response, self.url)
        return response

    def mutate(
        self, method: str, path: str, query: Mapping[str, Any] | None, body: bytes
    ) -> Response:
        """A request that changes something, under a fresh transaction ID (so the
        transport may send it twice and the home applies it once)."""
        headers = {"X-Dtwz-Txn": os.urandom(16).hex()}
        return self.call(method, path, query, body, headers=headers)

    def mutate_json(self, method: str, path: str, doc: Any, *, timeout: float | None = None) -> Any:
        """``mutate`` with a JSON body; the JSON answer."""
        headers = {"X-Dtwz-Txn": os.urandom(16).hex(), "Content-Type": "application/json"}
        body = json.dumps(doc).encode()
        return self.call(method, path, None, body, headers=headers, timeout=timeout).json()

    def stream(
        self, method: str, path: str, query: Mapping[str, Any]
    ) -> Iterator[tuple[int, memoryview]]:
        """The frames of a streamed answer (``dtwz.graph.stream``), read as they come."""
        target = f"{path}?{urlencode(query)}"
        # a stream cannot be sent again on UnknownKey, but it is made in a session, and
        # opening one (``call``) repairs UnknownKey first; without sessions there are no
        # keys to know (security off)
        return self.transport.stream(method, target, self.headers(method, target, b""))

    # -- proofs --------------------------------------------------------------------------

    def headers(
        self, method: str, target: str, body: bytes | None, *, session: bool = True
    ) -> dict[str, str]:
        """The headers that prove one attempt of a request (none without an identity)."""
        if self.identity is None:
            return {}
        if self.audience is None:
            self.audience = str(self.call("GET", "/health", sign=False).json()["node_id"])
        now = time.time()
        digest = body_sha256(body or b"")
        opened = self._open_session(now) if session else None
        if opened is not None:
            headers = mac_request(
                opened[0], opened[1], method, target, digest, now, audience=self.audience
            )
        else:
            headers = sign_request(
                self.identity, method, target, digest, now, audience=self.audience
            )
        if target == "/keys" and self.enrollment:
            headers[CAPABILITY_HEADER] = self.enrollment
        elif self.capabilities:
            headers[CAPABILITY_HEADER] = ",".join(self.capabilities.values())
        return headers

    def register_key(self) -> bool:
        """Store the identity's public key as its key object in the cluster
        (idempotent); True when it was created now."""
        if self.identity is None:
            raise InvalidArgument("this client has no identity")
        # signed, not in a session: a session is opened by a key the cluster knows
        response = self.call(
            "POST",
            "/keys",
            None,
            self.identity.record.encode(),
            headers={"X-Dtwz-Txn": os.urandom(16).hex()},
            session=False,
        )
        self.key_stored = True
        return response.status == 201

    def _open_session(self, now: float) -> tuple[ObjectId, bytes, float] | None:
        """The session requests are made in, opened or renewed as needed; None when
        the node has no sessions."""
        if not self.sessions or self.identity is None:
            return None
        with self._session_lock:
            if self.session is not None and self.session[2] - now > SESSION_MARGIN:
                return self.session
            private, public = client_session_keys()
            try:
                doc = self.call("POST", "/session", None, public, session=False).json()
            except InvalidArgument:  # the node has no sessions (security off): sign
                self.sessions = False
                return None
            try:
                session_id = ObjectId.parse(str(doc["session"]))
                node_public = bytes.fromhex(str(doc["public"]))
                shared = private.exchange(X25519PublicKey.from_public_bytes(node_public))
                expires = now + min(float(doc["expires"]) - time.time(), SESSION_TTL)
            except (KeyError, ValueError, DtwzError) as exc:
                raise ProtocolError(f"{self.url} answered a session request badly: {exc}") from exc
            assert self.audience is not None
            key = session_key(
                shared, session_id, self.identity.kuid, public, node_public, self.audience
            )
            self.session = (session_id, key, expires)
            return self.session
