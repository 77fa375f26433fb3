"""The cluster-wide namespace against real 3-node clusters on loopback: names bound
through one node resolve through every node; rebinding a name redirects a late-bound
pointer followed from another node; concurrent binds of one name from two nodes
(exactly one wins); the root and every directory survive kill -9 of their homes;
bad paths; ``dtwz.connect``; and the ``dtwz remote`` namespace commands."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import dtwz
from dtwz.cli import cli
from dtwz.client.api import Binding, Client, Op
from dtwz.errors import (
    ClusterError,
    DirectoryNotEmpty,
    DtwzError,
    HomeUnreachable,
    InvalidArgument,
    InvalidName,
    NameExists,
    NameNotFound,
    NamespaceError,
    NotADirectory,
    ObjectNotFound,
    SymlinkLoop,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster
from dtwz.resolver.names import root_id
from tests.helpers import ClusterFactory, wait_until

SMALL = 64 << 10
_unique = itertools.count()


@pytest.fixture
def top(clients: dict[str, Client]) -> str:
    """A fresh directory under the root for one test, so tests share the cluster."""
    path = f"/t{next(_unique)}"
    clients["n1"].mkdir(path)
    return path


# -- one namespace, seen from every node ------------------------------------------------


def test_every_node_derives_the_same_root(clients: dict[str, Client]) -> None:
    roots = {client.root() for client in clients.values()}
    assert roots == {root_id("dtwz")}
    assert {c.resolve("/") for c in clients.values()} == roots
    home = clients["n3"].locate(root_id("dtwz")).home
    assert home == "n1"  # the only seed of a local cluster homes the root


def test_names_bound_on_one_node_resolve_on_all_nodes(clients: dict[str, Client], top: str) -> None:
    made: dict[str, ObjectId] = {}
    for node_id, client in clients.items():  # each node binds a name in its own directory
        d = f"{top}/{node_id}/a/b"
        client.mkdir(d, parents=True, home=node_id)
        oid = client.create(SMALL, f"made via {node_id}".encode())
        client.bind(f"{d}/obj", oid)
        made[node_id] = oid
    for reader in clients.values():
        for node_id, oid in made.items():
            path = f"{top}/{node_id}/a/b/obj"
            assert reader.resolve(path) == oid
            assert reader.read(path) == f"made via {node_id}".encode()
            assert reader.locate(path).home == node_id
    assert [b.name for b in clients["n2"].listdir(top)] == ["n1", "n2", "n3"]
    listed = clients["n3"].listdir(f"{top}/n2/a/b")
    assert listed == [Binding("obj", "object", made["n2"])]
    assert clients["n1"].lookup(f"{top}/n2").kind == "directory"
    assert clients["n1"].locate(clients["n1"].resolve(f"{top}/n2/a")).home == "n2"


def test_names_work_wherever_an_id_does(clients: dict[str, Client], top: str) -> None:
    c1, c3 = clients["n1"], clients["n3"]
    a = c1.create(SMALL, b"aaaa", node="n2")
    b = c1.create(SMALL, b"bbbb", node="n3")
    c1.bind(f"{top}/a", a)
    c1.bind(f"{top}/b", b)
    at = c3.append(f"{top}/a", bytes(8))
    c3.write_pointer(f"{top}/a", at, f"{top}/b")  # bound now: the pointer holds b's ID
    c3.write(f"{top}/b", DATA_START, b"B")
    with c3.transaction() as tx:
        tx.append(f"{top}/a", b"more")
    assert tx.result is not None and tx.result.versions
    c3.transact([Op.write(f"{top}/a", DATA_START, b"A")])
    assert c1.read(f"{top}/a", latest=True)[:4] == b"Aaaa"
    obj, offset = c1.follow(f"{top}/a", at)
    assert obj.object_id == b and bytes(obj.read(offset, 4)) == b"Bbbb"
    assert c1.info(f"{top}/b")["id"] == b.hex()
    with pytest.raises(NameNotFound):
        c1.read(f"{top}/missing")


# -- late binding ------------------------------------------------------------------------


def test_rebinding_redirects_a_late_bound_pointer_followed_from_another_node(
    clients: dict[str, Client], top: str
) -> None:
    c1, c2, c3 = clients["n1"], clients["n2"], clients["n3"]
    c1.mkdir(f"{top}/current", home="n2")  # the name's directory homed on n2
    v1 = c2.create(SMALL, b"version one", node="n2")
    v2 = c3.create(SMALL, b"version two", node="n3")
    c2.bind(f"{top}/current/data", v1)
    holder = c1.create(SMALL, bytes(8))  # homed on n1: a late-bound pointer to the name
    word = c1.write_name_pointer(holder, DATA_START, f"{top}/current/data")
    fot = c1.info(holder)["fot"]
    assert fot[0]["name"] == f"{top}/current/data" and "target" not in fot[0]

    target, _ = c3.follow(holder, DATA_START)  # through n3: resolved at dereference
    assert target.object_id == v1
    assert c3.read(f"{top}/current/data") == b"version one"  # n3 caches the name now

    c1.bind(f"{top}/current/data", v2, replace=True)  # rebound through a third node
    target, offset = c3.follow(holder, DATA_START)
    assert target.object_id == v2 and bytes(target.read(offset, 11)) == b"version two"
    assert c3.resolve(f"{top}/current/data") == v2
    assert c3.get(holder).follow(word)[0].object_id == v2  # the copy's own follow too

    c2.unbind(f"{top}/current/data")
    with pytest.raises(UnresolvedName, match="no 'data'"):
        c3.follow(holder, DATA_START)
    names = c3.cluster_status()["names"]
    assert names["cache_stale"] >= 1 and names["cache_hits"] >= 1


def test_a_rename_of_a_directory_on_the_path_redirects_too(
    clients: dict[str, Client], top: str
) -> None:
    c1, c2 = clients["n1"], clients["n2"]
    old, new = c1.create(SMALL, b"old"), c1.create(SMALL, b"new")
    c1.mkdir(f"{top}/live/v", parents=True)
    c1.mkdir(f"{top}/next/v", parents=True)
    c1.bind(f"{top}/live/v/x", old)
    c1.bind(f"{top}/next/v/x", new)
    assert c2.read(f"{top}/live/v/x") == b"old"
    c1.rename(f"{top}/live", f"{top}/previous")  # a directory high on the path changes
    c1.rename(f"{top}/next", f"{top}/live")
    assert c2.read(f"{top}/live/v/x") == b"new"
    assert c2.read(f"{top}/previous/v/x") == b"old"


# -- concurrent binds --------------------------------------------------------------------


def test_a_conflicting_bind_from_two_nodes_has_exactly_one_winner(
    clients: dict[str, Client], top: str
) -> None:
    contenders = {n: clients[n].create(SMALL, n.encode(), node=n) for n in ("n2", "n3")}
    rounds = 25
    outcomes: dict[str, list[object]] = {n: [] for n in contenders}
    start = threading.Barrier(2)

    def bind_all(node_id: str) -> None:
        start.wait()
        for i in range(rounds):
            try:
                clients[node_id].bind(f"{top}/race-{i}", contenders[node_id])
                outcomes[node_id].append(True)
            except NameExists as exc:
                outcomes[node_id].append(exc)

    threads = [threading.Thread(target=bind_all, args=(n,)) for n in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i in range(rounds):
        won = [n for n in contenders if outcomes[n][i] is True]
        assert len(won) == 1, (i, outcomes)
        (loser,) = set(contenders) - set(won)
        assert "bound already" in str(outcomes[loser][i])
        for reader in clients.values():  # everyone sees the winner's binding
            assert reader.resolve(f"{top}/race-{i}") == contenders[won[0]]
    assert len(clients["n1"].listdir(top)) == rounds


def test_concurrent_mkdir_parents_from_two_nodes_agree(
    clients: dict[str, Client], top: str
) -> None:
    made: dict[str, ObjectId] = {}
    start = threading.Barrier(2)

    def mkdirs(node_id: str) -> None:
        start.wait()
        made[node_id] = clients[node_id].mkdir(f"{top}/p/q/r", parents=True)

    threads = [threading.Thread(target=mkdirs, args=(n,)) for n in ("n2", "n3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert made["n2"] == made["n3"] == clients["n1"].resolve(f"{top}/p/q/r")


# -- rename, unbind, symbolic links -------------------------------------------------------


def test_rename_within_a_home_and_across_homes(clients: dict[str, Client], top: str) -> None:
    c1 = clients["n1"]
    obj = c1.create(SMALL, b"moving")
    c1.mkdir(f"{top}/here")
    c1.mkdir(f"{top}/there", home="n3")
    c1.bind(f"{top}/here/x", obj)
    c1.symlink(f"{top}/here/link", "../there/z")  # relative: from the link's directory
    assert c1.rename(f"{top}/here/x", f"{top}/here/y") == Binding("y", "object", obj)
    assert clients["n2"].resolve(f"{top}/here/y") == obj
    c1.rename(f"{top}/here/y", f"{top}/there/z")  # a directory homed on n3
    c1.rename(f"{top}/here/link", f"{top}/there/link")
    assert clients["n2"].resolve(f"{top}/there/link") == obj
    with pytest.raises(NameNotFound):
        clients["n2"].resolve(f"{top}/here/y")
    other = c1.create(SMALL)
    c1.bind(f"{top}/there/w", other)
    with pytest.raises(NameExists):
        c1.rename(f"{top}/there/z", f"{top}/there/w")
    c1.rename(f"{top}/there/z", f"{top}/there/w", replace=True)
    assert clients["n3"].resolve(f"{top}/there/w") == obj
    with pytest.raises(NamespaceError, match="into itself"):
        c1.rename(top, f"{top}/there/inside")


def test_unbind_rules(clients: dict[str, Client], top: str) -> None:
    c2 = clients["n2"]
    obj = c2.create(SMALL)
    c2.mkdir(f"{top}/d/e", parents=True)
    c2.bind(f"{top}/d/e/o", obj)
    with pytest.raises(DirectoryNotEmpty):
        c2.unbind(f"{top}/d")
    assert c2.unbind(f"{top}/d/e/o") == Binding("o", "object", obj)
    assert c2.read(obj) == b""  # the object stays; only its name is gone
    assert c2.unbind(f"{top}/d/e").kind == "directory"
    c2.symlink(f"{top}/l", "/nowhere")
    link = clients["n3"].lookup(f"{top}/l", nofollow=True)
    assert link == Binding("l", "symlink", None, "/nowhere")
    assert c2.unbind(f"{top}/l").text == "/nowhere"
    with pytest.raises(NameNotFound):
        c2.unbind(f"{top}/l")
    with pytest.raises(InvalidArgument):
        c2.unbind("/")


# -- bad paths ---------------------------------------------------------------------------


def test_bad_paths_get_clear_errors_through_the_cluster(
    clients: dict[str, Client], top: str
) -> None:
    c3 = clients["n3"]
    obj = c3.create(SMALL)
    c3.bind(f"{top}/obj", obj)
    c3.symlink(f"{top}/loop", f"{top}/loop")
    bad: list[tuple[Callable[[], Any], type[DtwzError], str]] = [
        (lambda: c3.resolve("relative/name"), InvalidArgument, "32 hex digits"),
        (lambda: c3.lookup("relative/name"), InvalidName, "absolute path"),
        (lambda: c3.resolve("/" + "n" * 256), InvalidName, "at most 255"),
        (lambda: c3.resolve("/d" * 65), InvalidName, "at most 64"),
        (lambda: c3.resolve("/" + "p/" * 2100), InvalidName, "too long"),
        (lambda: c3.mkdir(f"{top}/.."), InvalidName, "name the entry"),
        (lambda: c3.bind("/", obj), InvalidName, "root"),
        (lambda: c3.resolve(f"{top}/loop"), SymlinkLoop, "symbolic links"),
        (lambda: c3.resolve(f"{top}/obj/below"), NotADirectory, "not a directory"),
        (lambda: c3.bind(f"{top}/obj/below", obj), NotADirectory, "not a directory"),
        (lambda: c3.listdir(f"{top}/obj"), NotADirectory, "not a directory"),
        (lambda: c3.resolve(f"{top}/absent/x"), NameNotFound, "no 'absent'"),
        (lambda: c3.mkdir(f"{top}/absent/x"), NameNotFound, "no 'absent'"),
        (lambda: c3.bind(f"{top}/new", ObjectId(b"\x07" * 16)), ObjectNotFound, "no node"),
        (lambda: c3.symlink(f"{top}/s", "a/" + "b" * 300), InvalidName, "at most 255"),
        (lambda: c3.mkdir(f"{top}/obj"), NameExists, "bound already"),
        (lambda: c3.bind(f"{top}/obj", obj), NameExists, "bound already"),
        (lambda: c3.write_name_pointer(obj, DATA_START, "not/absolute"), InvalidName, "abs"),
    ]
    for call, error, text in bad:
        with pytest.raises(error, match=text):
            call()
    assert c3.resolve(f"{top}/obj") == obj  # nothing was lost on the way
    # the longest path there may be, URL-encoded three times over, still travels
    longest = "/" + "/".join(["é" * 127] * 16)  # 4096 bytes of UTF-8
    with pytest.raises(NameNotFound):
        c3.resolve(longest)


# -- the root and the directories survive their homes --------------------------------------


@pytest.mark.timeout(180)
def test_root_and_directories_survive_kill_9_of_their_homes(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(3)
    with cluster.client("n1") as c1, cluster.client("n2") as c2, cluster.client("n3") as c3:
        obj = c2.create(SMALL, b"survivor", node="n2")
        c3.mkdir("/on1/deeper", parents=True)  # homed with the root, on n1
        on2 = c3.mkdir("/on1/deeper/on2", home="n2")
        assert c1.locate(on2).home == "n2" and c1.resolve("/on1/deeper/on2") == on2
        c3.bind("/on1/deeper/on2/obj", obj)
        c1.symlink("/short", "/on1/deeper/on2/obj")
        assert c3.read("/short") == b"survivor"
        root = c3.root()

        for victim in ("n1", "n2"):  # the root's home, then the other directory's
            cluster.kill(victim)
            wait_until(lambda v=victim: _sees_dead(c3, v), 15.0, f"n3 sees {victim} dead")
            with pytest.raises(HomeUnreachable, match="root directory" if victim == "n1" else None):
                c3.resolve("/on1/deeper/on2/obj")
            cluster.start([victim])  # same folder, same ports: its store is intact
            for client in (c1, c2, c3):
                assert client.root() == root
                assert client.resolve("/on1/deeper/on2/obj") == obj
                assert client.read("/short") == b"survivor"
                assert [b.name for b in client.listdir("/")] == ["on1", "short"]
        assert c1.locate(root).home == "n1"  # not created a second time anywhere
        c2.bind("/on1/after", c2.create(SMALL))
        assert c3.resolve("/on1/after")


def _sees_dead(client: Client, node_id: str) -> bool:
    members = client.cluster_status()["members"]
    return any(m["node_id"] == node_id and m["state"] == "dead" for m in members)


# -- dtwz.connect ------------------------------------------------------------------------


def test_connect_finds_a_node(
    cluster3: LocalCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = cluster3.node("n2").url
    with dtwz.connect(url) as client:
        assert client.url == url
    monkeypatch.setenv("DTWZ_NODE", cluster3.node("n3").url)
    with dtwz.connect() as client:
        assert client.health()["node_id"] == "n3"
    monkeypatch.delenv("DTWZ_NODE")
    monkeypatch.setenv("DTWZ_CLUSTER", str(cluster3.data_dir))
    with dtwz.connect() as client:
        assert client.root() == root_id("dtwz")
    listed = CliRunner().invoke(cli, ["remote", "resolve", "/", "--json"])  # no --node
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["object_id"] == root_id("dtwz").hex()
    monkeypatch.setenv("DTWZ_CLUSTER", str(tmp_path / "none"))
    with pytest.raises(ClusterError, match="dtwz cluster up"):
        dtwz.connect()


# -- the command line ----------------------------------------------------------------------


def remote(cluster: LocalCluster, *args: str, node: str = "n1") -> Result:
    return CliRunner().invoke(cli, ["remote", "--node", cluster.node(node).url, *args])


def test_the_namespace_commands(cluster3: LocalCluster, clients: dict[str, Client]) -> None:
    top = f"/cli{next(_unique)}"
    made = remote(cluster3, "mkdir", "-p", f"{top}/kvs", "--json")
    assert made.exit_code == 0, made.output
    kvs = json.loads(made.output)["object_id"]
    created = remote(cluster3, "create", "--data", "hello", node="n2")
    oid = created.output.splitlines()[0]
    assert remote(cluster3, "bind", f"{top}/kvs/index", oid).exit_code == 0

    resolved = remote(cluster3, "resolve", f"{top}/kvs/index", "--json", node="n3")
    doc = json.loads(resolved.output)
    assert (doc["object_id"], doc["home"], doc["kind"]) == (oid, "n2", "object")
    assert doc["version"] == 1 and doc["epoch"] == 1
    text = remote(cluster3, "resolve", f"{top}/kvs", node="n3").output
    assert text.startswith(f"{kvs} (directory)  home n1")

    assert remote(cluster3, "get", f"{top}/kvs/index", node="n3").output == "hello"
    assert remote(cluster3, "put", f"{top}/kvs/index", " world").exit_code == 0
    assert remote(cluster3, "get", f"{top}/kvs/index", "--latest").output.startswith("hello")
    assert "home       n2" in remote(cluster3, "show", f"{top}/kvs/index").output
    assert remote(cluster3, "locate", f"{top}/kvs/index").output.startswith(f"{oid}  home n2")

    assert remote(cluster3, "ln", "-s", "kvs/index", f"{top}/link").exit_code == 0
    assert remote(cluster3, "ln", f"{top}/kvs/index", f"{top}/again").exit_code == 0
    listing = remote(cluster3, "ls", top).output.splitlines()
    assert listing == [f"{kvs}  kvs/", "link -> kvs/index", f"{oid}  again"]
    link = remote(cluster3, "resolve", "--nofollow", f"{top}/link", "--json")
    assert json.loads(link.output)["text"] == "kvs/index"

    holder = remote(cluster3, "create").output.splitlines()[0]
    late = remote(cluster3, "link", holder, f"{top}/link", "--late", "--at", "0x1000", "--json")
    assert late.exit_code == 0, late.output
    assert json.loads(late.output)["late"] is True
    deref = remote(cluster3, "deref", holder, "--at", "0x1000", node="n2")
    assert deref.output.startswith(oid)

    assert remote(cluster3, "mv", f"{top}/again", f"{top}/kvs/copy").exit_code == 0
    assert clients["n2"].resolve(f"{top}/kvs/copy").hex() == oid
    gone = remote(cluster3, "rm", f"{top}/kvs/copy")
    assert gone.exit_code == 0 and f"was {oid}" in gone.output

    refused = remote(cluster3, "bind", f"{top}/kvs/index", oid)
    assert refused.exit_code == 1 and "bound already" in refused.output
    assert remote(cluster3, "rm", f"{top}/kvs").exit_code == 1  # not empty
    bad = remote(cluster3, "get", "kvs/index")
    assert bad.exit_code == 2 and "a name like /kvs/index" in bad.output
    assert remote(cluster3, "resolve", f"{top}/" + "x" * 300).exit_code == 2
    assert remote(cluster3, "ls", f"{top}/nope").exit_code == 1
    late_by_id = remote(cluster3, "link", holder, oid, "--late")
    assert late_by_id.exit_code == 2 and "--late needs a name" in late_by_id.output
