"""Signed client requests: a client proves it holds its key, and a request cannot be replayed.

The client signs a canonical string of the request (method, raw path and query,
SHA-256 of the body, timestamp, nonce, key ID, audience) with its Ed25519
identity and sends the result in ``X-Dtwz-*`` headers. ``RequestVerifier``
checks the signature, refuses timestamps outside its window and nonces it has
seen inside it, and returns the accessor's kuid. Its nonce memory is bounded:
when full it forgets the oldest nonces and from then on refuses any request not
newer than what it forgot, so it fails closed, never open. Pure: no I/O.
Node-to-node authentication (CurveZMQ) is in docs/SECURITY.md, not here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from dtwz.errors import (
    AccessDenied,
    FormatError,
    InvalidArgument,
    InvalidCapability,
    ObjectNotFound,
    ReplayedRequest,
    UnknownSession,
)
from dtwz.format.ids import ObjectId
from dtwz.security.capabilities import Capability, KeyLookup
from dtwz.security.keys import SIGNATURE_BYTES, Identity

KEY_HEADER = "X-Dtwz-Key"
TIMESTAMP_HEADER = "X-Dtwz-Timestamp"
NONCE_HEADER = "X-Dtwz-Nonce"
AUDIENCE_HEADER = "X-Dtwz-Audience"
SIGNATURE_HEADER = "X-Dtwz-Signature"
CAPABILITY_HEADER = "X-Dtwz-Capability"
REQUEST_DOMAIN = "dtwz-request-v1"
NONCE_BYTES = 16
DIGEST_BYTES = 32
MAX_CAPABILITY_HEADER = 4096  # characters; a chain of MAX_CHAIN links needs < 1600

_METHOD = re.compile(r"[A-Z]{1,16}")
# as on the request line (nodes take lines up to 16 KiB): no spaces, no controls
_PATH = re.compile(r"/[\x21-\x7e]{0,16383}")
_AUDIENCE = re.compile(r"[\x21-\x7e]{0,255}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")  # no leading zeros: one spelling
_HEX = re.compile(r"[0-9a-f]*")


def body_sha256(body: bytes) -> bytes:
    """The body digest that requests sign (of the empty body when there is none)."""
    return hashlib.sha256(body).digest()


def canonical_request(
    method: str,
    path: str,
    body_digest: bytes,
    timestamp: int,
    nonce: bytes,
    key_id: ObjectId,
    audience: str = "",
) -> bytes:
    """The exact bytes a request signature covers (docs/SECURITY.md §4).

    Every field is checked to be free of line breaks, so no two requests share a
    canonical string.
    """
    if not _METHOD.fullmatch(method):
        raise InvalidArgument(f"an HTTP method is 1-16 upper-case letters, got {method!r}")
    if not _PATH.fullmatch(path):
        raise InvalidArgument(f"a request path starts with '/' and is printable ASCII: {path!r}")
    if not _AUDIENCE.fullmatch(audience):
        raise InvalidArgument(f"an audience is up to 255 printable ASCII bytes: {audience!r}")
    if len(body_digest) != DIGEST_BYTES or len(nonce) != NONCE_BYTES:
        raise InvalidArgument("the body digest is 32 bytes and the nonce 16")
    if not 0 <= timestamp < 10**19:
        raise InvalidArgument(f"a timestamp is unix seconds, got {timestamp}")
    fields = [
        REQUEST_DOMAIN,
        method,
        path,
        body_digest.hex(),
        str(timestamp),
        nonce.hex(),
        key_id.hex(),
        audience,
    ]
    return "\n".join(fields).encode("ascii")


def sign_request(
    identity: Identity,
    method: str,
    path: str,
    body_digest: bytes,
    now: float,
    nonce: bytes | None = None,
    audience: str = "",
) -> dict[str, str]:
    """The headers that authenticate one request as ``identity``'s.

    ``path`` is the raw path and query exactly as on the request line; ``audience``
    the node ID the request is for ("" lets any node accept it, see the docs).
    """
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    timestamp = int(now)
    message = canonical_request(
        method, path, body_digest, timestamp, nonce, identity.kuid, audience
    )
    headers = {
        KEY_HEADER: identity.kuid.hex(),
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce.hex(),
        SIGNATURE_HEADER: identity.sign(message).hex(),
    }
    if audience:
        headers[AUDIENCE_HEADER] = audience
    return headers


class RequestVerifier:
    """Checks signed requests and remembers their nonces for ``window_s`` seconds.

    One per node (nonces are remembered per verifier). Thread-safe. A request is
    accepted at most once: its nonce is recorded only after its signature checks.
    """

    def __init__(
        self, window_s: int = 60, max_nonces: int = 100_000, audience: str | None = None
    ) -> None:
        if window_s < 1 or max_nonces < 1:
            raise InvalidArgument("window_s and max_nonces must be at least 1")
        self.window_s = window_s
        self.max_nonces = max_nonces
        self.audience = audience
        self._seen: dict[bytes, int] = {}  # kuid || nonce -> timestamp
        self._by_time: list[tuple[int, bytes]] = []  # a heap over the same entries
        # Every timestamp at or below this may belong to a forgotten nonce: refuse it.
        self._floor = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def verify(
        self,
        headers: Mapping[str, str],
        method: str,
        path: str,
        body_digest: bytes,
        now: float,
        key_lookup: KeyLookup | Callable[[ObjectId], SessionKey],
    ) -> ObjectId:
        """The kuid of the key that signed this request; ``AccessDenied`` (or
        ``ReplayedRequest``) when the proof is missing, wrong, stale or used before."""
        fields = {name.lower(): value for name, value in headers.items()}
        kuid = _key_id(_header(fields, KEY_HEADER))
        timestamp = int(_header(fields, TIMESTAMP_HEADER, _DECIMAL))
        nonce = bytes.fromhex(_header(fields, NONCE_HEADER, _HEX, 2 * NONCE_BYTES))
        signature = bytes.fromhex(_header(fields, SIGNATURE_HEADER, _HEX, 2 * SIGNATURE_BYTES))
        audience = fields.get(AUDIENCE_HEADER.lower(), "")
        if self.audience is not None and audience not in ("", self.audience):
            raise AccessDenied(f"the request is addressed to {audience!r}, not {self.audience!r}")
        age = int(now) - timestamp
        if age > self.window_s:
            raise ReplayedRequest(
                f"the request is {age} s old; requests are accepted for "
                f"{self.window_s} s (are the clocks in step?)"
            )
        if -age > self.window_s:
            raise ReplayedRequest(
                f"the request is dated {-age} s in the future; at most "
                f"{self.window_s} s is accepted (are the clocks in step?)"
            )
        seen_key = bytes(kuid) + nonce
        with self._lock:  # cheap refusals first: a replay costs no signature check
            self._check_fresh(seen_key, timestamp, now)
        try:
            message = canonical_request(method, path, body_digest, timestamp, nonce, kuid, audience)
        except InvalidArgument as exc:
            raise AccessDenied(f"malformed signed request: {exc}") from exc
        try:
            key = key_lookup(kuid)
        except (KeyError, ObjectNotFound, FormatError) as exc:
            raise AccessDenied(f"unknown key {kuid}: {exc}") from exc
        if key.kuid != kuid or not key.verify(signature, message):
            raise AccessDenied(f"bad request signature for key {kuid}")
        with self._lock:
            self._check_fresh(seen_key, timestamp, now)  # another thread may have won
            self._remember(seen_key, timestamp)
        return kuid

    def _check_fresh(self, seen_key: bytes, timestamp: int, now: float) -> None:
        self._expire(now)
        if timestamp <= self._floor:
            raise ReplayedRequest(
                f"request timestamp {timestamp} is too old to tell from a "
                "replay (nonce memory was full); send it again"
            )
        if seen_key in self._seen:
            raise ReplayedRequest("the request's nonce was used before: a replay")

    def _expire(self, now: float) -> None:
        oldest_valid = int(now) - self.window_s
        while self._by_time and self._by_time[0][0] < oldest_valid:
            self._forget()

    def _remember(self, seen_key: bytes, timestamp: int) -> None:
        self._seen[seen_key] = timestamp
        heapq.heappush(self._by_time, (timestamp, seen_key))
        while len(self._seen) > self.max_nonces:
            self._forget()

    def _forget(self) -> None:
        timestamp, seen_key = heapq.heappop(self._by_time)
        del self._seen[seen_key]
        self._floor = max(self._floor, timestamp)


def _header(
    fields: Mapping[str, str], name: str, pattern: re.Pattern[str] | None = None, size: int = 0
) -> str:
    value = fields.get(name.lower())
    if value is None:
        raise AccessDenied(f"the request is not signed: no {name} header")
    if (pattern is not None and not pattern.fullmatch(value)) or (size and len(value) != size):
        raise AccessDenied(f"malformed {name} header")
    return value


def _key_id(text: str) -> ObjectId:
    try:
        return ObjectId.parse(text)
    except FormatError as exc:
        raise AccessDenied(f"malformed {KEY_HEADER} header: {exc}") from exc


def encode_capability_header(cap: Capability) -> str:
    """A capability chain as a header value: unpadded base64url of its encoding."""
    return _b64(cap.encode())


def decode_capability_header(value: str) -> Capability:
    """The capability in a header value; ``InvalidCapability`` for anything else."""
    if len(value) > MAX_CAPABILITY_HEADER or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise InvalidCapability(f"malformed {CAPABILITY_HEADER} header")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidCapability(f"malformed {CAPABILITY_HEADER} header: {exc}") from exc
    if _b64(raw) != value:  # unused low bits set: one spelling per capability
        raise InvalidCapability(f"non-canonical {CAPABILITY_HEADER} header")
    return Capability.decode(raw)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# A signed request carried in a URL (a link a browser can open, which cannot sign):
# the same fields as the headers, as query parameters, appended after the query
# they sign. Each link is good once (its nonce), within the time window.
LINK_PARAMS = {
    "dtwz-key": KEY_HEADER,
    "dtwz-ts": TIMESTAMP_HEADER,
    "dtwz-nonce": NONCE_HEADER,
    "dtwz-aud": AUDIENCE_HEADER,
    "dtwz-sig": SIGNATURE_HEADER,
}


def link_query(headers: Mapping[str, str]) -> str:
    """The query parameters that carry ``sign_request``'s headers in a link."""
    names = {v.lower(): k for k, v in LINK_PARAMS.items()}
    return "&".join(f"{names[k.lower()]}={v}" for k, v in headers.items() if k.lower() in names)


