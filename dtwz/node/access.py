"""Who may do what on this node: signed-request authentication and the access rule.

``Access`` is the policy the HTTP front end applies to every request that reads,
writes, migrates, walks or runs code (docs/SECURITY.md §9):

1. the request is signed (``RequestVerifier``, audience = this node's ID) by a
   key the node can find: a trusted key from ``admitted.json`` (admin, nodes) or
   a key object stored in the cluster, checked against its kuid. In two steps:
   ``admit`` checks what the headers tell before the body is read (a session
   or, after the time window and an unused nonce, a known key), ``accept`` the
   signature over the body's digest. Only key objects (``is_key_header``) are
   ever read as keys;
2. the admin and the cluster's nodes may do anything;
3. an object's owner (its header's kuid) may do anything with it;
4. else the object's default protections, else a capability for the object in
   ``X-Dtwz-Capability`` that ``capabilities.verify`` accepts for the rights and
   bytes the operation needs.

Running code at all needs x on the cluster's run-code object (``check_run_code``,
``run_code_object``: the admin grants it), and the code then acts as its caller
(docs/SECURITY.md §11).

Headers come through ``ObjectService.header_of``, which checks the ID against
the metadata; kuid and default protections are part of the ID, so they are
cached for good. Keys are looked up asynchronously first (``KeyRing.load``),
then handed to the pure, synchronous checks of ``dtwz.security.auth`` and
``dtwz.security.capabilities``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NamedTuple

from dtwz.errors import (
    AccessDenied,
    CorruptObject,
    DtwzError,
    FormatError,
    NodeBusy,
    ObjectNotFound,
    UnknownKey,
)
from dtwz.format.ids import ZERO_ID, ObjectId, content_object_id
from dtwz.format.layout import ObjectFlags, ObjectHeader
from dtwz.security.auth import (
    SESSION_HEADER,
    RequestVerifier,
    SessionKey,
    SessionTable,
    SignedHeaders,
    decode_capability_header,
)
from dtwz.security.capabilities import Capability, Rights, VerifiedCache, default_allows, verify
from dtwz.security.keyfiles import Admitted
from dtwz.security.keys import (
    KEY_OBJECT_FLAGS,
    KEY_OBJECT_PROT,
    MAX_LABEL_BYTES,
    PublicKey,
    check_key_object,
)

ReadKeyObject = Callable[[ObjectId], Awaitable[bytes]]  # kuid -> the key object's data
HeaderOf = Callable[[ObjectId], Awaitable[ObjectHeader]]
MAX_CAPABILITIES = 16  # per request: one per object a transaction touches
MAX_UNPROVED_LOADS = 16  # key lookups at once for requests not yet authenticated
UNKNOWN_FOR = 5.0  # seconds a kuid with no key stays unknown to such requests
_CACHE = 100_000


class Admission(NamedTuple):  # a tuple: made once per request, cheaply
    """A request that passed ``Access.admit`` (its headers), waiting for its body:
    the proof, what it signed, the key or session that checks it (None: the body
    brings the key), and who it acts as."""

    signed: SignedHeaders
    method: str
    path: str
    key: PublicKey | SessionKey | None
    owner: ObjectId


_KEY_RECORD_MIN = 46  # a key record with an empty label (docs/SECURITY.md §1)


def is_key_header(header: ObjectHeader) -> bool:
    """Whether a header is a key object's (docs/SECURITY.md §1): unowned, immutable,
    readable by all, its data one key record. Only such objects are read as keys, so
    a request naming any other object as its key never makes the node copy it."""
    return (
        header.kuid == ZERO_ID
        and int(header.flags) == int(KEY_OBJECT_FLAGS)
        and int(header.default_prot) == int(KEY_OBJECT_PROT)
        and _KEY_RECORD_MIN <= header.data_len <= _KEY_RECORD_MIN + MAX_LABEL_BYTES
    )


class KeyRing:
    """kuid -> public key: the admitted keys, then key objects read through the node."""

    def __init__(
        self,
        trusted: Mapping[ObjectId, PublicKey],
        read: ReadKeyObject,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trusted = dict(trusted)
        self._found: OrderedDict[ObjectId, PublicKey] = OrderedDict()
        self._read = read
        self._clock = clock
        # kuids a request not yet authenticated named and the cluster has no key for:
        # kuid -> until when that answer stands (``load(..., unproved=True)``)
        self._unknown: OrderedDict[ObjectId, float] = OrderedDict()
        self._loading = 0  # lookups for requests not yet authenticated, in flight

    async def load(self, kuid: ObjectId, *, unproved: bool = False) -> bool:
        """Make ``kuid``'s key available to ``lookup``; False when the cluster has none.

        ``unproved``: the kuid comes from a request whose signature is not checked
        yet (anyone may send one). Then a kuid found to have no key is remembered
        as such for ``UNKNOWN_FOR`` seconds, and at most ``MAX_UNPROVED_LOADS`` such
        lookups run at once (``NodeBusy`` past that), so made-up keys cost the
        cluster little: each at most a directory lookup and one small header."""
        if kuid in self._trusted or kuid in self._found:
            return True
        if unproved:
            until = self._unknown.get(kuid)
            if until is not None and until > self._clock():
                return False
            if self._loading >= MAX_UNPROVED_LOADS:
                raise NodeBusy("the node is looking up too many unknown keys; retry in a moment")
            self._loading += 1
        try:
            data = await self._read(kuid)
            record = check_key_object(kuid, data)  # a node serving the wrong key is caught
        except (ObjectNotFound, FormatError):  # CorruptObject is a FormatError
            if unproved:
                self._unknown[kuid] = self._clock() + UNKNOWN_FOR
                self._unknown.move_to_end(kuid)
                while len(self._unknown) > _CACHE:
                    self._unknown.popitem(last=False)
            return False
        finally:
            if unproved:
                self._loading -= 1
        self.add(record.public_key)
        return True

    def knows(self, kuid: ObjectId) -> bool:
        """Whether ``kuid``'s key is at hand (no lookup)."""
        return kuid in self._trusted or kuid in self._found

    def trust(self, trusted: Mapping[ObjectId, PublicKey]) -> None:
        """Replace the admitted keys (admitted.json was reread)."""
        self._trusted = dict(trusted)

    def add(self, key: PublicKey) -> None:
        self._unknown.pop(key.kuid, None)
        self._found[key.kuid] = key
        while len(self._found) > _CACHE:
            self._found.popitem(last=False)

    def lookup(self, kuid: ObjectId) -> PublicKey:
        key = self._trusted.get(kuid) or self._found.get(kuid)
        if key is None:
            raise KeyError(f"no key object for {kuid}")
        return key


