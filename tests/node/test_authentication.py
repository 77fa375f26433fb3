"""Authentication before work, against real node processes (docs/SECURITY.md §9):
what the headers tell is checked before any of a body is read; bodies are bounded
in size, time and number; an unsigned or unknown key makes a node fetch, copy and
count nothing; one key's flood of sessions leaves another's alone; bad inputs get
a 4xx; a node's store is its user's alone; a refused read counts no edge; a gated
capability adds no FOT entry.

The cluster runs with small limits (``--max-uploads 3 --body-timeout 2
--header-timeout 3``) so that slow and stalled clients are cut within seconds.
The pure rules (nonce memory and session table per key) are in
tests/security/test_fairness.py.
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dtwz.client.api import Client
from dtwz.errors import AccessDenied, InvalidArgument, ObjectNotFound
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import HOST, LocalCluster
from dtwz.security import keyfiles
from dtwz.security.auth import body_sha256, sign_request
from dtwz.security.capabilities import Gate, Rights, grant
from dtwz.security.keys import Identity
from tests.helpers import running_cluster, wait_until

MIB = 1 << 20
ORDER_8 = "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"  # Curve25519
MAX_UPLOADS = 3
BODY_TIMEOUT = 2.0
HEADER_TIMEOUT = 3.0
LIMITS = (
    "--max-uploads",
    str(MAX_UPLOADS),
    "--body-timeout",
    str(BODY_TIMEOUT),
    "--header-timeout",
    str(HEADER_TIMEOUT),
)


@pytest.fixture(scope="module")
def sec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(2, tmp_path_factory.mktemp("authn"), *LIMITS) as started:
        yield started


@pytest.fixture(scope="module")
def bob(sec: LocalCluster) -> Identity:
    who = Identity.generate("bob")
    sec.enroll(who)  # with the admin's consent
    return who


def admin_object(
    cluster: LocalCluster, data: bytes = b"before", home: str = "n1", size: int = 16384
) -> ObjectId:
    with cluster.client(home) as admin:
        return admin.create(size, data, prot=0)


def state(cluster: LocalCluster, oid: ObjectId) -> tuple[bytes, int, int]:
    """(the first data bytes, version, FOT entries), as the admin sees them at home."""
    with cluster.client("n1") as admin:
        info = admin.info(oid, latest=True)
        data = admin.read(oid, DATA_START, 16, latest=True)
        return data, int(info["version"]), int(info["fot_count"])


def status(cluster: LocalCluster, node_id: str) -> dict[str, Any]:
    with cluster.client(node_id) as admin:
        return admin.cluster_status()


# -- raw HTTP: a request line and headers, then as much of the body as we like -------


def open_request(
    cluster: LocalCluster,
    method: str,
    path: str,
    headers: dict[str, str],
    length: int,
    node: str = "n1",
) -> socket.socket:
    """A connection that has sent ``method path``, ``headers`` and a Content-Length
    of ``length``, and none of the body yet."""
    port = cluster.node(node).http_port
    sock = socket.create_connection((HOST, port), timeout=30)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def answer(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the response on ``sock``."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the node closes ``sock`` within ``seconds`` (anything it sends is read)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def signed_headers(
    who: Identity, method: str, path: str, body: bytes, *, age: float = 0.0
) -> dict[str, str]:
    return sign_request(who, method, path, body_sha256(body), time.time() - age, audience="n1")


def memory_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status: VmRSS (resident now) or VmHWM (its peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> bool:
    """Start VmHWM afresh from VmRSS (Linux 4.0+); False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# -- authenticate before work ---------------------------------------------------------


