"""Signed client requests: a client proves it holds its key, and a request cannot be replayed.

The client signs a canonical string of the request (method, raw path and query,
SHA-256 of the body, timestamp, nonce, key ID, audience) with its Ed25519
identity and sends the result in ``X-Dtwz-*`` headers. ``RequestVerifier``
checks the signature, refuses timestamps outside its window and nonces it has
seen inside it, and returns the accessor's kuid. It does so in two steps, so a
node can refuse a request from its headers alone before it reads the body:
``check`` (form, audience, time window, an unused nonce: no key, no body), then
``accept`` (the signature over the body's digest; the nonce is remembered).

Its nonce memory (``NonceMemory``) is bounded per key: each key (a request's
signer, or a session's owner) has its own share, so no key can push out
another's nonces nor make another's requests fail as too old. When a key's
share is full its oldest nonces are forgotten and that key's requests not newer
than what was forgotten are refused, so it fails closed, never open. Sessions
(``SessionTable``) are bounded per owner likewise. Pure: no I/O.
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
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from multidict import CIMultiDict, CIMultiDictProxy

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
from dtwz.security.keys import SIGNATURE_BYTES, Identity, PublicKey

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


_CI_HEADERS = (CIMultiDictProxy, CIMultiDict)  # case-insensitive header mappings


def body_sha256(body: bytes) -> bytes:
    """The body digest that requests sign (of the empty body when there is none)."""
    return hashlib.sha256(body).digest() if body else EMPTY_BODY_SHA256


EMPTY_BODY_SHA256 = hashlib.sha256(b"").digest()


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


class SignedHeaders(NamedTuple):  # a tuple: made once per request, cheaply
    """The proof a request carries, parsed and checked for form only (nothing is
    verified yet): ``kuid`` is the key line, a signer's kuid or a session ID."""

    kuid: ObjectId
    timestamp: int
    nonce: bytes
    signature: bytes
    audience: str
    seen_key: bytes  # what the nonce memory remembers: the key line and the nonce

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> SignedHeaders:
        """The proof headers of a request (names case-insensitive); ``AccessDenied``
        when one is missing or malformed."""
        # aiohttp's headers already answer case-insensitively: no lower-cased copy
        fields = (
            headers
            if isinstance(headers, _CI_HEADERS)
            else {name.lower(): value for name, value in headers.items()}
        )
        kuid = _key_id(_header(fields, KEY_HEADER))
        nonce = bytes.fromhex(_header(fields, NONCE_HEADER, _HEX, 2 * NONCE_BYTES))
        return cls(
            kuid,
            int(_header(fields, TIMESTAMP_HEADER, _DECIMAL)),
            nonce,
            bytes.fromhex(_header(fields, SIGNATURE_HEADER, _HEX, 2 * SIGNATURE_BYTES)),
            fields.get(AUDIENCE_HEADER.lower(), ""),
            kuid + nonce,
        )


class _Nonces:
    """One key's share of a ``NonceMemory``: its nonces, their timestamps in a
    min-heap, and its floor (every timestamp at or below it may be forgotten)."""

    __slots__ = ("by_time", "floor", "newest", "seen")

    def __init__(self, floor: int) -> None:
        self.seen: dict[bytes, int] = {}  # key line || nonce -> timestamp
        self.by_time: list[tuple[int, bytes]] = []  # a heap over the same entries
        self.floor = floor
        self.newest = floor

    def __len__(self) -> int:
        return len(self.seen)

    def expire(self, oldest_valid: int) -> int:
        """Forget what fell out of the window; how many were forgotten."""
        count = 0
        while self.by_time and self.by_time[0][0] < oldest_valid:
            self.forget_oldest()
            count += 1
        return count

    def forget_oldest(self) -> None:
        timestamp, seen_key = heapq.heappop(self.by_time)
        del self.seen[seen_key]
        self.floor = max(self.floor, timestamp)

    def add(self, seen_key: bytes, timestamp: int) -> None:
        self.seen[seen_key] = timestamp
        heapq.heappush(self.by_time, (timestamp, seen_key))
        self.newest = max(self.newest, timestamp)


