"""Code at the data against real node processes: it runs with its caller's rights,
never the node's (docs/SECURITY.md §11).

A 2-node cluster with security on, whose code calls get at most 3 CPU seconds,
256 MiB and a 30 s time limit. Alice holds the right to run code (granted by the
admin), mallory does not. What must hold: without the right nothing runs; with it,
a function reads, writes and maps only what its caller may, on the node asked and
on the node the run is sent to; it cannot open the node's keys or store files nor
reach the network; one caller's long call does not hold another's short one;
runaway functions are stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz.client.api import Client
from dtwz.errors import (
    AccessDenied,
    CapabilityExpired,
    CodeError,
    CodeTimeout,
    InvalidArgument,
    InvalidCapability,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.access import run_code_object
from dtwz.node.launcher import LocalCluster
from dtwz.security import keyfiles
from dtwz.security.auth import decode_capability_header
from dtwz.security.capabilities import Capability, Gate, Rights, grant
from dtwz.security.keys import Identity
from tests.cli.helpers import run_script
from tests.helpers import running_cluster

HOUR = 3600
NODE_ARGS = ("--code-cpu", "3", "--code-memory", str(256 << 20), "--code-max-timeout", "30")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(2, tmp_path_factory.mktemp("code"), *NODE_ARGS) as started:
        yield started


@pytest.fixture(scope="module")
def people(cluster: LocalCluster) -> dict[str, Identity]:
    made = {name: Identity.generate(name) for name in ("alice", "mallory")}
    enroll = getattr(cluster, "enroll", None)  # with the admin's consent, where it is needed
    for who in made.values():
        if enroll is not None:
            enroll(who)
    return made


def run_right(cluster: LocalCluster, who: Identity, expires: int = HOUR) -> Capability:
    """The right to run code on the cluster, as the admin grants it."""
    admin = cluster.admin
    target = run_code_object(admin.kuid, "dtwz")
    return grant(admin, target, who.kuid, Rights.EXEC, int(time.time()) + expires)


def client_as(cluster: LocalCluster, who: Identity, node: str = "n1", *caps: Capability) -> Client:
    client = Client(cluster.node(node).url, identity=who, audience=node, timeout=30.0)
    for cap in caps:
        client.add_capability(cap)
    return client


@pytest.fixture(scope="module")
def alice(cluster: LocalCluster, people: dict[str, Identity]) -> Iterator[Client]:
    with client_as(cluster, people["alice"], "n1", run_right(cluster, people["alice"])) as c:
        yield c


def private(cluster: LocalCluster, data: bytes, home: str = "n1") -> ObjectId:
    """An object of the admin's that nobody else may use (default protections 0)."""
    with cluster.client(home) as admin:
        return admin.create(16384, data, prot=0)


def state(cluster: LocalCluster, oid: ObjectId) -> tuple[bytes, int]:
    with cluster.client("n1") as admin:
        info = admin.info(oid, latest=True)
        return admin.read(oid, DATA_START, 16, latest=True), int(info["version"])


# -- the functions ------------------------------------------------------------------------------

MARK = """
def mark(api, root):
    api.append(root, b"ran")
    return "ran"
"""

STEAL = """
def steal(api, root, victim, how):
    if how == "read":
        return api.read(victim).hex()
    if how == "get":
        return api.get(victim).read(0x1000, 16).hex()
    if how == "write":
        return api.write(victim, 0x1000, b"pwned")
    if how == "follow":
        return api.get(root).follow(api.get(root).read_u64(0x1000))[0].read(0x1000, 8).hex()
    if how == "run":
        return api.run(root, root)
    if how == "session":
        return api._channel.call("POST", "/session", body=b"x" * 32).json()
    if how == "oversized":
        return api._channel.call("POST", "/names/bind", body=b"[" * (4 << 20)).json()
    raise ValueError(how)
"""

ESCAPE = """
def escape(api, root, paths, port):
    import os
    import socket

    out = {"uid": os.getuid()}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
            out[path] = "opened"
        except OSError as exc:
            out[path] = type(exc).__name__
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.close()
        out["network"] = "connected"
    except OSError as exc:
        out["network"] = type(exc).__name__
    out["own"] = api.read(root, 0x1000, 4).decode()
    return out
"""

RANGE = """
def ranges(api, root, victim):
    out = {"range": api.read(victim, 0x1000, 4).decode()}
    try:
        api.get(victim)
        out["whole"] = "mapped"
    except Exception as exc:
        out["whole"] = type(exc).__name__
    return out
"""