def test_refusals_come_before_the_body_is_read(sec: LocalCluster, bob: Identity) -> None:
    """Each refusal a node can make from the headers arrives while the client has sent
    256 KiB of a 64 MiB body: the node did not wait for (nor read) the rest."""
    oid = admin_object(sec)
    before = state(sec, oid)
    path = f"/objects/{oid.hex()}/data?offset={DATA_START}"
    body = os.urandom(64 * MIB)
    admin = sec.admin
    used = signed_headers(admin, "PUT", path, b"once")
    with sec.client("n1") as client:  # the same nonce, once accepted
        assert client._channel.transport.send("PUT", path, b"once", headers=used).status == 200
    cases = {
        "unsigned": ({}, 403, b"not signed"),
        "unknown key": (signed_headers(Identity.generate(), "PUT", path, body), 401, b"UnknownKey"),
        "stale": (signed_headers(admin, "PUT", path, body, age=600), 401, b"ReplayedRequest"),
        "nonce used": (used, 401, b"ReplayedRequest"),
    }
    for what, (headers, expected, why) in cases.items():
        sock = open_request(sec, "PUT", path, headers, len(body))
        try:
            sock.sendall(body[: 256 << 10])
            status_code, _, text = answer(sock)
        finally:
            sock.close()
        assert status_code == expected and why in text, (what, status_code, text)
    after = state(sec, oid)  # only the one signed write happened
    assert after[0].startswith(b"oncere") and after[1] == before[1] + 1


def test_unsigned_uploads_do_not_grow_the_node(sec: LocalCluster) -> None:
    """Three whole unsigned 64 MiB uploads: each is refused and its body discarded as
    it arrives, so the node's resident memory (its peak, where Linux lets us reset
    it) does not grow by a body's size."""
    oid = admin_object(sec)
    before = state(sec, oid)
    pid = sec.node("n1").pid
    assert pid is not None
    path = f"/objects/{oid.hex()}/data?offset={DATA_START}"
    body = bytes(64 * MIB)
    peak = "VmHWM" if reset_peak(pid) else "VmRSS"  # the peak, else what stays
    start = memory_kib(pid, "VmRSS")
    for _ in range(3):
        conn = http.client.HTTPConnection(HOST, sec.node("n1").http_port, timeout=60)
        try:
            conn.request("PUT", path, body=body)
            response = conn.getresponse()
            text = response.read()
        except (BrokenPipeError, ConnectionResetError):
            continue  # the node answered and closed before we were done: fine too
        finally:
            conn.close()
        assert response.status == 403 and b"not signed" in text
    grown = memory_kib(pid, peak) - start  # a body read whole costs 4x its size at peak
    assert grown < 32 * 1024, f"the node grew by {grown} KiB ({peak}) for bodies it refused"
    assert state(sec, oid) == before


def test_a_stalled_upload_is_cut_after_the_time_limit(sec: LocalCluster) -> None:
    oid = admin_object(sec, size=4 * MIB)
    before = state(sec, oid)
    path = f"/objects/{oid.hex()}/data?offset={DATA_START}"
    body = bytes(MIB)
    sock = open_request(sec, "PUT", path, signed_headers(sec.admin, "PUT", path, body), MIB)
    try:
        sock.sendall(body[:1024])  # then nothing
        began = time.monotonic()
        status_code, _, text = answer(sock, timeout=BODY_TIMEOUT + 20)
        took = time.monotonic() - began
        assert status_code == 408 and b"RequestTimeout" in text
        assert BODY_TIMEOUT - 0.5 <= took <= BODY_TIMEOUT + 10, took
        assert closed_within(sock, 10), "the connection of a stalled upload stays open"
    finally:
        sock.close()
    assert state(sec, oid) == before


def test_slow_headers_are_cut(sec: LocalCluster) -> None:
    port = sec.node("n1").http_port
    sock = socket.create_connection((HOST, port), timeout=30)
    try:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # and no more
        assert closed_within(sock, HEADER_TIMEOUT + 10), "headers that never end stay open"
    finally:
        sock.close()


