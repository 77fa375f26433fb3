"""Capabilities: the encoding byte for byte, every way a chain can be wrong, and the cache."""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz.errors import (
    AccessDenied,
    CapabilityExpired,
    InvalidArgument,
    InvalidCapability,
    ObjectNotFound,
    PeerUnavailable,
)
from dtwz.format.ids import ZERO_ID, ObjectId, derive_object_id
from dtwz.format.layout import Protection
from dtwz.security.capabilities import (
    CAP_MAGIC,
    MAX_CHAIN,
    SIGNING_DOMAIN,
    Capability,
    Gate,
    Rights,
    VerifiedCache,
    default_allows,
    delegate,
    gate_within,
    grant,
    verify,
)
from dtwz.security.keys import Identity, PublicKey

OWNER = Identity.from_seed(bytes(range(32)), "owner")
ALICE = Identity.from_seed(bytes(range(1, 33)), "alice")
BOB = Identity.from_seed(bytes(range(2, 34)), "bob")
CAROL = Identity.from_seed(bytes(range(3, 35)), "carol")
MALLORY = Identity.from_seed(bytes(range(4, 36)), "mallory")
KEYS = {i.kuid: i.public_key for i in (OWNER, ALICE, BOB, CAROL, MALLORY)}
TARGET = derive_object_id(bytes(16), OWNER.kuid, 0, 0)
OTHER = derive_object_id(b"\x01" * 16, OWNER.kuid, 0, 0)
NOW = 1_700_000_000
LATER = NOW + 3600
ALL = Rights.READ | Rights.WRITE | Rights.EXEC | Rights.DELEGATE


def check(cap: Capability, **overrides: Any) -> None:
    """verify() with a request the capability is meant to cover, unless overridden."""
    leaf = cap.chain[-1]
    args: dict[str, Any] = {
        "target": TARGET,
        "accessor_kuid": leaf.accessor,
        "rights_needed": Rights.READ,
        "now": NOW,
        "owner_kuid_of_target": OWNER.kuid,
        "key_lookup": KEYS.__getitem__,
    }
    if leaf.gate is not None:
        args.update(offset=leaf.gate.offset, length=leaf.gate.length)
    args.update(overrides)
    verify(cap, **args)


def signed(signer: Identity, **fields: Any) -> Capability:
    """A link signed by ``signer`` with no checks at all: what an attacker can build."""
    base: dict[str, Any] = {
        "target": TARGET,
        "rights": Rights.READ,
        "expiry": LATER,
        "issuer": signer.kuid,
        "signature": bytes(64),
    }
    unsigned = Capability(**{**base, **fields})
    return dataclasses.replace(unsigned, signature=signer.sign(unsigned.signed_message))


def chain3(gate: Gate | None = None) -> Capability:
    """owner -> alice (all) -> bob (r,w,d) -> carol (r)."""
    root = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER + 100, gate)
    middle = delegate(
        ALICE, root, BOB.kuid, Rights.READ | Rights.WRITE | Rights.DELEGATE, LATER + 50
    )
    return delegate(BOB, middle, CAROL.kuid, Rights.READ, LATER)


# --- the encoding -------------------------------------------------------------------------


def reference_encoding(cap: Capability) -> bytes:
    """docs/SECURITY.md §2, written out independently of dtwz.security.capabilities."""
    parent = reference_encoding(cap.parent) if cap.parent else b""
    flags = (1 if cap.gate else 0) | (2 if cap.parent else 0)
    gate = struct.pack("<QQ", cap.gate.offset, cap.gate.length) if cap.gate else bytes(16)
    fixed = (
        b"DCAP"
        + bytes([1, flags, int(cap.rights), 0])
        + cap.target
        + cap.accessor
        + cap.issuer
        + struct.pack("<Q", cap.expiry)
        + gate
        + struct.pack("<I", len(parent))
    )
    assert len(fixed) == 84
    return fixed + parent + cap.signature