class Access:
    """One node's authentication and access checks (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        admitted: Admitted,
        keys: KeyRing,
        header_of: HeaderOf,
        clock: Callable[[], float] = time.time,
        *,
        cluster_id: str = "dtwz",
    ) -> None:
        self.cluster_id = cluster_id  # names the cluster's run-code object
        self.admitted = admitted
        self.keys = keys
        self.verifier = RequestVerifier(audience=node_id)
        self.node_id = node_id
        self.sessions = SessionTable()
        self.cache = VerifiedCache()
        self._header_of = header_of
        self._protections: OrderedDict[ObjectId, tuple[ObjectId, int]] = OrderedDict()
        self._clock = clock
        self.stats = {
            "requests": 0,
            "denied": 0,
            "capabilities": 0,
            "session_requests": 0,
            "sessions_opened": 0,
        }

    def open_session(self, owner: ObjectId, client_public: bytes) -> dict[str, object]:
        """A session for ``owner`` (who signed the request that asks): its ID, the
        node's X25519 public key and the expiry (unix seconds)."""
        session_id, node_public, expires = self.sessions.open(
            owner, client_public, self.node_id, self._clock()
        )
        self.stats["sessions_opened"] += 1
        return {"session": session_id.hex(), "public": node_public.hex(), "expires": expires}

    def is_trusted(self, kuid: ObjectId) -> bool:
        """The admin and the cluster's nodes: allowed everything."""
        return kuid == self.admitted.admin or kuid in self.admitted.node_kuids

    @property
    def run_code_id(self) -> ObjectId:
        """The object standing for "run code on this cluster" (``run_code_object``)."""
        return run_code_object(self.admitted.admin, self.cluster_id)

    async def check_run_code(
        self, accessor: ObjectId, capabilities: Sequence[Capability] = ()
    ) -> None:
        """Raise ``AccessDenied`` unless ``accessor`` may run code on this cluster: the
        admin, a node, or a capability for EXEC on the run-code object, which only the
        admin can grant (its owner) (docs/SECURITY.md §11)."""
        if self.is_trusted(accessor):
            return
        target = self.run_code_id
        admin = self.admitted.admin
        cap = next((c for c in capabilities if c.target == target), None)
        if cap is None:
            self.stats["denied"] += 1
            raise AccessDenied(
                f"{accessor} may not run code on this cluster: running code is a right the "
                f"admin ({admin}) grants, as x on the cluster's run-code object {target}; "
                f"the admin runs `dtwz cap grant run-code --to {accessor} --rights x` "
                "and the caller sends the capability it prints with its requests "
                "(--capability, DTWZ_CAPABILITY or Client.add_capability)"
            )
        self.stats["capabilities"] += 1
        for link in cap.chain:
            await self.keys.load(link.issuer)
        try:
            verify(
                cap,
                target=target,
                accessor_kuid=accessor,
                rights_needed=Rights.EXEC,
                offset=None,
                length=None,
                now=int(self._clock()),
                owner_kuid_of_target=admin,
                key_lookup=self.keys.lookup,
                cache=self.cache,
            )
        except AccessDenied:
            self.stats["denied"] += 1
            raise

    async def authenticate(
        self,
        headers: Mapping[str, str],
        method: str,
        raw_path: str,
        body_digest: bytes,
        new_key: PublicKey | None = None,
    ) -> ObjectId:
        """The kuid that signed this request (``admit``, then ``accept``). ``new_key``:
        a key the request itself brings (registering a key object), usable to check
        its own signature."""
        admission = await self.admit(headers, method, raw_path, brings_key=new_key is not None)
        return await self.accept(admission, body_digest, new_key)

    async def admit(
        self, headers: Mapping[str, str], method: str, raw_path: str, *, brings_key: bool = False
    ) -> Admission:
        """What can be checked before the body is read, cheapest first (docs/SECURITY.md
        §9): the proof headers' form; the session (in memory) or, for a signed request,
        nothing yet; the audience, the time window and an unused nonce; and only then
        the signer's key, which may be looked up in the cluster (``KeyRing.load``: key
        objects only, never a copy). ``brings_key``: the body may carry the signer's
        own key (``POST /keys``), so a signer not known yet is not refused here."""
        signed = SignedHeaders.parse(headers)
        now = self._clock()
        if SESSION_HEADER in headers:  # an HMAC in a session: no signature to check
            session = self.sessions.lookup(signed.kuid, now)
            self.verifier.check(signed, now, session.owner)
            return Admission(signed, method, raw_path, session, session.owner)
        self.verifier.check(signed, now)
        key: PublicKey | None = None
        if not brings_key or self.keys.knows(signed.kuid):
            key = await self._signer(signed.kuid)
        return Admission(signed, method, raw_path, key, signed.kuid)

    async def accept(
        self, admission: Admission, body_digest: bytes, new_key: PublicKey | None = None
    ) -> ObjectId:
        """The kuid that signed an admitted request, once its signature (or MAC) over
        the body's digest checks; ``new_key`` as for ``authenticate``: it checks the
        signature only, and the ring learns it once it is enrolled (``POST /keys``)."""
        signed, key = admission.signed, admission.key
        if key is None:
            if new_key is not None and new_key.kuid == signed.kuid:
                key = new_key
            else:
                key = await self._signer(signed.kuid)
        self.verifier.accept(
            signed,
            admission.method,
            admission.path,
            body_digest,
            self._clock(),
            key,
            admission.owner,
        )
        self.stats["requests"] += 1
        if isinstance(key, SessionKey):
            self.stats["session_requests"] += 1
        return admission.owner

    async def _signer(self, claimed: ObjectId) -> PublicKey:
        if not await self.keys.load(claimed, unproved=True):
            raise UnknownKey(
                f"key {claimed} is not known to the cluster: it must be enrolled, with the "
                "admin's consent (docs/SECURITY.md §10): the admin runs `dtwz identity "
                f"enroll {claimed}` and the key's holder presents the capability it prints "
                "(`dtwz identity register --enrollment CAP`, or Client(enrollment=CAP))"
            )
        return self.keys.lookup(claimed)

    async def check(
        self,
        accessor: ObjectId,
        oid: ObjectId,
        rights: Rights,
        capabilities: Sequence[Capability] = (),
        offset: int | None = None,
        length: int | None = None,
        *,
        by_default: bool = True,
    ) -> None:
        """Raise ``AccessDenied`` (or a subclass) unless ``accessor`` may use ``oid``
        with ``rights`` on ``[offset, offset + length)`` (None: the whole object).
        ``by_default=False``: the default protections grant nothing (a change of a
        directory's entries: its owner, the admin or a capability only)."""
        if self.is_trusted(accessor):
            return
        owner, prot = await self._protection(oid)
        if accessor == owner or (by_default and default_allows(prot, rights)):
            return
        cap = next((c for c in capabilities if c.target == oid), None)
        if cap is None:
            self.stats["denied"] += 1
            defaults = (
                f"the default protections are {prot:#x}"
                if by_default
                else "default protections grant no one this"
            )
            raise AccessDenied(
                f"{accessor} may not {rights.names} object {oid}: it is not the owner, "
                f"{defaults} and no capability for it came with the request"
            )
        self.stats["capabilities"] += 1
        for link in cap.chain:  # the pure check looks keys up synchronously
            await self.keys.load(link.issuer)
        try:
            verify(
                cap,
                target=oid,
                accessor_kuid=accessor,
                rights_needed=rights,
                offset=offset,
                length=length,
                now=int(self._clock()),
                owner_kuid_of_target=owner,
                key_lookup=self.keys.lookup,
                cache=self.cache,
            )
        except AccessDenied:
            self.stats["denied"] += 1
            raise

    async def owner_of(self, oid: ObjectId) -> ObjectId:
        return (await self._protection(oid))[0]

    async def sees(
        self, accessor: ObjectId, oid: ObjectId, capabilities: Sequence[Capability] = ()
    ) -> bool:
        """Whether ``accessor`` may know that ``oid`` exists: the admin, a node, the
        owner, everyone when the default protections grant READ, and whoever holds a
        capability for it whose root its owner signed (expired, for other rights or
        bytes, badly delegated or not). To anyone else the object answers as a
        missing one does (docs/SECURITY.md §9). ``ObjectNotFound`` when there is no
        such object."""
        if self.is_trusted(accessor):
            return True
        owner, prot = await self._protection(oid)
        if accessor == owner or default_allows(prot, Rights.READ):
            return True
        cap = next((c for c in capabilities if c.target == oid), None)
        if cap is None:
            return False
        root = cap.chain[0]
        if root.issuer != owner or not await self.keys.load(owner):
            return False
        if self.cache.hit(root.digest):
            return True
        return self.keys.lookup(owner).verify(root.signature, root.signed_message)

    async def read_rule(
        self, accessor: ObjectId, capabilities: Sequence[Capability] = ()
    ) -> ReadRule:
        """The rule a walk applies to each object it meets (docs/SECURITY.md §9): may
        ``accessor`` read it whole? Decided from the header at hand, synchronously; the
        keys the capabilities need are loaded here, once per walk step."""
        trusted = self.is_trusted(accessor)
        caps: dict[ObjectId, Capability] = {}
        if not trusted:
            for cap in capabilities:  # as ``check``: the first one naming an object
                caps.setdefault(cap.target, cap)
            for cap in caps.values():
                for link in cap.chain:
                    try:
                        await self.keys.load(link.issuer)
                    except DtwzError:  # unreachable key object: that chain will not verify
                        continue
        return ReadRule(accessor, trusted, caps, int(self._clock()), self.keys.lookup, self.cache)

    async def _protection(self, oid: ObjectId) -> tuple[ObjectId, int]:
        known = self._protections.get(oid)
        if known is not None:
            return known
        header = await self._header_of(oid)
        if header.object_id != oid:
            raise CorruptObject(f"the header found for {oid} is that of {header.object_id}")
        found = (ObjectId(header.kuid), int(header.default_prot))
        self._protections[oid] = found
        while len(self._protections) > _CACHE:
            self._protections.popitem(last=False)
        return found