def test_too_many_uploads_at_once_get_503(sec: LocalCluster) -> None:
    oid = admin_object(sec, size=4 * MIB)
    path = f"/objects/{oid.hex()}/data?offset={DATA_START}"
    body = bytes(MIB)
    stalled = []
    try:
        for _ in range(MAX_UPLOADS):  # each holds an upload slot, sending nothing more
            headers = signed_headers(sec.admin, "PUT", path, body)
            stalled.append(open_request(sec, "PUT", path, headers, MIB))
            stalled[-1].sendall(body[:1024])
        time.sleep(0.5)
        extra = open_request(sec, "PUT", path, signed_headers(sec.admin, "PUT", path, body), MIB)
        try:
            status_code, headers_back, text = answer(extra)
        finally:
            extra.close()
        assert status_code == 503 and b"NodeBusy" in text
        assert int(headers_back["retry-after"]) >= 1
        for sock in stalled:  # each is cut in its time
            assert answer(sock, timeout=BODY_TIMEOUT + 20)[0] == 408
    finally:
        for sock in stalled:
            sock.close()
    with sec.client("n1") as admin:  # and then uploads are served again
        admin.write(oid, DATA_START, b"served")
        assert admin.read(oid, DATA_START, 6, latest=True) == b"served"


def test_bodies_within_their_limits_are_served_and_others_cut(sec: LocalCluster) -> None:
    oid = admin_object(sec, size=16 * MIB)
    data = os.urandom(8 * MIB)
    with sec.client("n1") as admin:  # a large signed write within the object: served
        admin.write(oid, DATA_START, data)
        assert admin.read(oid, DATA_START, len(data), latest=True) == data
        with pytest.raises(InvalidArgument, match="at most"):  # past the object: 413
            admin.write(oid, DATA_START, bytes(16 * MIB + 1))
    # a chunked body (no length announced) is cut at the route's limit
    path = "/session"
    headers = signed_headers(sec.admin, "POST", path, bytes(64 << 10))
    port = sec.node("n1").http_port
    sock = socket.create_connection((HOST, port), timeout=30)
    try:
        lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", "Transfer-Encoding: chunked"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sock.sendall(b"10000\r\n" + bytes(64 << 10) + b"\r\n")  # and no end
        status_code, _, text = answer(sock)
    finally:
        sock.close()
    assert status_code == 413 and b"RequestTooLarge" in text


def test_an_unsigned_request_naming_an_object_as_its_key_fetches_nothing(
    sec: LocalCluster,
) -> None:
    """Naming an ordinary object (homed on n1) as the key of a request to n2 makes
    n2 fetch, copy and count nothing: unsigned, it is refused from its headers; with
    a made-up signature, the object is seen not to be a key from its header alone."""
    oid = admin_object(sec, b"not a key")
    path = f"/objects/{admin_object(sec).hex()}/data"
    n1_before, n2_before = status(sec, "n1"), status(sec, "n2")
    unsigned = {"X-Dtwz-Key": oid.hex()}
    sock = open_request(sec, "GET", path, unsigned, 0, node="n2")
    try:
        status_code, _, text = answer(sock)
    finally:
        sock.close()
    assert status_code == 403 and b"not signed" in text
    n1_after, n2_after = status(sec, "n1"), status(sec, "n2")
    assert n1_after["service"]["fetches_served"] == n1_before["service"]["fetches_served"]
    for key in ("remote_reads", "range_reads"):
        assert n2_after["service"][key] == n2_before["service"][key], key
    assert n2_after["copies"] == n2_before["copies"]
    # a made-up signature: the node looks at the object's header (no copy, no data)
    forged = {
        "X-Dtwz-Key": oid.hex(),
        "X-Dtwz-Timestamp": str(int(time.time())),
        "X-Dtwz-Nonce": os.urandom(16).hex(),
        "X-Dtwz-Signature": "00" * 64,
    }
    sock = open_request(sec, "GET", path, forged, 0, node="n2")
    try:
        status_code, _, text = answer(sock)
    finally:
        sock.close()
    assert status_code == 401 and b"UnknownKey" in text
    n2_last = status(sec, "n2")
    for key in ("remote_reads", "range_reads"):
        assert n2_last["service"][key] == n2_before["service"][key], key
    assert n2_last["copies"] == n2_before["copies"]


