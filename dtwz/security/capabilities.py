"""Capabilities: signed, delegable grants of rights on one object (docs/SECURITY.md).

A ``Capability`` says "accessor may use target with these rights until expiry,
within this gate". The root of a chain is signed by the target's owner (the key
whose object is the target's kuid); each further link is signed by the accessor
of the link before it and may only narrow rights, expiry and gate. A link embeds
its parent, so a whole chain travels as one blob and every signature covers all
the links above it. Invariants: ``decode`` accepts only the canonical encoding
(so ``encode(decode(b)) == b``), and ``verify`` is the only way to trust one.
Pure: no I/O. docs/SECURITY.md has the bytes and the algorithm.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import IntFlag
from functools import cached_property
from itertools import pairwise

from dtwz.errors import (
    AccessDenied,
    CapabilityExpired,
    FormatError,
    InvalidArgument,
    InvalidCapability,
    ObjectNotFound,
)
from dtwz.format.ids import ID_BYTES, ZERO_ID, ObjectId
from dtwz.format.layout import Protection
from dtwz.security.keys import SIGNATURE_BYTES, Identity, PublicKey

CAP_MAGIC = b"DCAP"
CAP_VERSION = 1
SIGNING_DOMAIN = b"dtwz-capability-v1\x00"
MAX_CHAIN = 8  # links, root included: bounds decode recursion and verification work
MAX_U64 = (1 << 64) - 1

_HAS_GATE = 1
_HAS_PARENT = 2
# magic, version, flags, rights, reserved, target, accessor, issuer, expiry,
# gate offset, gate length, parent length; then the parent, then the signature
_FIXED = struct.Struct("<4sBBBB16s16s16sQQQI")
assert _FIXED.size == 84


class Rights(IntFlag):
    """What a capability allows. READ/WRITE/EXEC share their bits with ``Protection``."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXEC = 4
    DELEGATE = 8

    @classmethod
    def parse(cls, text: str) -> Rights:
        """Rights from letters, e.g. ``"rw"`` or ``"rwxd"``."""
        rights = cls.NONE
        for letter in text.lower():
            if letter not in _LETTERS:
                raise InvalidArgument(f"rights are letters from 'rwxd', got {text!r}")
            rights |= _LETTERS[letter]
        return rights

    @property
    def names(self) -> str:
        """``READ|WRITE``: for messages (``str()`` of a flag changed across Pythons)."""
        return "|".join(r.name or "" for r in _ALL_RIGHTS if r & self) or "NONE"


_LETTERS = {"r": Rights.READ, "w": Rights.WRITE, "x": Rights.EXEC, "d": Rights.DELEGATE}
_ALL_RIGHTS = (Rights.READ, Rights.WRITE, Rights.EXEC, Rights.DELEGATE)
_KNOWN_RIGHTS = 0xF
# Flag arithmetic and Rights(n) run Python code in enum.py; hot paths use ints and this.
_RIGHTS_OF = tuple(Rights(n) for n in range(_KNOWN_RIGHTS + 1))
_DELEGATE = int(Rights.DELEGATE)


@dataclass(frozen=True, slots=True)
class Gate:
    """The bytes ``[offset, offset + length)`` of the target; no gate is the whole object."""

    offset: int
    length: int

    def __post_init__(self) -> None:
        if not (
            isinstance(self.offset, int)
            and isinstance(self.length, int)
            and self.offset >= 0
            and self.length >= 1
            and self.offset + self.length <= 1 << 64
        ):
            raise InvalidArgument(
                f"a gate is offset >= 0 and length >= 1 within 2**64, got {self.offset}, "
                f"{self.length}"
            )

    @property
    def end(self) -> int:
        return self.offset + self.length

    def covers(self, offset: int, length: int) -> bool:
        return self.offset <= offset and offset + length <= self.end

    def __str__(self) -> str:
        return f"[{self.offset:#x}, {self.end:#x})"


def gate_within(inner: Gate | None, outer: Gate | None) -> bool:
    """True when every byte ``inner`` allows is one ``outer`` allows (None: all)."""
    if outer is None:
        return True
    return inner is not None and outer.covers(inner.offset, inner.length)


def _unsigned(
    target: bytes,
    accessor: bytes,
    rights: int,
    expiry: int,
    gate: Gate | None,
    issuer: bytes,
    parent: bytes,
) -> bytes:
    flags = (_HAS_GATE if gate else 0) | (_HAS_PARENT if parent else 0)
    offset, length = (gate.offset, gate.length) if gate else (0, 0)
    return (
        _FIXED.pack(
            CAP_MAGIC,
            CAP_VERSION,
            flags,
            rights,
            0,
            target,
            accessor,
            issuer,
            expiry,
            offset,
            length,
            len(parent),
        )
        + parent
    )