def test_encoding_is_the_documented_one() -> None:
    cap = chain3(Gate(0x1000, 0x2000))
    assert cap.encode() == reference_encoding(cap)
    assert len(cap.encode()) == 3 * (84 + 64)
    root = cap.chain[0]
    unsigned = root.encode()[:-64]
    assert OWNER.public_key.verify(root.signature, b"dtwz-capability-v1\x00" + unsigned)
    assert SIGNING_DOMAIN == b"dtwz-capability-v1\x00" and CAP_MAGIC == b"DCAP"


def test_signatures_are_deterministic_and_pinned() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, Rights.READ, 1)
    assert cap.encode()[:84].hex() == (
        "4443415001000100"
        + TARGET.hex()
        + ALICE.kuid.hex()
        + OWNER.kuid.hex()
        + "0100000000000000"
        + "00" * 16
        + "00000000"
    )
    assert grant(OWNER, TARGET, ALICE.kuid, Rights.READ, 1) == cap  # Ed25519 is deterministic


@pytest.mark.parametrize("gate", [None, Gate(0, 1), Gate(0x1000, 1 << 20)])
def test_decode_inverts_encode(gate: Gate | None) -> None:
    for cap in [grant(OWNER, TARGET, ALICE.kuid, ALL, LATER, gate), chain3(gate)]:
        raw = cap.encode()
        decoded = Capability.decode(raw)
        assert decoded == cap
        assert decoded.encode() == raw
        assert dataclasses.replace(decoded).encode() == raw  # rebuilt, not remembered
        check(decoded)


def test_chain_and_depth() -> None:
    cap = chain3()
    assert [link.accessor for link in cap.chain] == [ALICE.kuid, BOB.kuid, CAROL.kuid]
    assert cap.depth == 3 and cap.chain[0].depth == 1


# --- decode rejects anything malformed ----------------------------------------------------


def patch(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


GATED = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER, Gate(0x1000, 16)).encode()
PLAIN = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER).encode()
CHAIN = chain3().encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "truncated"),
        (b"DCAP", "truncated"),
        (PLAIN[:-1], "truncated"),
        (PLAIN + b"\x00", "trailing"),
        (CHAIN[:-1], "truncated"),
        (CHAIN + b"\x00" * 64, "trailing"),
        (b"\x00" * len(PLAIN), "magic"),
        (bytes(range(256)) * 2, "magic"),
        (patch(PLAIN, 0, b"DCAQ"), "magic"),
        (patch(PLAIN, 4, b"\x02"), "version"),
        (patch(PLAIN, 4, b"\x00"), "version"),
        (patch(PLAIN, 5, b"\x04"), "flags"),
        (patch(PLAIN, 7, b"\x01"), "reserved"),
        (patch(PLAIN, 6, b"\x00"), "rights"),
        (patch(PLAIN, 6, b"\x10"), "rights"),
        (patch(PLAIN, 64, b"\x01"), "non-zero gate"),
        (patch(PLAIN, 72, b"\x01"), "non-zero gate"),
        (patch(GATED, 72, bytes(8)), "empty"),
        (patch(GATED, 64, b"\xff" * 8), "overflows"),
        (patch(PLAIN, 5, b"\x02"), "parent flag"),
        (patch(CHAIN, 5, b"\x00"), "parent flag"),
        (patch(CHAIN, 80, struct.pack("<I", 2 * 148 - 1)), "trailing"),
        (patch(CHAIN, 80, struct.pack("<I", 2 * 148 + 1)), "truncated"),
        (patch(CHAIN, 80, struct.pack("<I", 0xFFFFFFFF)), "truncated"),
    ],
)
def test_decode_rejects_malformed_bytes(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidCapability, match=message):
        Capability.decode(raw)


