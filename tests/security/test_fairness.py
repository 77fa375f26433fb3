"""Per-key fairness: the nonce memory and the session table are bounded per key, so
no key can push out another's entries nor make another's requests fail as too old;
and both still fail closed (nothing is ever accepted twice). The node's side:
tests/node/test_authentication.py."""

from __future__ import annotations

import asyncio
import os

import pytest

from dtwz.errors import (
    AccessDenied,
    InvalidArgument,
    NodeBusy,
    ObjectNotFound,
    ReplayedRequest,
    UnknownSession,
)
from dtwz.format.ids import ObjectId
from dtwz.node.access import MAX_UNPROVED_LOADS, UNKNOWN_FOR, KeyRing
from dtwz.security.auth import (
    NonceMemory,
    RequestVerifier,
    SessionTable,
    SignedHeaders,
    body_sha256,
    client_session_keys,
    sign_request,
)
from dtwz.security.keys import Identity

NOW = 1_700_000_000
PATH = "/objects/0123456789abcdef0123456789abcdef/data"
DIGEST = body_sha256(b"")
ALICE = Identity.from_seed(bytes(range(1, 33)), "alice")
MALLORY = Identity.from_seed(bytes(range(3, 35)), "mallory")
KEYS = {i.kuid: i.public_key for i in (ALICE, MALLORY)}


def key(n: int) -> bytes:
    return n.to_bytes(16, "big")


def entry(owner: bytes, n: int) -> bytes:
    return owner + n.to_bytes(16, "big")


def put(memory: NonceMemory, owner: bytes, n: int, ts: int, now: int = NOW) -> None:
    memory.check(owner, entry(owner, n), ts, now)
    memory.remember(owner, entry(owner, n), ts, now)


def flood(memory: NonceMemory, owner: bytes, count: int, ts: int = NOW) -> int:
    """``count`` requests of one key within one second; how many were refused (its
    own floor rises once its share is full: its problem, nobody else's)."""
    refused = 0
    for n in range(count):
        try:
            put(memory, owner, n, ts)
        except ReplayedRequest:
            refused += 1
    return refused


# -- the nonce memory -------------------------------------------------------------------


def test_one_key_flooding_stays_within_its_share_and_others_are_untouched() -> None:
    memory = NonceMemory(60, max_nonces=1000, per_key=100)
    alice, mallory = key(1), key(2)
    put(memory, alice, 0, NOW - 30)  # an old request of alice's, still in the window
    assert flood(memory, mallory, 5000) > 0
    assert memory.held_by(mallory) == 100 and memory.held_by(alice) == 1
    with pytest.raises(ReplayedRequest, match="used before"):  # alice's is remembered
        memory.check(alice, entry(alice, 0), NOW - 30, NOW)
    put(memory, alice, 1, NOW - 59)  # and alice's oldest-allowed requests still pass
    with pytest.raises(ReplayedRequest, match="too old"):  # mallory's own floor rose
        memory.check(mallory, entry(mallory, 99_999), NOW - 1, NOW)


def test_many_keys_at_the_global_bound_trim_the_largest_first() -> None:
    memory = NonceMemory(60, max_nonces=100, per_key=50)
    alice = key(0)
    put(memory, alice, 0, NOW - 50)
    for flooder in range(1, 6):  # five keys of 50 each: 250 > 100
        flood(memory, key(flooder), 50)
    assert len(memory) <= 100
    assert memory.held_by(alice) == 1  # within its fair share: never trimmed
    with pytest.raises(ReplayedRequest, match="used before"):
        memory.check(alice, entry(alice, 0), NOW - 50, NOW)
    put(memory, alice, 1, NOW - 55)  # its floor did not move