@dataclass(frozen=True, kw_only=True)
class Capability:
    """One link of a capability chain; ``parent`` is the link it was delegated from.

    Not slotted, so ``encode`` can remember its bytes (a frozen dataclass still lets
    ``cached_property`` write to the instance dict).
    """

    target: ObjectId
    accessor: ObjectId
    rights: Rights
    expiry: int
    gate: Gate | None = None
    issuer: ObjectId
    parent: Capability | None = None
    signature: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("target", "accessor", "issuer"):
            value = getattr(self, name)
            if type(value) is not ObjectId:  # what decode passes: no need to copy
                if not isinstance(value, bytes) or len(value) != ID_BYTES:
                    raise InvalidArgument(f"capability {name} must be a 16-byte object ID")
                object.__setattr__(self, name, ObjectId(value))
        rights = self.rights
        if not isinstance(rights, int) or not 0 < rights <= _KNOWN_RIGHTS:
            raise InvalidArgument(f"capability rights must be a non-empty Rights, got {rights!r}")
        if type(rights) is not Rights:
            object.__setattr__(self, "rights", _RIGHTS_OF[rights])
        if not isinstance(self.expiry, int) or not 0 <= self.expiry <= MAX_U64:
            raise InvalidArgument(f"capability expiry must be a u64, got {self.expiry!r}")
        if self.gate is not None and not isinstance(self.gate, Gate):
            raise InvalidArgument(f"a capability gate is a Gate or None, got {self.gate!r}")
        if self.parent is not None and not isinstance(self.parent, Capability):
            raise InvalidArgument("a capability parent is a Capability or None")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise InvalidArgument("a capability signature is 64 bytes")
        if self.depth > MAX_CHAIN:
            raise InvalidArgument(f"a capability chain has at most {MAX_CHAIN} links")

    @property
    def depth(self) -> int:
        """Links in the chain that ends here, root included."""
        return 1 if self.parent is None else self.parent.depth + 1

    @property
    def chain(self) -> tuple[Capability, ...]:
        """The links from the root (signed by the owner) to this one."""
        links: list[Capability] = []
        link: Capability | None = self
        while link is not None:
            links.append(link)
            link = link.parent
        return tuple(reversed(links))

    @cached_property
    def _encoded(self) -> bytes:
        parent = self.parent.encode() if self.parent else b""
        unsigned = _unsigned(
            self.target, self.accessor, self.rights, self.expiry, self.gate, self.issuer, parent
        )
        return unsigned + self.signature

    def encode(self) -> bytes:
        return self._encoded

    @property
    def signed_message(self) -> bytes:
        """What the issuer signed: the domain, then every byte but the signature."""
        return SIGNING_DOMAIN + self._encoded[:-SIGNATURE_BYTES]

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the encoding: the chain's identity in a ``VerifiedCache``."""
        return hashlib.sha256(self._encoded).digest()

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Capability:
        """The capability ``data`` encodes; ``InvalidCapability`` for anything else."""
        return _decode(bytes(data), 1)


def _decode(data: bytes, depth: int) -> Capability:
    if depth > MAX_CHAIN:
        raise InvalidCapability(f"capability chain longer than {MAX_CHAIN} links")
    if len(data) < _FIXED.size + SIGNATURE_BYTES:
        raise InvalidCapability(f"capability truncated: {len(data)} bytes")
    (
        magic,
        version,
        flags,
        rights,
        reserved,
        target,
        accessor,
        issuer,
        expiry,
        gate_offset,
        gate_length,
        parent_len,
    ) = _FIXED.unpack_from(data)
    if magic != CAP_MAGIC:
        raise InvalidCapability("not a capability (bad magic)")
    if version != CAP_VERSION:
        raise InvalidCapability(f"unknown capability version {version}")
    if flags & ~(_HAS_GATE | _HAS_PARENT) or reserved:
        raise InvalidCapability("unknown capability flags or non-zero reserved byte")
    if not 0 < rights <= _KNOWN_RIGHTS:
        raise InvalidCapability(f"capability rights {rights:#x} are empty or unknown")
    gate = None
    if flags & _HAS_GATE:
        if gate_length == 0 or gate_offset + gate_length > 1 << 64:
            raise InvalidCapability("capability gate is empty or overflows")
        gate = Gate(gate_offset, gate_length)
    elif gate_offset or gate_length:
        raise InvalidCapability("capability without a gate has non-zero gate fields")
    if bool(flags & _HAS_PARENT) != bool(parent_len):
        raise InvalidCapability("capability parent flag and parent length disagree")
    expected = _FIXED.size + parent_len + SIGNATURE_BYTES
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "followed by trailing bytes"
        raise InvalidCapability(f"capability {problem}: {len(data)} bytes, expected {expected}")
    parent = (
        _decode(data[_FIXED.size : _FIXED.size + parent_len], depth + 1) if parent_len else None
    )
    try:
        cap = Capability(
            target=ObjectId(target),
            accessor=ObjectId(accessor),
            rights=_RIGHTS_OF[rights],
            expiry=expiry,
            gate=gate,
            issuer=ObjectId(issuer),
            parent=parent,
            signature=data[-SIGNATURE_BYTES:],
        )
    except (InvalidArgument, FormatError) as exc:  # checked above; kept as a backstop
        raise InvalidCapability(f"malformed capability: {exc}") from exc
    cap.__dict__["_encoded"] = data  # canonical, so it is what encode() would build
    return cap