def test_decode_bounds_the_chain_length() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    holders = [ALICE, BOB]
    for i in range(MAX_CHAIN - 1):
        cap = delegate(holders[i % 2], cap, holders[(i + 1) % 2].kuid, ALL, LATER)
    assert cap.depth == MAX_CHAIN
    check(Capability.decode(cap.encode()))
    with pytest.raises(InvalidArgument, match="at most"):
        delegate(holders[MAX_CHAIN % 2 - 1], cap, ALICE.kuid, ALL, LATER)
    # an attacker's hand-made 9-link blob: refused before any recursion limit
    raw = cap.encode()
    deeper = (
        b"DCAP"
        + bytes([1, 2, 1, 0])
        + bytes(48)
        + bytes(8)
        + bytes(16)
        + struct.pack("<I", len(raw))
        + raw
        + bytes(64)
    )
    with pytest.raises(InvalidCapability, match="longer than"):
        Capability.decode(deeper)


@given(st.binary(max_size=600))
def test_decode_of_garbage_raises_only_invalid_capability(raw: bytes) -> None:
    try:
        cap = Capability.decode(raw)
    except InvalidCapability:
        return
    assert cap.encode() == raw


# --- what verify accepts and refuses ------------------------------------------------------


@pytest.mark.parametrize("right", list(Rights.__members__.values())[1:])
def test_each_right_allows_itself_and_nothing_else(right: Rights) -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, right, LATER)
    check(cap, rights_needed=right)
    for other in [Rights.READ, Rights.WRITE, Rights.EXEC, Rights.DELEGATE]:
        if other != right:
            with pytest.raises(AccessDenied, match=f"not {other.name}") as info:
                check(cap, rights_needed=other)
            assert type(info.value) is AccessDenied


def test_combined_rights_cover_any_subset() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, Rights.READ | Rights.WRITE, LATER)
    check(cap, rights_needed=Rights.READ | Rights.WRITE)
    check(cap, rights_needed=Rights.NONE)
    with pytest.raises(AccessDenied, match="not EXEC"):
        check(cap, rights_needed=Rights.READ | Rights.EXEC)


def test_a_three_link_chain_verifies() -> None:
    cap = chain3()
    check(cap)
    with pytest.raises(AccessDenied, match="not WRITE"):
        check(cap, rights_needed=Rights.WRITE)


def test_forged_root_signed_by_someone_else() -> None:
    with pytest.raises(InvalidCapability, match="not by the object's owner"):
        check(grant(MALLORY, TARGET, MALLORY.kuid, ALL, LATER))
    # claiming the owner as issuer does not help: the signature is mallory's
    forged = signed(MALLORY, accessor=MALLORY.kuid, issuer=OWNER.kuid)
    with pytest.raises(InvalidCapability, match="bad signature on link 1"):
        check(forged)


def test_capabilities_for_unowned_objects_are_refused() -> None:
    with pytest.raises(InvalidCapability, match="unowned"):
        check(grant(OWNER, TARGET, ALICE.kuid, ALL, LATER), owner_kuid_of_target=ZERO_ID)


TAMPERS: dict[str, Any] = {
    "target": OTHER,
    "accessor": MALLORY.kuid,
    "rights": ALL,
    "expiry": LATER + 10**6,
    "gate": None,
    "issuer": MALLORY.kuid,
    "signature": MALLORY.sign(b"anything"),
}


@pytest.mark.parametrize("field", sorted(TAMPERS))
@pytest.mark.parametrize("depth", [1, 3])
def test_tampering_with_any_field_is_caught(field: str, depth: int) -> None:
    good = (
        grant(OWNER, TARGET, ALICE.kuid, Rights.READ, LATER, Gate(0x1000, 64))
        if depth == 1
        else chain3(Gate(0x1000, 64))
    )
    bad = dataclasses.replace(good, **{field: TAMPERS[field]})
    assert bad != good
    # ask for exactly what the tampered capability claims, so only signatures can tell
    request: dict[str, Any] = {"target": bad.target}
    if bad.gate is None:
        request.update(offset=None, length=None)
    if field == "issuer" and depth == 1:
        request["owner_kuid_of_target"] = MALLORY.kuid
    with pytest.raises(InvalidCapability):
        check(bad, **request)
    with pytest.raises(InvalidCapability):  # and the same once it has been on the wire
        check(Capability.decode(bad.encode()), **request)