def split_link(raw_path: str) -> tuple[str, dict[str, str]] | None:
    """(the path and query that were signed, the signature headers) of a signed
    link; None if ``raw_path`` carries no signature. The signature parameters must
    come last, as ``link_query`` writes them."""
    path, _, query = raw_path.partition("?")
    parts = query.split("&") if query else []
    signed, headers = [], {}
    for part in parts:
        name, _, value = part.partition("=")
        if name in LINK_PARAMS:
            headers[LINK_PARAMS[name]] = value
        elif headers:
            return None  # something after the signature: not signed
        else:
            signed.append(part)
    if SIGNATURE_HEADER not in headers:
        return None
    return (f"{path}?{'&'.join(signed)}" if signed else path), headers


# -- sessions: one Ed25519-signed handshake, then an HMAC per request -----------------
#
# Signing every request with Ed25519 costs a signature at the client and a
# verification at the node (~200 us together on a small machine). A client
# therefore opens a session once: a signed request whose body is an ephemeral
# X25519 public key; the node answers with its own, and both derive the session
# key with HKDF-SHA256 over the shared secret and everything that names the
# session. Later requests are the same canonical request, with the session ID in
# place of the key ID and HMAC-SHA512 in place of the signature (64 bytes either
# way), marked by ``X-Dtwz-Session: 1``; the node's nonce memory and time window
# apply unchanged. docs/SECURITY.md §5.