def _sign(
    signer: Identity,
    target: ObjectId,
    accessor: ObjectId,
    rights: Rights,
    expiry: int,
    gate: Gate | None,
    parent: Capability | None,
) -> Capability:
    unsigned = Capability(
        target=target,
        accessor=accessor,
        rights=rights,
        expiry=expiry,
        gate=gate,
        issuer=signer.kuid,
        parent=parent,
        signature=bytes(SIGNATURE_BYTES),
    )
    return replace(unsigned, signature=signer.sign(unsigned.signed_message))


def grant(
    owner: Identity,
    target: ObjectId,
    accessor: ObjectId,
    rights: Rights,
    expiry: int,
    gate: Gate | None = None,
) -> Capability:
    """A root capability, signed by ``owner``. It verifies only if ``owner`` is the
    key the target's header names as kuid; that is checked by ``verify``, which sees
    the header, not here."""
    return _sign(owner, target, accessor, rights, expiry, gate, None)


def delegate(
    holder: Identity,
    parent: Capability,
    accessor: ObjectId,
    rights: Rights,
    expiry: int,
    gate: Gate | None = None,
) -> Capability:
    """A narrower capability for ``accessor``, signed by ``parent``'s accessor.

    ``gate=None`` keeps the parent's gate. ``InvalidArgument`` when ``holder`` is not
    the parent's accessor, the parent lacks DELEGATE, or the new link would widen
    rights, expiry or gate: the same rules ``verify`` enforces, caught early.
    """
    if holder.kuid != parent.accessor:
        raise InvalidArgument(
            f"{holder.kuid} cannot delegate: the capability is for {parent.accessor}"
        )
    if not parent.rights & Rights.DELEGATE:
        raise InvalidArgument("the capability does not carry DELEGATE")
    if rights & ~parent.rights:
        raise InvalidArgument(
            f"cannot delegate {Rights(rights).names} from a capability with {parent.rights.names}"
        )
    if expiry > parent.expiry:
        raise InvalidArgument(
            f"cannot delegate until {expiry}: the capability expires at {parent.expiry}"
        )
    gate = parent.gate if gate is None else gate
    if not gate_within(gate, parent.gate):
        raise InvalidArgument(
            f"cannot delegate gate {gate}: the capability's gate is {parent.gate}"
        )
    if parent.depth >= MAX_CHAIN:
        raise InvalidArgument(f"a capability chain has at most {MAX_CHAIN} links")
    return _sign(holder, parent.target, accessor, rights, expiry, gate, parent)