def test_tampering_with_the_embedded_parent_is_caught() -> None:
    good = chain3()
    assert good.parent is not None
    wider_parent = dataclasses.replace(good.parent, expiry=good.parent.expiry + 1)
    with pytest.raises(InvalidCapability, match="bad signature"):
        check(dataclasses.replace(good, parent=wider_parent))
    swapped = dataclasses.replace(good, parent=delegate(ALICE, good.chain[0], BOB.kuid, ALL, LATER))
    with pytest.raises(InvalidCapability, match="bad signature on link 3"):
        check(swapped)


def test_expiry() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    check(cap, now=LATER - 1)
    with pytest.raises(CapabilityExpired, match=f"expired at {LATER}"):
        check(cap, now=LATER)
    with pytest.raises(CapabilityExpired):
        check(chain3(), now=LATER + 10**6)


def test_delegate_refuses_to_widen() -> None:
    root = grant(
        OWNER, TARGET, ALICE.kuid, Rights.READ | Rights.DELEGATE, LATER, Gate(0x1000, 0x100)
    )
    with pytest.raises(InvalidArgument, match=re.escape("cannot delegate READ|WRITE")):
        delegate(ALICE, root, BOB.kuid, Rights.READ | Rights.WRITE, LATER)
    with pytest.raises(InvalidArgument, match="expires at"):
        delegate(ALICE, root, BOB.kuid, Rights.READ, LATER + 1)
    for gate in [Gate(0x1000, 0x101), Gate(0xFFF, 2), Gate(0, 1 << 30)]:
        with pytest.raises(InvalidArgument, match="gate"):
            delegate(ALICE, root, BOB.kuid, Rights.READ, LATER, gate)
    narrower = delegate(ALICE, root, BOB.kuid, Rights.READ, LATER - 1, Gate(0x1080, 0x80))
    check(narrower)
    inherited = delegate(ALICE, root, BOB.kuid, Rights.READ, LATER)
    assert inherited.gate == root.gate


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rights": Rights.READ | Rights.WRITE}, "widens rights"),
        ({"expiry": LATER + 1}, "after its parent"),
        ({"gate": None}, "widens gate"),
        ({"gate": Gate(0x1000, 0x101)}, "widens gate"),
        ({"gate": Gate(0xFFF, 0x10)}, "widens gate"),
    ],
)
def test_verify_refuses_a_hand_made_widening_link(fields: dict[str, Any], message: str) -> None:
    root = grant(
        OWNER, TARGET, ALICE.kuid, Rights.READ | Rights.DELEGATE, LATER, Gate(0x1000, 0x100)
    )
    link = signed(
        ALICE, **{"accessor": BOB.kuid, "gate": Gate(0x1000, 0x10), "parent": root, **fields}
    )
    with pytest.raises(InvalidCapability, match=message):
        check(link, offset=0x1000, length=1, rights_needed=Rights.NONE)


def test_delegation_needs_delegate_in_the_parent() -> None:
    root = grant(OWNER, TARGET, ALICE.kuid, Rights.READ | Rights.WRITE, LATER)
    with pytest.raises(InvalidArgument, match="DELEGATE"):
        delegate(ALICE, root, BOB.kuid, Rights.READ, LATER)
    link = signed(ALICE, accessor=BOB.kuid, parent=root)
    with pytest.raises(InvalidCapability, match="without DELEGATE"):
        check(link)


def test_only_the_parents_accessor_can_delegate() -> None:
    root = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    with pytest.raises(InvalidArgument, match="cannot delegate"):
        delegate(MALLORY, root, MALLORY.kuid, Rights.READ, LATER)
    link = signed(MALLORY, accessor=MALLORY.kuid, parent=root)
    with pytest.raises(InvalidCapability, match=r"signed by .* was granted to"):
        check(link)
    claimed = signed(MALLORY, accessor=MALLORY.kuid, parent=root, issuer=ALICE.kuid)
    with pytest.raises(InvalidCapability, match="bad signature on link 2"):
        check(claimed)


