"""Names have owners, against a real 3-node cluster with security on (docs/NAMES.md §8):
another identity cannot rebind, unbind, rename, mkdir or symlink in the admin's
directories, nor write their bytes (the root included); reading through a directory
one may not read is refused, also when the node has the name cached; a capability
with w on a directory lets another identity change it; a directory belongs to whoever
made it; objects are created owner-only; names refuse control and bidirectional
formatting characters.

Every refusal is checked to change nothing: names, bytes and versions stay, and the
admin is served as before.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from dtwz.cli import cli
from dtwz.client.api import Binding, Client, Op
from dtwz.errors import (
    AccessDenied,
    InvalidArgument,
    InvalidName,
    NameNotFound,
    ObjectNotFound,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, Protection
from dtwz.node.launcher import LocalCluster
from dtwz.security.auth import body_sha256, sign_request
from dtwz.security.capabilities import Capability, Rights, grant
from dtwz.security.keys import Identity
from tests.helpers import running_cluster

SMALL = 16 << 10
_unique = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(3, tmp_path_factory.mktemp("names-security")) as started:
        yield started


@pytest.fixture(scope="module")
def mallory(cluster: LocalCluster) -> Identity:
    """An enrolled identity that is not the admin."""
    who = Identity.generate("mallory")
    cluster.enroll(who)
    return who


@pytest.fixture(scope="module")
def eve(cluster: LocalCluster) -> Identity:
    who = Identity.generate("eve")
    cluster.enroll(who)
    return who


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client("n1") as client:
        yield client


def as_(cluster: LocalCluster, who: Identity, node: str, *caps: Capability) -> Client:
    client = cluster.client(node, identity=who, timeout=10.0)
    for cap in caps:
        client.add_capability(cap)
    return client


def expiry(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


@pytest.fixture
def top(admin: Client) -> str:
    """A fresh directory of the admin's under the root, with one name bound in it."""
    path = f"/s{next(_unique)}"
    admin.mkdir(path)
    admin.bind(f"{path}/x", admin.create(SMALL, b"the admin's x", prot=int(Protection.READ)))
    admin.mkdir(f"{path}/sub")
    return path


def snapshot(admin: Client, path: str) -> tuple[list[Binding], int, bytes]:
    """What a directory holds, its version and its bytes, as the admin sees them."""
    oid = admin.resolve(path)
    version = int(admin.info(oid, latest=True)["version"])
    return admin.listdir(path), version, admin.read(oid, latest=True)


# -- changes need write on the directory --------------------------------------------------


@pytest.mark.parametrize("node", ["n1", "n2"], ids=["at-the-home", "elsewhere"])
def test_another_identity_cannot_change_the_admins_names(
    cluster: LocalCluster, admin: Client, mallory: Identity, top: str, node: str
) -> None:
    before, root_before = snapshot(admin, top), snapshot(admin, "/")
    with as_(cluster, mallory, node) as m:
        mine = m.create(SMALL, b"mallory's bytes")
        assert m.resolve(f"{top}/x") == admin.resolve(f"{top}/x")  # reading is allowed
        attempts: list[tuple[str, Any]] = [
            ("rebind", lambda: m.bind(f"{top}/x", mine, replace=True)),
            ("bind", lambda: m.bind(f"{top}/new", mine)),
            ("unbind", lambda: m.unbind(f"{top}/x")),
            ("unbind a directory", lambda: m.unbind(f"{top}/sub")),
            ("rename", lambda: m.rename(f"{top}/x", f"{top}/y")),
            ("rename into", lambda: m.rename(f"{top}/x", f"{top}/sub/x")),
            ("mkdir", lambda: m.mkdir(f"{top}/new")),
            ("mkdir -p", lambda: m.mkdir(f"{top}/sub/a/b", parents=True)),
            ("symlink", lambda: m.symlink(f"{top}/link", "/elsewhere")),
            ("mkdir at the root", lambda: m.mkdir(f"/mallory{next(_unique)}")),
            ("bind at the root", lambda: m.bind(f"/mallory{next(_unique)}", mine)),
            ("rename to the root", lambda: m.rename(f"{top}/x", f"/stolen{next(_unique)}")),
        ]
        for what, attempt in attempts:
            with pytest.raises(AccessDenied, match="may not change the names in directory"):
                attempt()
            assert snapshot(admin, top) == before, what
    assert snapshot(admin, "/") == root_before
    # the admin is served as before, through every node
    for node_id in cluster.node_ids:
        with cluster.client(node_id) as client:
            assert client.read(f"{top}/x") == b"the admin's x"
    admin.bind(f"{top}/y", admin.resolve(f"{top}/x"))
    admin.rename(f"{top}/y", f"{top}/sub/y")
    admin.unbind(f"{top}/sub/y")
    assert [b.name for b in admin.listdir(top)] == ["x", "sub"]