def test_made_up_keys_make_no_member_search(sec: LocalCluster) -> None:
    """A kuid no one enrolled, with a made-up signature: the directory is asked once
    (then the answer stands a while), no member is asked to search, nothing is
    fetched."""
    path = f"/objects/{admin_object(sec).hex()}/data"
    before = {n: status(sec, n) for n in ("n1", "n2")}
    kuid = os.urandom(16).hex()
    for _ in range(5):
        forged = {
            "X-Dtwz-Key": kuid,
            "X-Dtwz-Timestamp": str(int(time.time())),
            "X-Dtwz-Nonce": os.urandom(16).hex(),
            "X-Dtwz-Signature": "00" * 64,
        }
        sock = open_request(sec, "GET", path, forged, 0, node="n2")
        try:
            status_code, _, text = answer(sock)
        finally:
            sock.close()
        assert status_code == 401 and b"UnknownKey" in text
    after = {n: status(sec, n) for n in ("n1", "n2")}
    assert after["n2"]["node"].get("broadcast_lookups", 0) == before["n2"]["node"].get(
        "broadcast_lookups", 0
    )
    assert after["n2"]["node"]["directory_lookups"] - before["n2"]["node"]["directory_lookups"] <= 1
    for n in ("n1", "n2"):
        assert after[n]["service"]["fetches_served"] == before[n]["service"]["fetches_served"]


# -- per-key fairness ---------------------------------------------------------------


def test_a_flood_of_sessions_leaves_another_keys_session_alone(sec: LocalCluster) -> None:
    """The node n2's identity (a trusted key other than the admin's) opens 100
    sessions with n1, past its share; the admin's session is untouched."""
    other = Identity.load(keyfiles.node_identity_file(sec.keys_dir, "n2"))
    with sec.client("n1") as admin:
        oid = admin.create(8192, b"mine")
        assert admin.read(oid, DATA_START, 4) == b"mine"
        session = admin._channel.session
        opened = admin.cluster_status()["access"]["sessions_opened"]
        with Client(sec.node("n1").url, identity=other, audience="n1") as flooder:
            for _ in range(100):
                flooder._channel.session = None  # open another each time
                assert flooder.read(oid, DATA_START, 4) == b"mine"
        for _ in range(5):
            assert admin.read(oid, DATA_START, 4, latest=True) == b"mine"
        assert admin._channel.session == session  # not replaced: it still worked
        # the flooder's 100 and nothing of the admin's
        assert admin.cluster_status()["access"]["sessions_opened"] == opened + 100


# -- bad inputs get a 4xx -----------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("zero", bytes(32)),
        ("one (order 1)", (1).to_bytes(32, "little")),
        (
            "order 8",
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        ),
        ("short", bytes(31)),
        ("long", bytes(33)),
    ],
)
def test_a_bad_x25519_key_at_session_is_a_400(sec: LocalCluster, what: str, body: bytes) -> None:
    with sec.client("n1") as admin, pytest.raises(InvalidArgument, match="X25519"):
        admin._channel.call("POST", "/session", None, body, session=False)


@pytest.mark.parametrize(
    "route",
    ["/transact", "/graph/migrate", "/graph/prefetch", "/code/run", "/names/bind", "/keys"],
)
def test_json_nested_100000_deep_is_a_4xx(sec: LocalCluster, route: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with sec.client("n1") as admin:
        response = admin._channel.call(
            "POST", route, None, deep, headers={"Content-Type": "application/json"}, check=False
        )
    assert 400 <= response.status < 500, (route, response.status, response.body[:200])


def test_a_node_parameter_naming_no_member_is_a_400(sec: LocalCluster) -> None:
    with sec.client("n1") as admin:
        with pytest.raises(InvalidArgument, match="no member"):
            admin.create(8192, b"x", node="nowhere")
        assert admin.create(8192, b"x", node="n2")  # a member is fine


def test_the_not_signed_error_says_what_to_do(sec: LocalCluster) -> None:
    oid = admin_object(sec)
    with (
        Client(sec.node("n1").url, identity=None) as anonymous,
        pytest.raises(AccessDenied) as refused,
    ):
        anonymous.read(oid)
    assert "not signed" in str(refused.value) and "DTWZ_IDENTITY" in str(refused.value)


# -- the store is the node's user's alone -------------------------------------------------


def test_store_files_are_the_node_users_alone(sec: LocalCluster) -> None:
    admin_object(sec)
    store = sec.node("n1").data_dir / "store"
    seen = 0
    for where, folders, files in os.walk(store):
        assert stat.S_IMODE(os.stat(where).st_mode) == 0o700, where
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(where, name)).st_mode)
            assert mode == 0o600, (where, name, oct(mode))
            seen += 1
        del folders[:0]
    assert seen >= 4  # STORE, store.ctl, wal.log and objects