def test_a_link_for_another_object_is_refused() -> None:
    root = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    link = signed(ALICE, target=OTHER, accessor=BOB.kuid, parent=root)
    with pytest.raises(InvalidCapability, match="another object"):
        check(link, target=OTHER)


def test_wrong_accessor_and_wrong_target() -> None:
    cap = chain3()
    with pytest.raises(AccessDenied, match="for accessor") as info:
        check(cap, accessor_kuid=BOB.kuid)
    assert type(info.value) is AccessDenied
    with pytest.raises(AccessDenied, match="is for object") as info:
        check(cap, target=OTHER)
    assert type(info.value) is AccessDenied


def test_byte_ranges_and_gates() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER, Gate(0x1000, 0x100))
    for offset, length in [(0x1000, 0x100), (0x1000, 0), (0x10FF, 1), (0x1100, 0), (0x1080, 8)]:
        check(cap, offset=offset, length=length)
    for offset, length in [(0xFFF, 1), (0x10FF, 2), (0x1100, 1), (0, 1 << 30), (0xFFF, 0x102)]:
        with pytest.raises(AccessDenied, match="outside the capability's gate"):
            check(cap, offset=offset, length=length)
    with pytest.raises(AccessDenied, match="not the whole object"):
        check(cap, offset=None, length=None)
    whole = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    check(whole, offset=0, length=1 << 30)
    check(whole)


def test_bad_request_arguments() -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    for offset, length in [(0, None), (None, 1), (-1, 1), (0, -1)]:
        with pytest.raises(InvalidArgument):
            check(cap, offset=offset, length=length)
    with pytest.raises(InvalidArgument):
        check(cap, rights_needed=16)


def test_unknown_and_lying_keys() -> None:
    cap = chain3()
    missing = {k: v for k, v in KEYS.items() if k != BOB.kuid}
    with pytest.raises(InvalidCapability, match="no usable public key"):
        check(cap, key_lookup=missing.__getitem__)

    def not_found(kuid: ObjectId) -> PublicKey:
        raise ObjectNotFound(str(kuid))

    with pytest.raises(InvalidCapability, match="no usable public key"):
        check(cap, key_lookup=not_found)

    def lying(kuid: ObjectId) -> PublicKey:
        return MALLORY.public_key

    with pytest.raises(InvalidCapability, match="is the key of"):
        check(cap, key_lookup=lying)

    def down(kuid: ObjectId) -> PublicKey:
        raise PeerUnavailable("key home did not answer")

    with pytest.raises(PeerUnavailable):  # a transient failure is not a denial
        check(cap, key_lookup=down)


def test_constructor_validates_fields() -> None:
    good = grant(OWNER, TARGET, ALICE.kuid, ALL, LATER)
    bad: list[tuple[str, Any]] = [
        ("target", b"short"),
        ("rights", 0),
        ("rights", 16),
        ("expiry", -1),
        ("expiry", 1 << 64),
        ("signature", bytes(63)),
        ("gate", (0, 1)),
        ("parent", b"x"),
    ]
    for field, value in bad:
        with pytest.raises(InvalidArgument):
            dataclasses.replace(good, **{field: value})
    with pytest.raises(InvalidArgument):
        grant(OWNER, TARGET, ALICE.kuid, Rights.NONE, LATER)
    with pytest.raises(InvalidArgument):
        grant(OWNER, b"short", ALICE.kuid, ALL, LATER)  # type: ignore[arg-type]


def test_gates() -> None:
    for offset, length in [(-1, 1), (0, 0), (1 << 64, 1), ((1 << 64) - 1, 2)]:
        with pytest.raises(InvalidArgument):
            Gate(offset, length)
    Gate((1 << 64) - 1, 1)
    assert gate_within(None, None) and gate_within(Gate(0, 1), None)
    assert not gate_within(None, Gate(0, 1))
    assert gate_within(Gate(2, 2), Gate(1, 3)) and not gate_within(Gate(2, 3), Gate(1, 3))
    assert str(Gate(0x1000, 0x10)) == "[0x1000, 0x1010)"