def raw_changes(
    client: Client, oid: ObjectId, target: ObjectId
) -> list[tuple[str, Callable[[], Any]]]:
    """Every way to change an object's bytes other than a name operation."""
    garbage = b"\xff" * 32  # over the directory header: every walk would fail
    return [
        ("write", lambda: client.write(oid, DATA_START, garbage)),
        ("append", lambda: client.append(oid, garbage)),
        ("pointer", lambda: client.write_pointer(oid, DATA_START + 8, target)),
        ("name pointer", lambda: client.write_name_pointer(oid, DATA_START, "/x")),
        ("transact", lambda: client.transact([Op.write(oid, DATA_START, garbage)])),
    ]


@pytest.mark.parametrize("node", ["n1", "n3"], ids=["at-the-home", "elsewhere"])
def test_raw_writes_into_a_directory_are_refused_even_to_the_admin(
    cluster: LocalCluster, admin: Client, mallory: Identity, top: str, node: str
) -> None:
    root = admin.root()
    directory = admin.resolve(top)
    before, root_before = snapshot(admin, top), snapshot(admin, "/")
    with as_(cluster, mallory, node) as m, cluster.client(node) as a:
        target = m.create(SMALL, b"target")
        for client in (m, a):
            for oid in (root, directory):
                for what, attempt in raw_changes(client, oid, target):
                    with pytest.raises(AccessDenied) as refused:
                        attempt()
                    if client is a or oid == root:  # the root's WRITE bit gets it this far
                        assert "directory of the namespace" in str(refused.value), what
                    assert snapshot(admin, top) == before, what
                    assert snapshot(admin, "/") == root_before, what
    for node_id in cluster.node_ids:  # the root is still a directory, everywhere
        with cluster.client(node_id) as client:
            assert client.lookup(top).kind == "directory"
            assert client.read(f"{top}/x") == b"the admin's x"


# -- resolving needs read on every directory read --------------------------------------------


def test_reading_through_an_unreadable_directory_is_refused_even_when_cached(
    cluster: LocalCluster, admin: Client, mallory: Identity, top: str
) -> None:
    private = f"{top}/private"
    admin.mkdir(private, prot=Protection.NONE)
    readable = admin.create(SMALL, b"readable by all", prot=int(Protection.READ))
    admin.bind(f"{private}/doc", readable)
    admin.symlink(f"{top}/shortcut", f"{private}/doc")
    with cluster.client("n2") as a2:  # the names are cached on n2 now
        assert a2.resolve(f"{private}/doc") == readable
        assert a2.resolve(f"{top}/shortcut") == readable
        hits = a2.cluster_status()["names"]["cache_hits"]
        with as_(cluster, mallory, "n2") as m:
            assert m.read(readable) == b"readable by all"  # by ID: the object is readable
            for attempt in (
                lambda: m.resolve(f"{private}/doc"),
                lambda: m.read(f"{private}/doc"),
                lambda: m.resolve(f"{top}/shortcut"),  # through a symbolic link
                lambda: m.lookup(f"{private}/doc"),
                lambda: m.listdir(private),
                lambda: m.resolve(f"{private}/missing"),  # says nothing of what is there
            ):
                with pytest.raises(AccessDenied, match="may not look names up in directory"):
                    attempt()
            assert m.lookup(private).kind == "directory"  # its name is in a readable one
        assert a2.cluster_status()["names"]["cache_hits"] >= hits + 3  # served from cache
        assert a2.read(f"{private}/doc") == b"readable by all"  # the admin still reads