class ReadRule:
    """May one caller read an object whole, given its owner and default protections
    (a header at hand)? What ``Access.check`` decides for READ without a byte range,
    without awaiting: ``Access.read_rule`` makes one per walk step. Zero is nobody
    (it owns nothing, not even unowned objects)."""

    __slots__ = ("_cache", "_caps", "_lookup", "_now", "accessor", "trusted")

    def __init__(
        self,
        accessor: ObjectId,
        trusted: bool,
        caps: Mapping[ObjectId, Capability],
        now: int,
        lookup: Callable[[ObjectId], PublicKey],
        cache: VerifiedCache,
    ) -> None:
        self.accessor = accessor
        self.trusted = trusted  # the admin or a node: may read everything
        self._caps = caps
        self._now = now
        self._lookup = lookup
        self._cache = cache

    def __call__(self, oid: ObjectId, owner: bytes, prot: int) -> bool:
        if self.trusted or default_allows(prot, Rights.READ):
            return True
        if owner == self.accessor and owner != ZERO_ID:
            return True
        cap = self._caps.get(oid)
        if cap is None:
            return False
        try:
            verify(
                cap,
                target=oid,
                accessor_kuid=self.accessor,
                rights_needed=Rights.READ,
                now=self._now,
                owner_kuid_of_target=ObjectId(owner),
                key_lookup=self._lookup,
                cache=self._cache,
            )
        except AccessDenied:
            return False
        return True


RUN_CODE_CONTENTS = b"dtwz-run-code\x00"


def run_code_object(admin: ObjectId, cluster_id: str) -> ObjectId:
    """The ID of a cluster's run-code object: who may run code there holds x on it
    (docs/SECURITY.md §11). A content ID owned by the admin, immutable, with no
    default protections, over ``"dtwz-run-code" 0x00 || cluster ID``: anyone can
    compute it, only the admin can grant rights on it, and no node stores it (an
    ID the access check knows the owner of without a header)."""
    return content_object_id(
        admin, ObjectFlags.IMMUTABLE, 0, RUN_CODE_CONTENTS + cluster_id.encode("utf-8")
    )


def parse_capabilities(value: str | None) -> list[Capability]:
    """The capabilities of an ``X-Dtwz-Capability`` header: comma-separated chains."""
    if not value:
        return []
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if len(parts) > MAX_CAPABILITIES:
        raise AccessDenied(f"at most {MAX_CAPABILITIES} capabilities per request")
    return [decode_capability_header(p) for p in parts]