NAP = """
def nap(api, root, seconds):
    import time
    time.sleep(seconds)
    return seconds
"""

SPIN = """
def spin(api, root):
    while True:
        pass
"""

HOG = """
def hog(api, root, mib):
    return len(bytearray(mib << 20))
"""


# -- who may run code at all ----------------------------------------------------------------------


def test_running_code_is_a_right_the_admin_grants(
    cluster: LocalCluster, people: dict[str, Identity]
) -> None:
    mallory = people["mallory"]
    with client_as(cluster, mallory) as own:
        code = own.put_code(MARK, "mark")  # her code, her root: EXEC and READ are hers
        root = own.create(16384, b"root", prot=0)
    before = state(cluster, root)
    with client_as(cluster, mallory) as refused, pytest.raises(AccessDenied) as info:
        refused.run(code, root, where="here")
    message = str(info.value)
    assert "may not run code on this cluster" in message
    assert f"dtwz cap grant run-code --to {mallory.kuid}" in message
    # a right to run code that the admin did not sign, or that expired, is no right
    forged = grant(
        mallory,
        run_code_object(cluster.admin.kuid, "dtwz"),
        mallory.kuid,
        Rights.EXEC,
        int(time.time()) + HOUR,
    )
    expired = run_right(cluster, mallory, expires=-1)
    for cap, error in ((forged, InvalidCapability), (expired, CapabilityExpired)):
        with client_as(cluster, mallory, "n2", cap) as refused, pytest.raises(error):
            refused.run(code, root, where="n1")
    assert state(cluster, root) == before  # nothing ran
    # granted by the admin: it runs, on the node asked or on another
    with client_as(cluster, mallory, "n2", run_right(cluster, mallory)) as granted:
        assert granted.run(code, root, where="n1")["result"] == "ran"
    assert state(cluster, root) != before


# -- the caller's rights, not the node's ------------------------------------------------------


@pytest.mark.parametrize("how", ["read", "get", "write", "follow"])
@pytest.mark.parametrize("where", ["n1", "n2"])
def test_code_cannot_use_what_its_caller_may_not(
    cluster: LocalCluster, alice: Client, how: str, where: str
) -> None:
    """The admin's private object lives on the node that runs the code (n1): the node
    may read it, the function (alice's) may not, whether alice asked n1 or n2 (which
    sends the run to n1 with her identity)."""
    victim = private(cluster, b"the admin's secret")
    before = state(cluster, victim)
    code = alice.put_code(STEAL, "steal", node="n1")
    root = alice.create(16384, b"", node="n1")
    alice.write_pointer(root, DATA_START, victim)  # her object may point anywhere
    assert alice.identity is not None
    asked = (
        contextlib.nullcontext(alice)
        if where == "n1"
        else client_as(cluster, alice.identity, "n2", *alice_caps(cluster, alice))
    )
    with (
        asked as client,
        pytest.raises(CodeError, match=r"steal raised (AccessDenied|ObjectNotFound)"),
    ):
        client.run(code, root, victim.hex(), how, where="n1")
    assert state(cluster, victim) == before


def alice_caps(cluster: LocalCluster, alice: Client) -> list[Capability]:
    assert alice.identity is not None
    return [run_right(cluster, alice.identity)]


def test_code_cannot_open_the_nodes_files_nor_reach_the_network(
    cluster: LocalCluster, alice: Client
) -> None:
    root = alice.create(16384, b"mine", node="n1")
    data_dir = Path(cluster.node("n1").data_dir)
    keys = Path(cluster.keys_dir)
    store = data_dir / "store"
    victim = private(cluster, b"secret")
    hexid = victim.hex()
    paths = [
        str(keys / "admin.id"),
        str(keys / "node-n1.id"),
        str(keys / "admitted.json"),
        str(store / "STORE"),
        str(store / "objects" / hexid[:2] / hexid),
        str(store / "objects" / root.hex()[:2] / root.hex()),  # even her own object's file
    ]
    port = int(cluster.node("n1").url.rsplit(":", 1)[1])
    code = alice.put_code(ESCAPE, "escape", node="n1")
    result = alice.run(code, root, paths, port, where="n1")["result"]
    assert result.pop("own") == "mine"  # what she may read, she reads: through the node
    assert result.pop("uid") != 0
    assert result == {**{p: "PermissionError" for p in paths}, "network": "PermissionError"}