# -- capabilities and ownership ------------------------------------------------------------


def test_a_capability_with_write_on_a_directory_lets_another_identity_bind_there(
    cluster: LocalCluster,
    admin: Client,
    mallory: Identity,
    eve: Identity,
    top: str,
    _admin_identity: Identity,
) -> None:
    directory = admin.resolve(top)
    writes = grant(_admin_identity, directory, mallory.kuid, Rights.WRITE, expiry())
    reads = grant(_admin_identity, directory, mallory.kuid, Rights.READ, expiry())
    for_eve = grant(_admin_identity, directory, eve.kuid, Rights.WRITE, expiry())
    before = snapshot(admin, top)
    for cap in (reads, for_eve):  # too little, and someone else's
        with as_(cluster, mallory, "n2", cap) as m, pytest.raises(AccessDenied):
            m.bind(f"{top}/m", m.create(SMALL, b"m", prot=int(Protection.READ)))
    assert snapshot(admin, top) == before
    with as_(cluster, mallory, "n3", writes) as m:
        mine = m.create(SMALL, b"bound by mallory", prot=int(Protection.READ))
        m.bind(f"{top}/m", mine)
        m.rename(f"{top}/m", f"{top}/m2")
        made = m.mkdir(f"{top}/mallorys")
        with pytest.raises(AccessDenied):  # the capability is for that directory only
            m.bind(f"{top}/sub/m", mine)
    assert admin.read(f"{top}/m2") == b"bound by mallory"
    # a directory belongs to whoever made it: mallory changes it without a capability,
    # eve may look names up in it but not change them, the admin may do anything
    assert admin.info(made)["kuid"] == mallory.kuid.hex()
    assert admin.info(directory)["kuid"] == _admin_identity.kuid.hex()
    secret = admin.create(SMALL, b"the admin's secret")  # owner-only
    missing = ObjectId(bytes(range(16)))
    with as_(cluster, mallory, "n1") as m:
        # a name only for what one can see: an unreadable object is answered as missing
        for unseen in (secret, missing):
            with pytest.raises(ObjectNotFound, match=f"holds object {unseen}$"):
                m.bind(f"{top}/mallorys/probe", unseen)
        m.bind(f"{top}/mallorys/own", mine)
        m.mkdir(f"{top}/mallorys/deeper/still", parents=True)
        hidden = m.mkdir(f"{top}/mallorys/hidden", prot=Protection.NONE)
        m.bind(f"{top}/mallorys/hidden/h", mine)
        with pytest.raises(InvalidArgument, match="read at most"):
            m.mkdir(f"{top}/mallorys/open", prot=Protection.READ | Protection.WRITE)
        with pytest.raises(AccessDenied):  # still not the admin's directory
            m.unbind(f"{top}/x")
    assert int(admin.info(hidden)["default_prot"]) == 0
    with as_(cluster, eve, "n2") as e:
        assert e.read(f"{top}/mallorys/own") == b"bound by mallory"
        with pytest.raises(AccessDenied):
            e.unbind(f"{top}/mallorys/own")
        with pytest.raises(AccessDenied):
            e.resolve(f"{top}/mallorys/hidden/h")
    admin.unbind(f"{top}/mallorys/own")
    assert admin.resolve(f"{top}/mallorys/hidden/h") == mine


# -- owner-only by default -----------------------------------------------------------------