class NonceMemory:
    """The nonces a node has accepted within the time window, bounded per key.

    Each key (``owner``: a request's signer, or the owner of its session) has its
    own share of at most ``per_key`` nonces; past that its oldest are forgotten and
    its floor rises, so only that key's own late requests are refused ("too old to
    tell from a replay"). All keys together hold at most ``max_nonces``: past that
    the key holding the most gives way, so a key within its fair share
    (``max_nonces`` / keys held) is never trimmed for another. At most ``max_keys``
    keys are tracked; past that the least recently used key is dropped as a whole
    and its floor kept in a small table (``max_retired``, for one window), so it
    still refuses that key's replays. Only when that table too overflows does a
    floor apply to keys not tracked: the one way many keys at once can make a new
    key's request fail as too old, and it fails closed.

    A key whose every nonce left the window is dropped, and its floor joins one
    floor for all keys: those timestamps are stale for everyone, so that floor
    refuses only what the window refuses, and keeps refusing it if the clock steps
    back. Not thread-safe: the verifier locks.
    """

    def __init__(
        self,
        window_s: int,
        max_nonces: int = 100_000,
        per_key: int = 10_000,
        max_keys: int = 10_000,
        max_retired: int = 100_000,
    ) -> None:
        if min(window_s, max_nonces, per_key, max_keys, max_retired) < 1:
            raise InvalidArgument("the window and every bound of the nonce memory must be >= 1")
        self.window_s = window_s
        self.max_nonces = max_nonces
        self.per_key = min(per_key, max_nonces)
        self.max_keys = max_keys
        self.max_retired = max_retired
        self._keys: OrderedDict[bytes, _Nonces] = OrderedDict()  # least recently used first
        self._retired: OrderedDict[bytes, int] = OrderedDict()  # dropped key -> its floor
        self._stale_floor = -1  # forgotten by leaving the window: stale for every key
        self._untracked_floor = -1  # floors of dropped keys the retired table lost
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def keys_tracked(self) -> int:
        return len(self._keys)

    def held_by(self, owner: bytes) -> int:
        """How many nonces ``owner``'s share holds."""
        share = self._keys.get(owner)
        return 0 if share is None else len(share)

    def check(self, owner: bytes, seen_key: bytes, timestamp: int, now: float) -> None:
        """``ReplayedRequest`` unless ``seen_key`` is new and newer than ``owner``'s floor."""
        share = self._keys.get(owner)
        if share is not None:
            self._total -= share.expire(int(now) - self.window_s)
            floor = share.floor
            if seen_key in share.seen:
                raise ReplayedRequest("the request's nonce was used before: a replay")
        else:
            floor = self._retired.get(owner, self._untracked_floor)
        if timestamp <= max(floor, self._stale_floor):
            raise ReplayedRequest(
                f"request timestamp {timestamp} is too old to tell from a replay (this "
                "key's nonce memory was full); send it again"
            )

    def remember(self, owner: bytes, seen_key: bytes, timestamp: int, now: float) -> None:
        """Remember an accepted request (``check`` passed just before)."""
        oldest_valid = int(now) - self.window_s
        share = self._keys.get(owner)
        if share is None:
            share = self._keys[owner] = _Nonces(self._retired.pop(owner, self._untracked_floor))
        else:
            self._keys.move_to_end(owner)
        share.add(seen_key, timestamp)
        self._total += 1
        while len(share) > self.per_key:
            share.forget_oldest()
            self._total -= 1
        self._sweep(oldest_valid)
        while len(self._keys) > self.max_keys:
            self._drop(*self._keys.popitem(last=False), oldest_valid)
        if self._total > self.max_nonces:
            self._shrink(share)

    def _sweep(self, oldest_valid: int) -> None:
        """Drop keys, least recently used first, whose every nonce left the window."""
        while self._keys:
            owner, share = next(iter(self._keys.items()))
            if share.newest >= oldest_valid:
                break
            del self._keys[owner]
            self._total -= len(share)
            self._stale_floor = max(self._stale_floor, share.newest, share.floor)
        while self._retired:
            owner, floor = next(iter(self._retired.items()))
            if floor >= oldest_valid:
                break
            del self._retired[owner]
            self._stale_floor = max(self._stale_floor, floor)

    def _drop(self, owner: bytes, share: _Nonces, oldest_valid: int) -> None:
        """Stop tracking ``owner``; keep its floor for as long as it matters."""
        self._total -= len(share)
        floor = max(share.floor, share.newest)
        if floor < oldest_valid:
            self._stale_floor = max(self._stale_floor, floor)
            return
        self._retired[owner] = floor
        while len(self._retired) > self.max_retired:
            _, lost = self._retired.popitem(last=False)
            self._untracked_floor = max(self._untracked_floor, lost)

    def _shrink(self, current: _Nonces) -> None:
        """Back under ``max_nonces``: the key holding the most gives way."""
        while self._total > self.max_nonces:
            fair = max(1, self.max_nonces // len(self._keys))
            share = current
            if len(share) <= fair:  # someone else holds more than its share: find the most
                share = max(self._keys.values(), key=len)
            excess = self._total - self.max_nonces
            for _ in range(max(1, min(len(share) - fair, excess + self.max_nonces // 64))):
                share.forget_oldest()
                self._total -= 1


class RequestVerifier:
    """Checks signed requests and remembers their nonces for ``window_s`` seconds.

    One per node (nonces are remembered per verifier). Thread-safe. A request is
    accepted at most once: its nonce is recorded only after its signature checks.
    ``max_nonces`` bounds the nonces held in all, ``per_key`` those of one key,
    ``max_keys`` the keys tracked (``NonceMemory``).
    """

    def __init__(
        self,
        window_s: int = 60,
        max_nonces: int = 100_000,
        audience: str | None = None,
        *,
        per_key: int = 10_000,
        max_keys: int = 10_000,
    ) -> None:
        if window_s < 1 or max_nonces < 1:
            raise InvalidArgument("window_s and max_nonces must be at least 1")
        self.window_s = window_s
        self.max_nonces = max_nonces
        self.audience = audience
        self.nonces = NonceMemory(window_s, max_nonces, per_key, max_keys)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.nonces)

    def check(self, signed: SignedHeaders, now: float, owner: ObjectId | None = None) -> None:
        """What can be checked from the headers alone, cheapest first: the audience,
        the time window, and that the nonce is unused (in ``owner``'s share: the
        signer's, or its session's owner). No key and no body are needed."""
        if self.audience is not None and signed.audience not in ("", self.audience):
            raise AccessDenied(
                f"the request is addressed to {signed.audience!r}, not {self.audience!r}"
            )
        age = int(now) - signed.timestamp
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
        with self._lock:  # cheap refusals first: a replay costs no signature check
            self.nonces.check(owner or signed.kuid, signed.seen_key, signed.timestamp, now)

    def accept(
        self,
        signed: SignedHeaders,
        method: str,
        path: str,
        body_digest: bytes,
        now: float,
        key: PublicKey | SessionKey,
        owner: ObjectId | None = None,
    ) -> ObjectId:
        """The key line of a request that ``check`` passed, once its signature (or
        session MAC) over the canonical request checks; the nonce is remembered then,
        so a forgery cannot burn a genuine request's nonce."""
        try:
            message = canonical_request(
                method,
                path,
                body_digest,
                signed.timestamp,
                signed.nonce,
                signed.kuid,
                signed.audience,
            )
        except InvalidArgument as exc:
            raise AccessDenied(f"malformed signed request: {exc}") from exc
        if key.kuid != signed.kuid or not key.verify(signed.signature, message):
            raise AccessDenied(f"bad request signature for key {signed.kuid}")
        who = owner or signed.kuid
        with self._lock:  # another thread may have won
            self.nonces.check(who, signed.seen_key, signed.timestamp, now)
            self.nonces.remember(who, signed.seen_key, signed.timestamp, now)
        return signed.kuid

    def verify(
        self,
        headers: Mapping[str, str],
        method: str,
        path: str,
        body_digest: bytes,
        now: float,
        key_lookup: KeyLookup | Callable[[ObjectId], SessionKey],
    ) -> ObjectId:
        """The kuid of the key that signed this request (the session ID for a session
        request); ``AccessDenied`` (or ``ReplayedRequest``) when the proof is missing,
        wrong, stale or used before. ``check`` and ``accept`` in one, for a caller
        that has the body at hand."""
        signed = SignedHeaders.parse(headers)
        try:
            key = key_lookup(signed.kuid)
        except (KeyError, ObjectNotFound, FormatError) as exc:
            raise AccessDenied(f"unknown key {signed.kuid}: {exc}") from exc
        owner = key.owner if isinstance(key, SessionKey) else signed.kuid
        self.check(signed, now, owner)
        return self.accept(signed, method, path, body_digest, now, key, owner)


NOT_SIGNED_HINT = (
    "this node has security on, so every request but /health, /ready, /metrics, /cluster "
    "and / is signed: use dtwz.Client or the dtwz command with an identity the cluster "
    "knows (DTWZ_IDENTITY=FILE, or identity= in Python; `dtwz identity new FILE` makes "
    "one), or sign requests as docs/SECURITY.md §5 says"
)


def _header(
    fields: Mapping[str, str], name: str, pattern: re.Pattern[str] | None = None, size: int = 0
) -> str:
    value = fields.get(name.lower())
    if value is None:
        raise AccessDenied(f"the request is not signed: no {name} header; {NOT_SIGNED_HINT}")
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
    return hmac.digest(key, message, "sha512")  # one-shot, in C: the same HMAC


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
    """A node's open sessions, expiring, bounded per owner and in all.

    One owner (the key that opened them) holds at most ``per_owner``; a new one
    past that replaces that owner's oldest, never another's. All owners together
    hold at most ``max_sessions``: past that, expired sessions go first, then the
    oldest session of the owner holding the most, so an owner within its fair
    share is not pushed out by another. A client that finds its session gone
    (``UnknownSession``) opens a new one."""

    def __init__(
        self, max_sessions: int = 10_000, ttl: float = SESSION_TTL, per_owner: int = 64
    ) -> None:
        if max_sessions < 1 or per_owner < 1 or ttl <= 0:
            raise InvalidArgument("max_sessions and per_owner must be >= 1 and ttl > 0")
        self.max_sessions = max_sessions
        self.per_owner = min(per_owner, max_sessions)
        self.ttl = ttl
        self._sessions: dict[bytes, SessionKey] = {}
        self._by_owner: dict[bytes, OrderedDict[bytes, None]] = {}  # oldest first
        self._lock = threading.Lock()

    def open(
        self, owner: ObjectId, client_public: bytes, audience: str, now: float
    ) -> tuple[ObjectId, bytes, float]:
        """(session ID, the node's X25519 public key, expiry) for a client that
        proved it holds ``owner``'s key and sent ``client_public``."""
        if len(client_public) != 32:
            raise InvalidArgument(
                f"a session is opened with a 32-byte X25519 public key, got {len(client_public)} "
                "bytes"
            )
        try:
            theirs = X25519PublicKey.from_public_bytes(client_public)
        except ValueError as exc:
            raise InvalidArgument(f"not an X25519 public key: {exc}") from exc
        mine = X25519PrivateKey.generate()
        node_public = mine.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        try:
            shared = mine.exchange(theirs)
        except ValueError as exc:  # a low-order point: the shared secret would be all zeros
            raise InvalidArgument(
                "the X25519 public key is of low order (no shared secret can come of it): "
                "send a freshly generated key"
            ) from exc
        session_id = ObjectId(os.urandom(16))
        key = session_key(shared, session_id, owner, client_public, node_public, audience)
        expires = now + self.ttl
        with self._lock:
            self._sessions[session_id] = SessionKey(session_id, key, owner, expires)
            mine_too = self._by_owner.setdefault(bytes(owner), OrderedDict())
            mine_too[session_id] = None
            while len(mine_too) > self.per_owner:
                self._remove(next(iter(mine_too)))
            if len(self._sessions) > self.max_sessions:
                self._shrink(now)
        return session_id, node_public, expires

    def lookup(self, session_id: ObjectId, now: float) -> SessionKey:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= now:
                self._remove(session_id)
                session = None
        if session is None:
            raise UnknownSession(f"no open session {session_id}: open a new one")
        return session

    def held_by(self, owner: ObjectId) -> int:
        """How many sessions ``owner`` holds."""
        return len(self._by_owner.get(bytes(owner), ()))

    def __len__(self) -> int:
        return len(self._sessions)

    def _remove(self, session_id: bytes) -> None:
        session = self._sessions.pop(session_id)
        owned = self._by_owner[bytes(session.owner)]
        del owned[session_id]
        if not owned:
            del self._by_owner[bytes(session.owner)]

    def _shrink(self, now: float) -> None:
        for session_id in [s for s, key in self._sessions.items() if key.expires <= now]:
            self._remove(session_id)
        while len(self._sessions) > self.max_sessions:
            largest = max(self._by_owner.values(), key=len)
            self._remove(next(iter(largest)))


def client_session_keys() -> tuple[X25519PrivateKey, bytes]:
    """An ephemeral X25519 pair for opening a session: (private, raw public)."""
    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