def test_a_key_dropped_as_a_whole_still_refuses_its_replays() -> None:
    memory = NonceMemory(60, max_nonces=1000, per_key=100, max_keys=3)
    for k in range(4):  # the fourth key pushes out the least recently used, key 0
        put(memory, key(k), 0, NOW - 10 + k)
    assert memory.keys_tracked() == 3 and memory.held_by(key(0)) == 0
    with pytest.raises(ReplayedRequest):  # its nonce is forgotten; its floor is not
        memory.check(key(0), entry(key(0), 0), NOW - 10, NOW)
    put(memory, key(0), 1, NOW - 5)  # newer than its floor: fine
    put(memory, key(9), 0, NOW - 50)  # a key never seen is not held back by others
    for k in (1, 2, 3):
        with pytest.raises(ReplayedRequest):
            memory.check(key(k), entry(key(k), 0), NOW - 10 + k, NOW)


def test_only_an_overflow_of_dropped_keys_holds_back_keys_not_tracked() -> None:
    """The last resort fails closed: with more keys dropped within a window than the
    retired table holds, keys not tracked are refused below the lost floors."""
    memory = NonceMemory(60, max_nonces=1000, per_key=10, max_keys=1, max_retired=1)
    for k in range(3):
        put(memory, key(k), 0, NOW - 20 + k)
    for k in range(3):
        with pytest.raises(ReplayedRequest):
            memory.check(key(k), entry(key(k), 0), NOW - 20 + k, NOW)
    with pytest.raises(ReplayedRequest, match="too old"):
        memory.check(key(7), entry(key(7), 0), NOW - 30, NOW)
    put(memory, key(7), 0, NOW)  # a fresh request still passes


def test_keys_whose_nonces_all_left_the_window_are_dropped() -> None:
    memory = NonceMemory(60, max_nonces=1000, per_key=100)
    for k in range(10):
        put(memory, key(k), 0, NOW)
    put(memory, key(99), 0, NOW + 100, now=NOW + 100)
    assert memory.keys_tracked() == 1 and len(memory) == 1
    with pytest.raises(ReplayedRequest):  # a clock stepping back reopens nothing
        memory.check(key(3), entry(key(3), 0), NOW, NOW)


def test_bounds_are_checked() -> None:
    with pytest.raises(InvalidArgument):
        NonceMemory(60, per_key=0)
    with pytest.raises(InvalidArgument):
        NonceMemory(60, max_keys=0)


# -- the verifier: check from the headers, accept with the body --------------------------


def test_check_needs_headers_only_and_accept_checks_the_signature() -> None:
    verifier = RequestVerifier(audience="n1")
    headers = sign_request(ALICE, "PUT", PATH, DIGEST, NOW, audience="n1")
    signed = SignedHeaders.parse(headers)
    verifier.check(signed, NOW)  # no key, no body
    assert len(verifier) == 0  # nothing remembered yet
    with pytest.raises(AccessDenied, match="bad request signature"):
        verifier.accept(signed, "PUT", PATH, body_sha256(b"other"), NOW, ALICE.public_key)
    assert verifier.accept(signed, "PUT", PATH, DIGEST, NOW, ALICE.public_key) == ALICE.kuid
    with pytest.raises(ReplayedRequest):
        verifier.check(signed, NOW)