# -- edges and gates ------------------------------------------------------------------


def test_a_refused_read_counts_no_edge(sec: LocalCluster, bob: Identity) -> None:
    with sec.client("n1") as admin:
        target = admin.create(8192, b"target", prot=0)
        source = admin.create(8192, b"source", prot=int(Rights.READ))
        admin.write_pointer(source, DATA_START + 8, target)

    def uses() -> int:
        with sec.client("n1") as admin:
            graph = admin.walk(source, depth=1)
            return int(graph.edges[source.hex(), target.hex()].get("uses", 0))

    assert uses() == 0
    path = f"/objects/{target.hex()}/image"
    with Client(sec.node("n2").url, identity=bob, audience="n2") as client:
        refused = client._channel.call("GET", path, {"via": source.hex()}, check=False)
    assert refused.status in (403, 404)
    assert uses() == 0
    with sec.client("n2") as admin:  # an allowed read does count
        admin._channel.call("GET", path, {"via": source.hex()})
    wait_until(lambda: uses() == 1, 10, "the allowed read's edge use is counted")


def test_a_gated_capability_adds_no_fot_entry(sec: LocalCluster, bob: Identity) -> None:
    """A pointer may add a FOT entry, at the object's end: a write to the whole
    object, so a capability gated to the pointer's word does not allow it."""
    with sec.client("n1") as admin:
        oid = admin.create(16384, b"0123456789abcdef", prot=0)
        target = admin.create(8192, b"elsewhere", prot=int(Rights.READ))
        size = int(admin.info(oid)["max_size"])
    rw = Rights.READ | Rights.WRITE
    gated = grant(sec.admin, oid, bob.kuid, rw, int(time.time()) + 600, Gate(DATA_START, 8))
    before = state(sec, oid)
    with Client(sec.node("n1").url, identity=bob, audience="n1") as client:
        client.add_capability(gated)
        client.write(oid, DATA_START, b"ABCDEFGH")  # the gate's bytes: allowed
        with pytest.raises(AccessDenied, match=r"whole object|gate"):
            client.write_pointer(oid, DATA_START, target)
    after = state(sec, oid)
    assert after[0] == b"ABCDEFGH89abcdef" and after[1] == before[1] + 1
    assert after[2] == before[2]  # no FOT entry was added
    whole = grant(sec.admin, oid, bob.kuid, rw, int(time.time()) + 600, Gate(0, size))
    with Client(sec.node("n1").url, identity=bob, audience="n1") as client:
        client.add_capability(whole)  # a gate that covers the object allows it
        client.write_pointer(oid, DATA_START, target)
    assert state(sec, oid)[2] == before[2] + 1


def test_without_security_bodies_are_still_bounded(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with (
        running_cluster(1, tmp_path_factory.mktemp("open"), "--no-security") as cluster,
        Client(cluster.node("n1").url, identity=None) as anonymous,
    ):
        oid = anonymous.create(8192, b"x")
        with pytest.raises(InvalidArgument, match="at most"):
            anonymous._channel.call("POST", "/session", None, bytes(4096))
        with pytest.raises(ObjectNotFound):
            anonymous.read(ObjectId(os.urandom(16)))
        assert anonymous.read(oid) == b"x"