def test_a_gated_capability_gets_its_range_not_the_object(
    cluster: LocalCluster, alice: Client
) -> None:
    victim = private(cluster, b"open|secret")
    assert alice.identity is not None
    gate = grant(
        cluster.admin,
        victim,
        alice.identity.kuid,
        Rights.READ,
        int(time.time()) + HOUR,
        Gate(DATA_START, 4),
    )
    root = alice.create(16384, b"", node="n1")
    with client_as(cluster, alice.identity, "n1", *alice_caps(cluster, alice), gate) as gated:
        code = gated.put_code(RANGE, "ranges", node="n1")
        result = gated.run(code, root, victim.hex(), where="n1")["result"]
    assert result == {"range": "open", "whole": "AccessDenied"}


def test_a_call_cannot_act_beyond_itself(cluster: LocalCluster, alice: Client) -> None:
    """No sessions (they would outlive the call), no further runs."""
    root = alice.create(16384, b"", node="n1")
    code = alice.put_code(STEAL, "steal", node="n1")
    for how in ("session", "run"):
        with pytest.raises(CodeError, match="steal raised"):
            alice.run(code, root, root.hex(), how, where="n1")


def test_a_calls_bodies_have_the_routes_limits(cluster: LocalCluster, alice: Client) -> None:
    """A body past its route's limit is refused on a call's channel as on the port."""
    root = alice.create(16384, b"", node="n1")
    code = alice.put_code(STEAL, "steal", node="n1")
    with pytest.raises(CodeError, match="RequestTooLarge"):
        alice.run(code, root, root.hex(), "oversized", where="n1")


# -- sharing and limits ---------------------------------------------------------------------------


def test_a_long_call_does_not_hold_another_callers_short_one(
    cluster: LocalCluster, alice: Client
) -> None:
    root = alice.create(16384, b"", node="n1")
    code = alice.put_code(NAP, "nap", node="n1")
    with cluster.client("n1") as admin:
        admin_code = admin.put_code(NAP, "nap", node="n1")
        admin_root = admin.create(16384, b"", node="n1")
        admin.run(admin_code, admin_root, 0, where="n1")  # a warm worker
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            longs = [pool.submit(alice.run, code, root, 6, where="n1") for _ in range(2)]
            time.sleep(1.0)
            started = time.monotonic()
            assert admin.run(admin_code, admin_root, 0, where="n1")["result"] == 0
            waited = time.monotonic() - started
            assert [f.result()["result"] for f in longs] == [6, 6]
    assert waited < 4, f"the admin's short call waited {waited:.1f}s behind alice's"


def test_runaway_functions_are_stopped(cluster: LocalCluster, alice: Client) -> None:
    root = alice.create(16384, b"", node="n1")
    spin = alice.put_code(SPIN, "spin", node="n1")
    started = time.monotonic()
    with pytest.raises(CodeTimeout, match="CPU time limit of 3s"):
        alice.run(spin, root, where="n1", timeout=30)
    assert time.monotonic() - started < 20
    hog = alice.put_code(HOG, "hog", node="n1")
    with pytest.raises(CodeError, match="MemoryError"):
        alice.run(hog, root, 512, where="n1")
    assert alice.run(hog, root, 16, where="n1")["result"] == 16 << 20
    with pytest.raises(InvalidArgument, match=r"in \(0, 30\]"):
        alice.run(hog, root, 1, where="n1", timeout=31)


def test_the_admin_grants_the_right_from_the_command_line(
    cluster: LocalCluster, people: dict[str, Identity]
) -> None:
    mallory = people["mallory"]
    admin_file = keyfiles.admin_identity_file(cluster.keys_dir)
    args = ("cap", "grant", "run-code", "--to", mallory.kuid.hex(), "--rights", "x")
    made = run_script(*args, "--identity", str(admin_file), "--json")
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["target"] == run_code_object(cluster.admin.kuid, "dtwz").hex()
    cap = decode_capability_header(doc["capability"])
    with client_as(cluster, mallory, "n1", cap) as granted:
        code = granted.put_code(NAP, "nap")
        root = granted.create(16384, b"")
        assert granted.run(code, root, 0, where="here")["result"] == 0
    # signed by anyone but the admin, it grants nothing
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mallory.id"
        mallory.save(path)
        forged = run_script(*args, "--identity", str(path))
        assert forged.returncode == 0, forged.stderr
    cap = decode_capability_header(forged.stdout.strip())  # x on her own "run-code" object
    with (
        client_as(cluster, mallory, "n1", cap) as refused,
        pytest.raises(AccessDenied, match="may not run code"),
    ):
        refused.run(code, root, 0, where="here")