SESSION_HEADER = "X-Dtwz-Session"
SESSION_DOMAIN = b"dtwz-session-v1"
SESSION_TTL = 600  # seconds a session key is used for


def session_key(
    shared: bytes,
    session_id: bytes,
    kuid: bytes,
    client_public: bytes,
    node_public: bytes,
    audience: str,
) -> bytes:
    """The 32-byte session key both sides derive from the X25519 shared secret."""
    info = b"".join(
        [SESSION_DOMAIN, session_id, kuid, client_public, node_public, audience.encode("ascii")]
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def session_mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha512).digest()


@dataclass(frozen=True, slots=True)
class SessionKey:
    """What ``RequestVerifier`` checks a session request against, in place of a
    public key: ``kuid`` is the session ID, ``verify`` an HMAC comparison."""

    kuid: ObjectId
    key: bytes
    owner: ObjectId  # the identity that opened the session
    expires: float

    def verify(self, signature: bytes, message: bytes) -> bool:
        return hmac.compare_digest(session_mac(self.key, message), signature)


def mac_request(
    session_id: ObjectId,
    key: bytes,
    method: str,
    path: str,
    body_digest: bytes,
    now: float,
    nonce: bytes | None = None,
    audience: str = "",
) -> dict[str, str]:
    """The headers of a request authenticated by a session (as ``sign_request``)."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    timestamp = int(now)
    message = canonical_request(method, path, body_digest, timestamp, nonce, session_id, audience)
    headers = {
        KEY_HEADER: session_id.hex(),
        TIMESTAMP_HEADER: str(timestamp),
        NONCE_HEADER: nonce.hex(),
        SIGNATURE_HEADER: session_mac(key, message).hex(),
        SESSION_HEADER: "1",
    }
    if audience:
        headers[AUDIENCE_HEADER] = audience
    return headers


class SessionTable:
    """A node's open sessions, bounded (the oldest go first) and expiring."""

    def __init__(self, max_sessions: int = 10_000, ttl: float = SESSION_TTL) -> None:
        self.max_sessions = max_sessions
        self.ttl = ttl
        self._sessions: OrderedDict[bytes, SessionKey] = OrderedDict()
        self._lock = threading.Lock()

    def open(
        self, owner: ObjectId, client_public: bytes, audience: str, now: float
    ) -> tuple[ObjectId, bytes, float]:
        """(session ID, the node's X25519 public key, expiry) for a client that
        proved it holds ``owner``'s key and sent ``client_public``."""
        try:
            theirs = X25519PublicKey.from_public_bytes(client_public)
        except ValueError as exc:
            raise InvalidArgument(f"not an X25519 public key: {exc}") from exc
        mine = X25519PrivateKey.generate()
        node_public = mine.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        session_id = ObjectId(os.urandom(16))
        key = session_key(
            mine.exchange(theirs), session_id, owner, client_public, node_public, audience
        )
        expires = now + self.ttl
        with self._lock:
            self._sessions[session_id] = SessionKey(session_id, key, owner, expires)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, node_public, expires

    def lookup(self, session_id: ObjectId, now: float) -> SessionKey:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= now:
                del self._sessions[session_id]
                session = None
        if session is None:
            raise UnknownSession(f"no open session {session_id}: open a new one")
        return session

    def __len__(self) -> int:
        return len(self._sessions)


def client_session_keys() -> tuple[X25519PrivateKey, bytes]:
    """An ephemeral X25519 pair for opening a session: (private, raw public)."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