def test_one_signer_flooding_does_not_make_anothers_requests_too_old() -> None:
    verifier = RequestVerifier(max_nonces=200, per_key=50)
    early = sign_request(ALICE, "GET", PATH, DIGEST, NOW - 40)
    for i in range(300):
        verifier.verify(
            sign_request(MALLORY, "GET", PATH, DIGEST, NOW - 50 + i // 10),
            "GET",
            PATH,
            DIGEST,
            NOW,
            KEYS.__getitem__,
        )
    assert verifier.nonces.held_by(bytes(MALLORY.kuid)) == 50
    assert verifier.verify(early, "GET", PATH, DIGEST, NOW, KEYS.__getitem__) == ALICE.kuid


@pytest.mark.parametrize("header", ["X-Dtwz-Key", "X-Dtwz-Signature"])
def test_the_not_signed_error_says_what_to_do(header: str) -> None:
    headers = sign_request(ALICE, "GET", PATH, DIGEST, NOW)
    del headers[header]
    with pytest.raises(AccessDenied, match="not signed") as refused:
        SignedHeaders.parse(headers)
    assert "DTWZ_IDENTITY" in str(refused.value) and "SECURITY.md" in str(refused.value)


# -- sessions ---------------------------------------------------------------------------


def _open(table: SessionTable, owner: ObjectId, now: float = NOW) -> ObjectId:
    return table.open(owner, client_session_keys()[1], "n1", now)[0]


def test_an_owner_flooding_sessions_replaces_only_its_own() -> None:
    table = SessionTable(max_sessions=1000, per_owner=4)
    alice, mallory = ObjectId(key(1)), ObjectId(key(2))
    mine = _open(table, alice)
    theirs = [_open(table, mallory) for _ in range(50)]
    assert table.held_by(mallory) == 4 and table.held_by(alice) == 1
    assert table.lookup(mine, NOW).owner == alice
    for session in theirs[:-4]:
        with pytest.raises(UnknownSession):
            table.lookup(session, NOW)
    assert all(table.lookup(s, NOW).owner == mallory for s in theirs[-4:])


def test_at_the_global_bound_the_owner_holding_most_gives_way() -> None:
    table = SessionTable(max_sessions=10, per_owner=4)
    alice = ObjectId(key(0))
    mine = _open(table, alice)
    for flooder in range(1, 6):
        for _ in range(4):
            _open(table, ObjectId(key(flooder)))
    assert len(table) == 10
    assert table.lookup(mine, NOW).owner == alice


def test_expired_sessions_go_first() -> None:
    table = SessionTable(max_sessions=3, per_owner=3, ttl=10)
    old = [_open(table, ObjectId(key(k)), NOW) for k in range(3)]
    late = _open(table, ObjectId(key(9)), NOW + 20)  # the table is full of expired ones
    assert table.lookup(late, NOW + 20)
    assert len(table) == 1
    for session in old:
        with pytest.raises(UnknownSession):
            table.lookup(session, NOW + 20)


LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.mark.parametrize("public", LOW_ORDER, ids=lambda b: b.hex()[:8])
def test_a_low_order_key_opens_no_session(public: bytes) -> None:
    table = SessionTable()
    with pytest.raises(InvalidArgument, match="X25519"):
        table.open(ObjectId(key(1)), public, "n1", NOW)
    assert len(table) == 0


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_a_key_of_the_wrong_size_opens_no_session(size: int) -> None:
    with pytest.raises(InvalidArgument, match="32-byte"):
        SessionTable().open(ObjectId(key(1)), os.urandom(size), "n1", NOW)


# -- the key ring: made-up keys cost little --------------------------------------------


async def test_a_made_up_key_is_looked_up_once_in_a_while() -> None:
    reads: list[ObjectId] = []
    clock = [100.0]

    async def read(kuid: ObjectId) -> bytes:
        reads.append(kuid)
        raise ObjectNotFound(f"no object {kuid}")

    ring = KeyRing({}, read, clock=lambda: clock[0])
    made_up = ObjectId(key(7))
    for _ in range(10):
        assert not await ring.load(made_up, unproved=True)
    assert reads == [made_up]  # once, then remembered
    assert not await ring.load(made_up)  # an authenticated caller asks afresh
    assert len(reads) == 2
    clock[0] += UNKNOWN_FOR + 1
    assert not await ring.load(made_up, unproved=True)
    assert len(reads) == 3
    ring.add(ALICE.public_key)  # enrolled meanwhile: known at once
    assert await ring.load(ALICE.kuid, unproved=True)


async def test_lookups_for_unproved_requests_are_bounded() -> None:
    gate = asyncio.Event()

    async def read(kuid: ObjectId) -> bytes:
        await gate.wait()
        raise ObjectNotFound(f"no object {kuid}")

    ring = KeyRing({}, read)
    waiting = [
        asyncio.create_task(ring.load(ObjectId(key(n)), unproved=True))
        for n in range(MAX_UNPROVED_LOADS)
    ]
    await asyncio.sleep(0)
    with pytest.raises(NodeBusy):
        await ring.load(ObjectId(key(999)), unproved=True)
    gate.set()
    assert not any(await asyncio.gather(*waiting))
    assert not await ring.load(ObjectId(key(999)), unproved=True)  # room again
