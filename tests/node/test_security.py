"""Security wired into real node processes: signed requests, access checks on every
operation, capabilities (granted, gated, delegated, expired, forged, tampered,
widened, for someone else), replays, and objects owned by their creators.

Every refusal is checked to change nothing: the object's bytes and version stay.
"""

from __future__ import annotations

import dataclasses
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from dtwz.client.api import Client, Op
from dtwz.errors import (
    AccessDenied,
    CapabilityExpired,
    InvalidCapability,
    ObjectNotFound,
    ReplayedRequest,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.access import run_code_object
from dtwz.node.launcher import LocalCluster
from dtwz.security.auth import body_sha256, sign_request
from dtwz.security.capabilities import Capability, Gate, Rights, _sign, delegate, grant
from dtwz.security.keys import Identity
from tests.helpers import running_cluster

PRIVATE = 0  # default protections: nothing without a capability
HOUR = 3600


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(2, tmp_path_factory.mktemp("secure")) as started:
        yield started


@dataclasses.dataclass
class People:
    alice: Identity
    bob: Identity
    carol: Identity


@pytest.fixture(scope="module")
def people(sec: LocalCluster) -> People:
    made = People(Identity.generate("alice"), Identity.generate("bob"), Identity.generate("carol"))
    for who in (made.alice, made.bob, made.carol):
        sec.enroll(who)  # with the admin's consent (docs/SECURITY.md §10)
    return made


def client_as(
    cluster: LocalCluster, who: Identity | None, node: str = "n1", *caps: Capability
) -> Client:
    client = Client(cluster.node(node).url, identity=who, audience=node, timeout=10.0)
    for cap in caps:
        client.add_capability(cap)
    return client


def private_object(cluster: LocalCluster, owner: Identity, home: str = "n1") -> ObjectId:
    with client_as(cluster, owner, home) as client:
        return client.create(16384, b"0123456789abcdef", prot=PRIVATE)


def state(cluster: LocalCluster, oid: ObjectId) -> tuple[bytes, int]:
    with cluster.client("n1") as admin:
        info = admin.info(oid, latest=True)
        return admin.read(oid, DATA_START, 16, latest=True), int(info["version"])


def expiry(seconds: int = HOUR) -> int:
    return int(time.time()) + seconds


def test_a_created_object_is_owned_by_its_creator(sec: LocalCluster, people: People) -> None:
    oid = private_object(sec, people.alice)
    with client_as(sec, people.alice) as alice:
        assert alice.info(oid)["kuid"] == people.alice.kuid.hex()
        assert alice.read(oid, DATA_START, 4) == b"0123"  # the owner needs no capability
    with sec.client("n2") as admin:  # the admin may do anything, from any node
        assert admin.read(oid, DATA_START, 4) == b"0123"


def test_unsigned_and_unknown_requests_are_refused(sec: LocalCluster, people: People) -> None:
    oid = private_object(sec, people.alice)
    before = state(sec, oid)
    with client_as(sec, None) as anonymous:
        assert anonymous.health()["node_id"] == "n1"  # open routes stay open
        with pytest.raises(AccessDenied, match="not signed"):
            anonymous.read(oid)
        with pytest.raises(AccessDenied, match="not signed"):
            anonymous.write(oid, DATA_START, b"nope")
        with pytest.raises(AccessDenied, match="not signed"):
            anonymous.create(8192, b"x")
    assert state(sec, oid) == before


def test_a_request_signed_for_another_node_is_refused(sec: LocalCluster, people: People) -> None:
    with (
        Client(sec.node("n1").url, identity=people.alice, audience="n2") as client,
        pytest.raises(AccessDenied, match="addressed to 'n2'"),
    ):
        client.create(8192, b"x")


def _raw(
    cluster: LocalCluster, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    url = urlsplit(cluster.node("n1").url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_replayed_request_is_refused_and_changes_nothing(
    sec: LocalCluster, people: People
) -> None:
    oid = private_object(sec, people.alice)
    path = f"/objects/{oid.hex()}/data?offset={DATA_START}"
    body = b"first"
    headers = sign_request(people.alice, "PUT", path, body_sha256(body), time.time(), audience="n1")
    assert _raw(sec, "PUT", path, body, headers)[0] == 200
    after_first = state(sec, oid)
    with client_as(sec, people.alice) as alice:
        alice.write(oid, DATA_START, b"later")
    status, answer = _raw(sec, "PUT", path, body, headers)  # the same bytes again
    assert status == 401 and b"ReplayedRequest" in answer
    assert state(sec, oid)[0].startswith(b"later")
    assert state(sec, oid)[1] == after_first[1] + 1
    # a tampered body under the first signature is refused too
    fresh = sign_request(
        people.alice, "PUT", path, body_sha256(b"good"), time.time(), audience="n1"
    )
    status, answer = _raw(sec, "PUT", path, b"evil", fresh)
    assert status == 403 and b"bad request signature" in answer
    # and so is a stale one
    old = sign_request(
        people.alice, "PUT", path, body_sha256(body), time.time() - 600, audience="n1"
    )
    status, answer = _raw(sec, "PUT", path, body, old)
    assert status == 401 and b"ReplayedRequest" in answer
    assert state(sec, oid)[0].startswith(b"later")


# -- every right on every operation ------------------------------------------------------

Operation = Callable[[Client, ObjectId], Any]
OPERATIONS: list[tuple[str, Rights, Operation]] = [
    ("read", Rights.READ, lambda c, o: c.read(o, latest=True)),
    ("read range", Rights.READ, lambda c, o: c.read(o, DATA_START, 4, latest=True)),
    ("info", Rights.READ, lambda c, o: c.info(o, latest=True)),
    ("get image", Rights.READ, lambda c, o: c.get(o, latest=True)),
    ("walk", Rights.READ, lambda c, o: _walk_shows(c, o)),
    ("write", Rights.WRITE, lambda c, o: c.write(o, DATA_START, b"W")),
    ("append", Rights.WRITE, lambda c, o: c.append(o, b"A")),
    ("pointer", Rights.WRITE, lambda c, o: c.write_pointer(o, DATA_START + 8, o)),
    ("transact", Rights.WRITE, lambda c, o: c.transact([Op.write(o, DATA_START, b"T")])),
    ("migrate", Rights.WRITE, lambda c, o: c.migrate([o], "n2")),
]


def _walk_shows(client: Client, oid: ObjectId) -> None:
    """A walk refuses nothing: it shows an object the caller may not read as hidden,
    as it shows a missing one (docs/GRAPH.md)."""
    if client.walk(oid, depth=1).nodes[oid.hex()]["kind"] == "hidden":
        raise ObjectNotFound(f"the walk hides {oid}")


@pytest.mark.parametrize(
    ("name", "needed", "operation"), OPERATIONS, ids=[o[0] for o in OPERATIONS]
)
def test_each_operation_needs_its_right(
    sec: LocalCluster, people: People, name: str, needed: Rights, operation: Operation
) -> None:
    oid = private_object(sec, people.alice)
    other = Rights.WRITE if needed == Rights.READ else Rights.READ
    for caps in ([], [grant(people.alice, oid, people.bob.kuid, other | Rights.EXEC, expiry())]):
        before = state(sec, oid)
        # without any claim to it, bob is answered as for a missing object (403 vs
        # 404 would tell him it exists); with a capability of alice's, he learns why
        refused = AccessDenied if caps and name != "walk" else ObjectNotFound
        with client_as(sec, people.bob, "n2", *caps) as bob, pytest.raises(refused):
            operation(bob, oid)
        assert state(sec, oid) == before, f"{name} refused but changed the object"
    right = grant(people.alice, oid, people.bob.kuid, needed, expiry())
    with client_as(sec, people.bob, "n2", right) as bob:
        operation(bob, oid)


def test_running_code_needs_exec_on_the_code(sec: LocalCluster, people: People) -> None:
    with client_as(sec, people.alice) as alice:
        code = alice.put_code("def size(api, root):\n    return len(api.read(root))\n", "size")
        root = alice.create(8192, b"abc", prot=int(Rights.READ))  # readable by all
    # running code at all is a right the admin grants (docs/SECURITY.md §11)
    with client_as(sec, people.bob) as bob, pytest.raises(AccessDenied, match="run code"):
        bob.run(code, root, where="here")
    may_run = grant(
        sec.admin, run_code_object(sec.admin.kuid, "dtwz"), people.bob.kuid, Rights.EXEC, expiry()
    )
    # no right on the code object: it looks missing to him (docs/SECURITY.md §9)
    with (
        client_as(sec, people.bob, "n1", may_run) as bob,
        pytest.raises((AccessDenied, ObjectNotFound)),
    ):
        bob.run(code, root, where="here")
    read_only = grant(people.alice, code, people.bob.kuid, Rights.READ, expiry())
    with (
        client_as(sec, people.bob, "n1", may_run, read_only) as bob,
        pytest.raises(AccessDenied),
    ):
        bob.run(code, root, where="here")
    runs = grant(people.alice, code, people.bob.kuid, Rights.EXEC, expiry())
    with client_as(sec, people.bob, "n1", may_run, runs) as bob:
        assert bob.run(code, root, where="here")["result"] == 3


def test_default_protections_apply_without_a_capability(sec: LocalCluster, people: People) -> None:
    with client_as(sec, people.alice) as alice:
        readable = alice.create(8192, b"public", prot=int(Rights.READ))
    with client_as(sec, people.bob, "n2") as bob:
        assert bob.read(readable) == b"public"
        with pytest.raises(AccessDenied):
            bob.write(readable, DATA_START, b"x")
    assert state(sec, readable)[0].startswith(b"public")


# -- capabilities --------------------------------------------------------------------


def test_a_gate_limits_the_bytes(sec: LocalCluster, people: People) -> None:
    oid = private_object(sec, people.alice)
    gate = Gate(DATA_START, 8)
    cap = grant(people.alice, oid, people.bob.kuid, Rights.READ | Rights.WRITE, expiry(), gate)
    before = state(sec, oid)
    with client_as(sec, people.bob, "n2", cap) as bob:
        assert bob.read(oid, DATA_START, 8, latest=True) == b"01234567"
        with pytest.raises(AccessDenied, match="gate"):
            bob.read(oid, DATA_START + 4, 8, latest=True)
        with pytest.raises(AccessDenied, match="whole object"):
            bob.read(oid, latest=True)
        with pytest.raises(AccessDenied, match="gate"):
            bob.write(oid, DATA_START + 8, b"x")
        assert state(sec, oid) == before
        bob.write(oid, DATA_START, b"ABCDEFGH")
    assert state(sec, oid)[0] == b"ABCDEFGH89abcdef"


def test_bad_capabilities_are_refused_and_change_nothing(sec: LocalCluster, people: People) -> None:
    oid = private_object(sec, people.alice)
    rw = Rights.READ | Rights.WRITE
    good = grant(people.alice, oid, people.bob.kuid, rw, expiry())
    raw = bytearray(good.encode())
    raw[6] = int(rw | Rights.EXEC)  # rights field, signature unchanged
    tampered = Capability.decode(bytes(raw))
    cases: list[tuple[str, Capability, Identity, type[AccessDenied | ObjectNotFound]]] = [
        (
            "expired",
            grant(people.alice, oid, people.bob.kuid, rw, int(time.time()) - 1),
            people.bob,
            CapabilityExpired,
        ),
        (
            "forged by a non-owner",
            grant(people.bob, oid, people.bob.kuid, rw, expiry()),
            people.bob,
            ObjectNotFound,  # no capability alice signed: to bob, no such object
        ),
        ("tampered", tampered, people.bob, ObjectNotFound),
        ("for someone else", good, people.carol, AccessDenied),
        (
            "for another object",
            grant(people.alice, private_object(sec, people.alice), people.bob.kuid, rw, expiry()),
            people.bob,
            ObjectNotFound,
        ),
    ]
    before = state(sec, oid)
    for what, cap, user, error in cases:
        with client_as(sec, user, "n2", cap) as client:
            with pytest.raises(error):
                client.write(oid, DATA_START, b"changed")
            with pytest.raises(error):
                client.read(oid, latest=True)
        assert state(sec, oid) == before, what


def test_delegation_narrows_and_cannot_widen(sec: LocalCluster, people: People) -> None:
    oid = private_object(sec, people.alice)
    to_bob = grant(people.alice, oid, people.bob.kuid, Rights.READ | Rights.DELEGATE, expiry())
    to_carol = delegate(people.bob, to_bob, people.carol.kuid, Rights.READ, expiry(60))
    with client_as(sec, people.carol, "n2", to_carol) as carol:
        assert carol.read(oid, DATA_START, 4, latest=True) == b"0123"
    # bob signs a link that widens READ to WRITE, bypassing delegate()'s own check
    widened = _sign(
        people.bob, oid, people.carol.kuid, Rights.READ | Rights.WRITE, expiry(60), None, to_bob
    )
    before = state(sec, oid)
    with (
        client_as(sec, people.carol, "n1", widened) as carol,
        pytest.raises(InvalidCapability, match="widens rights"),
    ):
        carol.write(oid, DATA_START, b"widened")
    no_delegate = grant(people.alice, oid, people.bob.kuid, Rights.READ, expiry())
    onward = _sign(people.bob, oid, people.carol.kuid, Rights.READ, expiry(60), None, no_delegate)
    with (
        client_as(sec, people.carol, "n1", onward) as carol,
        pytest.raises(InvalidCapability, match="DELEGATE"),
    ):
        carol.read(oid, latest=True)
    assert state(sec, oid) == before


def test_replay_error_is_a_subclass_users_can_catch() -> None:
    assert issubclass(ReplayedRequest, AccessDenied)


def test_with_security_off_nothing_is_asked(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster(2, "--no-security")
    with client_as(cluster, None, "n1") as anonymous:
        oid = anonymous.create(8192, b"open", prot=PRIVATE)
        assert anonymous.info(oid)["kuid"] == bytes(16).hex()  # created unowned
    with client_as(cluster, None, "n2") as anonymous:  # peers speak without CurveZMQ
        anonymous.write(oid, DATA_START, b"OPEN")
        assert anonymous.read(oid, latest=True) == b"OPEN"