def test_rights_helpers() -> None:
    assert Rights.parse("rwxd") == ALL and Rights.parse("R") == Rights.READ
    assert Rights.parse("") == Rights.NONE
    with pytest.raises(InvalidArgument):
        Rights.parse("rq")
    assert (Rights.READ | Rights.EXEC).names == "READ|EXEC" and Rights.NONE.names == "NONE"
    for right in ("READ", "WRITE", "EXEC"):
        assert Rights[right].value == Protection[right].value


@pytest.mark.parametrize(
    ("prot", "needed", "allowed"),
    [
        (Protection.NONE, Rights.READ, False),
        (Protection.NONE, Rights.NONE, True),
        (Protection.READ, Rights.READ, True),
        (Protection.READ, Rights.WRITE, False),
        (Protection.READ, Rights.READ | Rights.WRITE, False),
        (Protection.READ | Protection.WRITE, Rights.READ | Rights.WRITE, True),
        (Protection.EXEC, Rights.EXEC, True),
        (Protection.READ | Protection.WRITE | Protection.EXEC, Rights.DELEGATE, False),
        (Protection.READ | Protection.WRITE | Protection.EXEC, ALL & ~Rights.DELEGATE, True),
        (7, 1, True),
    ],
)
def test_default_protections(prot: Protection, needed: Rights, allowed: bool) -> None:
    assert default_allows(prot, needed) is allowed


# --- the verified-signature cache ---------------------------------------------------------


class CountingKeys:
    def __init__(self) -> None:
        self.lookups = 0

    def __call__(self, kuid: ObjectId) -> PublicKey:
        self.lookups += 1
        return KEYS[kuid]


def test_a_cached_chain_skips_signature_work_only() -> None:
    cache, keys = VerifiedCache(), CountingKeys()
    cap = chain3(Gate(0x1000, 0x100))
    check(cap, key_lookup=keys, cache=cache)
    assert keys.lookups == 3 and len(cache) == 3
    check(cap, key_lookup=keys, cache=cache)
    check(Capability.decode(cap.encode()), key_lookup=keys, cache=cache)
    assert keys.lookups == 3
    with pytest.raises(CapabilityExpired):
        check(cap, key_lookup=keys, cache=cache, now=LATER)
    with pytest.raises(AccessDenied, match="not WRITE"):
        check(cap, key_lookup=keys, cache=cache, rights_needed=Rights.WRITE)
    with pytest.raises(AccessDenied, match="outside"):
        check(cap, key_lookup=keys, cache=cache, offset=0x1100, length=1)
    with pytest.raises(AccessDenied, match="for accessor"):
        check(cap, key_lookup=keys, cache=cache, accessor_kuid=BOB.kuid)
    with pytest.raises(InvalidCapability, match="not by the object's owner"):
        check(cap, key_lookup=keys, cache=cache, owner_kuid_of_target=MALLORY.kuid)


def test_a_new_leaf_under_a_cached_chain_costs_one_signature() -> None:
    cache, keys = VerifiedCache(), CountingKeys()
    cap = chain3()
    check(cap, key_lookup=keys, cache=cache)
    assert cap.parent is not None
    sibling = delegate(BOB, cap.parent, ALICE.kuid, Rights.WRITE, LATER)
    check(sibling, key_lookup=keys, cache=cache, rights_needed=Rights.WRITE)
    assert keys.lookups == 4


def test_the_cache_never_vouches_for_a_tampered_chain() -> None:
    cache = VerifiedCache()
    cap = chain3()
    check(cap, cache=cache)
    for bad in [
        dataclasses.replace(cap, rights=Rights.READ | Rights.WRITE),
        dataclasses.replace(cap, signature=bytes(64)),
    ]:
        with pytest.raises(InvalidCapability, match="bad signature"):
            check(bad, cache=cache, rights_needed=Rights.READ)