class VerifiedCache:
    """Digests of capability links whose signatures (and all above them) were good.

    A bounded LRU. Only signature work is remembered: ``verify`` still checks
    target, accessor, expiry, rights and range every time. Sound because a link's
    digest covers its parent's bytes, and because ``verify`` checks that a looked-up
    key hashes to the issuer kuid, so a signature's validity is a function of the
    bytes alone.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise InvalidArgument("a VerifiedCache holds at least one entry")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, digest: bytes) -> bool:
        with self._lock:
            if digest not in self._entries:
                return False
            self._entries.move_to_end(digest)
            return True

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._entries[digest] = None
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


KeyLookup = Callable[[ObjectId], PublicKey]
"""kuid -> public key. Raise ``KeyError`` or ``ObjectNotFound`` for an unknown key;
other errors (a peer that did not answer, say) pass through ``verify`` unchanged."""


def verify(
    cap: Capability,
    *,
    target: ObjectId,
    accessor_kuid: ObjectId,
    rights_needed: Rights,
    offset: int | None = None,
    length: int | None = None,
    now: int,
    owner_kuid_of_target: ObjectId,
    key_lookup: KeyLookup,
    cache: VerifiedCache | None = None,
) -> None:
    """Raise unless ``cap`` lets ``accessor_kuid`` use ``target`` as asked, at ``now``.

    ``offset``/``length`` name the bytes of the request (both None: the whole
    object); ``owner_kuid_of_target`` is the kuid in the target's header. Raises
    ``InvalidCapability`` for a forged or broken chain, ``CapabilityExpired``, and
    ``AccessDenied`` itself for a good chain that does not cover the request.
    Cheap checks run first, signatures last (and only those ``cache`` lacks).
    """
    if (offset is None) != (length is None) or (offset or 0) < 0 or (length or 0) < 0:
        raise InvalidArgument("give both offset and length (>= 0), or neither")
    if not 0 <= int(rights_needed) <= _KNOWN_RIGHTS:
        raise InvalidArgument(f"unknown rights {rights_needed!r}")
    chain = cap.chain
    if len(chain) > MAX_CHAIN:
        raise InvalidCapability(f"capability chain longer than {MAX_CHAIN} links")
    _check_links(chain, owner_kuid_of_target)
    leaf = chain[-1]
    if leaf.target != target:
        raise AccessDenied(f"the capability is for object {leaf.target}, not {target}")
    if leaf.accessor != accessor_kuid:
        raise AccessDenied(f"the capability is for accessor {leaf.accessor}, not {accessor_kuid}")
    if now >= leaf.expiry:  # links only narrow expiry, so the leaf's is the chain's
        raise CapabilityExpired(f"the capability expired at {leaf.expiry} (now {now})")
    missing = int(rights_needed) & ~int(leaf.rights)
    if missing:
        raise AccessDenied(
            f"the capability grants {leaf.rights.names}, not {_RIGHTS_OF[missing].names}"
        )
    if leaf.gate is not None:
        if offset is None or length is None:
            raise AccessDenied(f"the capability covers only {leaf.gate}, not the whole object")
        if not leaf.gate.covers(offset, length):
            raise AccessDenied(
                f"bytes [{offset:#x}, {offset + length:#x}) are outside "
                f"the capability's gate {leaf.gate}"
            )
    _check_signatures(chain, key_lookup, cache)


def _check_links(chain: tuple[Capability, ...], owner: ObjectId) -> None:
    """Structure of the chain: who signed each link, and that each only narrows."""
    if owner == ZERO_ID:
        raise InvalidCapability("the object is unowned (kuid 0): no capability applies")
    if chain[0].issuer != owner:
        raise InvalidCapability(
            f"the root capability is signed by {chain[0].issuer}, not by the object's owner {owner}"
        )
    n = len(chain)
    for i, (parent, child) in enumerate(pairwise(chain), start=2):
        where = f"link {i} of {n}"
        if child.target != parent.target:
            raise InvalidCapability(f"{where} is for another object than its parent")
        if child.issuer != parent.accessor:
            raise InvalidCapability(
                f"{where} is signed by {child.issuer}, but its parent "
                f"was granted to {parent.accessor}"
            )
        parent_rights = int(parent.rights)
        if not parent_rights & _DELEGATE:
            raise InvalidCapability(f"{where} was delegated from a link without DELEGATE")
        if int(child.rights) & ~parent_rights:
            raise InvalidCapability(
                f"{where} widens rights {parent.rights.names} to {child.rights.names}"
            )
        if child.expiry > parent.expiry:
            raise InvalidCapability(
                f"{where} expires at {child.expiry}, after its parent ({parent.expiry})"
            )
        if not gate_within(child.gate, parent.gate):
            raise InvalidCapability(f"{where} widens gate {parent.gate} to {child.gate}")


def _check_signatures(
    chain: tuple[Capability, ...], key_lookup: KeyLookup, cache: VerifiedCache | None
) -> None:
    # A cached link vouches for every link above it, so walk up from the leaf and stop
    # at the first one the cache knows.
    pending: list[tuple[int, Capability]] = []
    for i in range(len(chain) - 1, -1, -1):
        link = chain[i]
        if cache is not None and cache.hit(link.digest):
            break
        pending.append((i, link))
    for i, link in pending:
        key = _lookup(key_lookup, link.issuer)
        if key.kuid != link.issuer:
            raise InvalidCapability(f"the key found for {link.issuer} is the key of {key.kuid}")
        if not key.verify(link.signature, link.signed_message):
            raise InvalidCapability(
                f"bad signature on link {i + 1} of {len(chain)} (issuer {link.issuer})"
            )
    if cache is not None:
        for _, link in pending:
            cache.add(link.digest)


def _lookup(key_lookup: KeyLookup, kuid: ObjectId) -> PublicKey:
    try:
        return key_lookup(kuid)
    except (KeyError, ObjectNotFound, FormatError) as exc:
        raise InvalidCapability(f"no usable public key for issuer {kuid}: {exc}") from exc


def default_allows(default_prot: Protection | int, rights_needed: Rights | int) -> bool:
    """True when an object's default protections allow ``rights_needed`` without any
    capability (docs/FORMAT.md). DELEGATE is never a default: there is nothing to delegate."""
    needed = int(rights_needed)
    if needed & Rights.DELEGATE:
        return False
    return needed & ~int(default_prot) == 0