def _raw_create(cluster: LocalCluster, who: Identity, node: str) -> tuple[int, bytes]:
    """``POST /objects`` with no ``prot``, signed by ``who``."""
    path, body = "/objects?size=16384", b"made over HTTP"
    headers = sign_request(who, "POST", path, body_sha256(body), time.time(), audience=node)
    url = urlsplit(cluster.node(node).url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_objects_created_by_default_grant_nothing_to_others(
    cluster: LocalCluster, admin: Client, mallory: Identity, eve: Identity
) -> None:
    with as_(cluster, mallory, "n2") as m:
        by_api = m.create(SMALL, b"mallory's secret")
        public = m.create(SMALL, b"mallory's news", prot=int(Protection.READ))
        also_public = m.create(SMALL, b"said so", default_prot=int(Protection.READ))
    status, answer = _raw_create(cluster, mallory, "n1")
    assert status == 201
    by_http = ObjectId.parse(json.loads(answer)["id"])
    for oid in (by_api, by_http):
        info = admin.info(oid)
        assert int(info["default_prot"]) == 0 and info["kuid"] == mallory.kuid.hex()
        before = admin.read(oid, latest=True)
        with as_(cluster, eve, "n3") as e:  # answered as for a missing ID (§9)
            with pytest.raises(ObjectNotFound):
                e.read(oid)
            with pytest.raises(ObjectNotFound):
                e.write(oid, DATA_START, b"eve")
        assert admin.read(oid, latest=True) == before
    with as_(cluster, eve, "n3") as e:
        assert e.read(public) == b"mallory's news"
        assert e.read(also_public) == b"said so"
        with pytest.raises(AccessDenied):
            e.write(public, DATA_START, b"eve")
    with as_(cluster, mallory, "n1") as m:  # the owner needs nothing
        assert m.read(by_http) == b"made over HTTP"
        with pytest.raises(InvalidArgument):
            m.create(SMALL, b"", prot=1, default_prot=3)


def test_the_command_line_creates_owner_only_and_makes_private_directories(
    cluster: LocalCluster, admin: Client, top: str
) -> None:
    def remote(*args: str) -> tuple[int, str]:
        done = CliRunner().invoke(cli, ["remote", "--node", cluster.node("n2").url, *args])
        return done.exit_code, done.output

    status, out = remote("create", "--data", "by the CLI", "--json")
    assert status == 0 and json.loads(out)["prot"] == "-"
    status, out = remote("create", "--prot", "r", "--data", "news", "--json")
    assert status == 0 and json.loads(out)["prot"] == "r"
    status, out = remote("mkdir", "--prot", "-", f"{top}/closed", "--json")
    assert status == 0
    closed = ObjectId.parse(json.loads(out)["object_id"])
    assert int(admin.info(closed)["default_prot"]) == 0
    assert int(admin.info(admin.mkdir(f"{top}/open"))["default_prot"]) == int(Protection.READ)
    status, out = remote("mkdir", "--prot", "rw", f"{top}/everyones")
    assert status == 2 and "read at most" in out  # a usage error: nothing made
    with pytest.raises(NameNotFound):
        admin.resolve(f"{top}/everyones")


# -- names refuse control and bidirectional formatting characters ------------------------------

BAD_NAMES = [
    "new\nline",
    "tab\there",
    "escape\x1b[31m",
    "del\x7f",
    "c1\x85",
    "right-to-left\u202eexe.txt",
    "isolate\u2066x\u2069",
    "mark\u200f",
    "line\u2028separator",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: f"U+{ord(n[-1]):04X}")
def test_names_with_control_or_bidi_characters_are_refused(
    cluster: LocalCluster, admin: Client, top: str, name: str
) -> None:
    before = snapshot(admin, top)
    target = admin.resolve(f"{top}/x")
    with pytest.raises(InvalidName, match=r"control|bidirectional|NUL"):
        admin.bind(f"{top}/{name}", target)
    with pytest.raises(InvalidName):
        admin.mkdir(f"{top}/{name}")
    with pytest.raises(InvalidName):
        admin.symlink(f"{top}/link", f"/a/{name}")
    with pytest.raises(InvalidName):
        admin.rename(f"{top}/x", f"{top}/{name}")
    assert snapshot(admin, top) == before


def test_a_bad_name_is_a_400_over_http(cluster: LocalCluster, admin: Client, top: str) -> None:
    body = json.dumps({"path": f"{top}/evil\u202egnp.exe", "target": str(admin.root())}).encode()
    path = "/names/bind"
    identity = cluster.admin
    headers = sign_request(identity, "POST", path, body_sha256(body), time.time(), audience="n1")
    headers["Content-Type"] = "application/json"
    url = urlsplit(cluster.node("n1").url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        status, answer = response.status, response.read()
    finally:
        conn.close()
    assert status == 400 and b"InvalidName" in answer