def test_a_failed_check_caches_nothing() -> None:
    cache = VerifiedCache()
    cap = chain3()
    bad = dataclasses.replace(cap.chain[0], signature=bytes(64))
    assert cap.parent is not None
    forged = dataclasses.replace(cap, parent=dataclasses.replace(cap.parent, parent=bad))
    with pytest.raises(InvalidCapability):
        check(forged, cache=cache)
    assert len(cache) == 0


def test_the_cache_is_a_bounded_lru() -> None:
    cache = VerifiedCache(max_entries=2)
    cache.add(b"a")
    cache.add(b"b")
    assert cache.hit(b"a")  # now b is the least recently used
    cache.add(b"c")
    assert len(cache) == 2 and not cache.hit(b"b") and cache.hit(b"a") and cache.hit(b"c")
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(InvalidArgument):
        VerifiedCache(0)


# --- no mutation of a capability's bytes is ever accepted ---------------------------------

GOOD_ROOT = grant(
    OWNER,
    TARGET,
    ALICE.kuid,
    Rights.READ | Rights.WRITE | Rights.DELEGATE,
    LATER,
    Gate(0x1000, 0x1000),
)
GOOD_CHAIN = chain3(Gate(0x1000, 0x1000))
SAMPLES = [GOOD_ROOT.encode(), GOOD_CHAIN.encode()]


def accepts(raw: bytes, cache: VerifiedCache | None = None) -> bool:
    """decode + verify for the most the mutated blob could claim; only AccessDenied may fly."""
    try:
        cap = Capability.decode(raw)
        leaf = cap.chain[-1]
        gate = leaf.gate
        verify(
            cap,
            target=leaf.target,
            accessor_kuid=leaf.accessor,
            rights_needed=leaf.rights,
            offset=gate.offset if gate else None,
            length=gate.length if gate else None,
            now=NOW,
            owner_kuid_of_target=OWNER.kuid,
            key_lookup=KEYS.__getitem__,
            cache=cache,
        )
    except AccessDenied:
        return False
    return True


def test_the_unmutated_samples_are_accepted() -> None:
    assert all(accepts(raw) for raw in SAMPLES)


Mutation = Callable[[bytes], bytes]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[bytes, bytes]:
    raw = draw(st.sampled_from(SAMPLES))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "byte"]))
    if kind == "flip":
        bit = draw(st.integers(0, 8 * len(raw) - 1))
        mutated = patch(raw, bit // 8, bytes([raw[bit // 8] ^ (1 << (bit % 8))]))
    elif kind == "truncate":
        mutated = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        mutated = raw + draw(st.binary(min_size=1, max_size=200))
    elif kind == "splice":
        at = draw(st.integers(0, len(raw)))
        mutated = raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    else:
        at = draw(st.integers(0, len(raw) - 1))
        value = draw(st.integers(0, 255).filter(lambda v: v != raw[at]))
        mutated = patch(raw, at, bytes([value]))
    return raw, mutated


SHARED_CACHE = VerifiedCache()
for _raw in SAMPLES:
    assert accepts(_raw, SHARED_CACHE)  # the cache holds the genuine chains' digests


@settings(max_examples=500, deadline=None)
@given(mutations())
def test_no_mutation_is_accepted(case: tuple[bytes, bytes]) -> None:
    original, mutated = case
    assert mutated != original
    assert not accepts(mutated)
    assert not accepts(mutated, SHARED_CACHE)


@settings(max_examples=60, deadline=None)
@given(
    rights=st.integers(1, 15),
    expiry=st.integers(0, (1 << 64) - 1),
    gate=st.none() | st.tuples(st.integers(0, 1 << 40), st.integers(1, 1 << 40)),
)
def test_random_grants_round_trip(rights: int, expiry: int, gate: tuple[int, int] | None) -> None:
    cap = grant(OWNER, TARGET, ALICE.kuid, Rights(rights), expiry, Gate(*gate) if gate else None)
    raw = cap.encode()
    assert raw == reference_encoding(cap)
    assert Capability.decode(raw) == cap
