"""The namespace's pure parts: path rules and limits, the root's identity, directory
objects (layout, edits, tombstones, packing), the walk and the name cache. Directories
live in a real local store; the walk is driven from it, as a node drives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz import Store
from dtwz.errors import (
    CorruptObject,
    InvalidArgument,
    InvalidName,
    NameExists,
    NameNotFound,
    NotADirectory,
    ObjectFull,
    SymlinkLoop,
)
from dtwz.format.ids import ObjectId, derive_object_id
from dtwz.format.layout import DATA_START
from dtwz.resolver import directory_objects as dirs
from dtwz.resolver.directory_objects import DIRECTORY_SIZE, DirHeader, EntryKind
from dtwz.resolver.names import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_SYMLINKS,
    ROOT_PROT,
    NameCache,
    Resolved,
    Walk,
    check_name,
    root_home_address,
    root_id,
    root_nonce,
    split_parent,
    split_path,
)

# -- paths ------------------------------------------------------------------------------


def test_paths_split_into_components() -> None:
    assert split_path("/") == []
    assert split_path("/kvs/index") == ["kvs", "index"]
    assert split_path("//kvs///index/") == ["kvs", "index"]  # slashes collapse
    assert split_path("/a/./b/../c") == ["a", "b", "..", "c"]  # '..' is the walk's business
    assert split_path("../x", relative=True) == ["..", "x"]
    assert split_path("/é/名前") == ["é", "名前"]
    assert split_parent("/a/b") == ("/a", "b")
    assert split_parent("/a") == ("/", "a")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("kvs/index", "absolute path"),
        ("/" + "x" * (MAX_NAME_BYTES + 1), "at most 255"),
        ("/" + "é" * 128, "at most 255"),  # 256 bytes of UTF-8
        ("/a" * (MAX_DEPTH + 1), "at most 64"),
        ("/" + "/".join(["y" * 200] * 21), "too long"),  # > 4096 bytes
        ("/a\0b", "NUL"),
        ("/\udcff", "UTF-8"),
    ],
)
def test_bad_paths_are_refused_clearly(path: str, why: str) -> None:
    with pytest.raises(InvalidName, match=why):
        split_path(path)


def test_names_that_cannot_be_bound() -> None:
    for name in ("", ".", "..", "a/b", "x" * 256):
        with pytest.raises(InvalidName):
            check_name(name)
    assert check_name("x" * MAX_NAME_BYTES) == "x" * MAX_NAME_BYTES
    for path in ("/", "/a/.."):
        with pytest.raises(InvalidName):
            split_parent(path)
    assert issubclass(InvalidName, InvalidArgument)  # a usage error for the CLI
    assert len(("/" + "y" * 200) * 20) <= MAX_PATH_BYTES


@pytest.mark.parametrize(
    "char",
    [
        *(chr(c) for c in (*range(1, 0x20), 0x7F, *range(0x80, 0xA0))),  # C0, DEL, C1
        "\u2028",  # line separator
        "\u2029",  # paragraph separator
        *"\u202a\u202b\u202c\u202d\u202e",  # embeddings, pop, overrides
        *"\u2066\u2067\u2068\u2069",  # isolates
        *"\u200e\u200f\u061c",  # marks
    ],
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_names_refuse_control_and_bidirectional_formatting_characters(char: str) -> None:
    name = f"report{char}txt"
    with pytest.raises(InvalidName, match=f"U\\+{ord(char):04X}"):
        check_name(name)
    with pytest.raises(InvalidName):  # wherever a path is taken: a link's text too
        split_path(f"/a/{name}/b")
    with pytest.raises(InvalidName):
        split_path(f"../{name}", relative=True)


def test_names_keep_letters_of_every_script() -> None:
    for name in ("café", "данные", "日本語", "שלום", "مرحبا", "a b", "👩\u200d💻", "x\u00ady"):
        assert check_name(name) == name


# -- the root ---------------------------------------------------------------------------


def test_the_root_id_is_a_function_of_the_cluster_id() -> None:
    assert root_id("dtwz") == root_id("dtwz")
    assert root_id("dtwz") != root_id("other")
    # an ordinary derived ID: any node can check the root's metadata against it
    assert root_id("dtwz") == derive_object_id(root_nonce("dtwz"), bytes(16), 0, int(ROOT_PROT))


def test_the_root_home_depends_on_the_seeds_only() -> None:
    seeds = ["tcp://a:1", "tcp://b:1", "tcp://c:1"]
    home = root_home_address("dtwz", seeds, "tcp://b:1")
    assert home in seeds
    assert root_home_address("dtwz", seeds[::-1], "tcp://a:1") == home  # order, asker
    assert root_home_address("dtwz", [], "tcp://me:1") == "tcp://me:1"  # a cluster of one
    homes = {root_home_address(f"c{i}", seeds, "x") for i in range(40)}
    assert homes == set(seeds)  # different clusters spread over the seeds


# -- directory objects ------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.init(tmp_path / "store") as opened:
        yield opened


def new_dir(store: Store, size: int = DIRECTORY_SIZE) -> ObjectId:
    with store.transaction() as tx:
        oid = tx.create(size)
        dirs.init_directory(tx, oid)
    return oid


def new_object(store: Store, data: bytes = b"data") -> ObjectId:
    with store.transaction() as tx:
        oid = tx.create(8192)
        tx.append(oid, data)
    return oid


def test_bind_find_list_unbind(store: Store) -> None:
    d, a, b = new_dir(store), new_object(store), new_object(store)
    assert dirs.entries(store.get(d)) == []
    with store.transaction() as tx:
        assert dirs.bind(tx, d, "a", a) is None
        dirs.bind(tx, d, "b", b)
        dirs.symlink(tx, d, "link", "../x/y")
    obj = store.get(d)
    assert [(e.name, e.kind, e.target, e.text) for e in dirs.entries(obj)] == [
        ("a", EntryKind.OBJECT, a, ""),
        ("b", EntryKind.OBJECT, b, ""),
        ("link", EntryKind.SYMLINK, None, "../x/y"),
    ]
    found = dirs.find(obj, "b")
    assert found is not None and found.target == b
    assert dirs.find(obj, "nope") is None
    # targets are persistent pointers through FOT ID entries of the directory
    assert {e.target for _, e in obj.fot_entries()} == {a, b}
    with store.transaction() as tx:
        assert dirs.unbind(tx, d, "a").target == a
    assert [e.name for e in dirs.entries(store.get(d))] == ["b", "link"]
    header = DirHeader._at(store.get(d), DATA_START)
    assert (header.live, header.dead) == (2, 1)


def test_a_bound_name_is_not_bound_twice(store: Store) -> None:
    d, a, b = new_dir(store), new_object(store), new_object(store)
    with store.transaction() as tx:
        dirs.bind(tx, d, "x", a)
    with pytest.raises(NameExists), store.transaction() as tx:
        dirs.bind(tx, d, "x", b)
    with store.transaction() as tx:  # a rebinding in place
        assert dirs.bind(tx, d, "x", b, replace=True) == a
    assert [(e.name, e.target) for e in dirs.entries(store.get(d))] == [("x", b)]
    with store.transaction() as tx:
        dirs.bind(tx, d, "sub", new_dir(store), EntryKind.DIRECTORY)
    with pytest.raises(NameExists, match="directory"), store.transaction() as tx:
        dirs.bind(tx, d, "sub", a, replace=True)  # a directory is never replaced
    with pytest.raises(NameNotFound), store.transaction() as tx:
        dirs.unbind(tx, d, "nope")


def test_a_full_directory_packs_its_tombstones_then_says_full(store: Store) -> None:
    d = new_dir(store, 8192)  # 4 KiB of data area, minus the header and FOT room
    target = new_object(store)
    names = [f"name-{i:04d}" for i in range(400)]
    bound = 0
    with pytest.raises(ObjectFull):
        for name in names:
            with store.transaction() as tx:
                dirs.bind(tx, d, name, target)
            bound += 1
    assert bound > 50
    with store.transaction() as tx:  # free half of it
        for name in names[:bound:2]:
            dirs.unbind(tx, d, name)
    for name in names[bound : bound + bound // 2 - 1]:  # reuses the tombstones' room
        with store.transaction() as tx:
            dirs.bind(tx, d, name, target)
    live = [e.name for e in dirs.entries(store.get(d))]
    assert live == names[1:bound:2] + names[bound : bound + bound // 2 - 1]
    assert DirHeader._at(store.get(d), DATA_START).dead == 0


def test_objects_that_are_not_directories(store: Store) -> None:
    plain = new_object(store, b"just bytes, more than thirty-two of them......")
    assert not dirs.is_directory(store.get(plain))
    with pytest.raises(NotADirectory):
        dirs.entries(store.get(plain))
    d = new_dir(store)
    with store.transaction() as tx:  # a damaged table end
        tx.view(DirHeader, d, DATA_START).table_end = DATA_START + 5000
    with pytest.raises(CorruptObject):
        dirs.entries(store.get(d))


# -- the walk ---------------------------------------------------------------------------


class Tree:
    """A namespace in one store: the root plus what a test binds."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = new_dir(store)
        self.reads: list[ObjectId] = []

    def mkdir(self, parent: ObjectId, name: str) -> ObjectId:
        d = new_dir(self.store)
        with self.store.transaction() as tx:
            dirs.bind(tx, parent, name, d, EntryKind.DIRECTORY)
        return d

    def bind(self, parent: ObjectId, name: str, target: ObjectId) -> None:
        with self.store.transaction() as tx:
            dirs.bind(tx, parent, name, target)

    def symlink(self, parent: ObjectId, name: str, text: str) -> None:
        with self.store.transaction() as tx:
            dirs.symlink(tx, parent, name, text)

    def resolve(self, path: str, follow_last: bool = True) -> Resolved:
        walk = Walk(path, self.root, follow_last=follow_last)
        while (need := walk.needs) is not None:
            self.reads.append(need)
            obj = self.store.get(need)
            walk.feed(obj, obj.header().version)
        assert walk.result is not None
        return walk.result


@pytest.fixture
def tree(store: Store) -> Tree:
    return Tree(store)


def test_walk_a_four_level_path(tree: Tree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    c = tree.mkdir(b, "c")
    obj = new_object(tree.store)
    tree.bind(c, "d", obj)
    got = tree.resolve("/a/b/c/d")
    assert (got.object_id, got.kind, got.parent, got.name) == (obj, EntryKind.OBJECT, c, "d")
    assert got.directories == (tree.root, a, b, c)
    assert [oid for oid, _ in got.deps] == [tree.root, a, b, c] == tree.reads
    assert tree.resolve("/").object_id == tree.root
    assert tree.resolve("/a/b/..").object_id == a
    assert tree.resolve("/../a/./b/c/../../b").object_id == b  # '..' of the root is the root
    with pytest.raises(NameNotFound, match=r"no 'x' in /a/b"):
        tree.resolve("/a/b/x")
    with pytest.raises(NotADirectory, match="/a/b/c/d is not a directory"):
        tree.resolve("/a/b/c/d/e")


def test_symbolic_links(tree: Tree) -> None:
    a = tree.mkdir(tree.root, "a")
    b = tree.mkdir(a, "b")
    obj = new_object(tree.store)
    tree.bind(b, "data", obj)
    tree.symlink(tree.root, "abs", "/a/b")
    tree.symlink(a, "rel", "b/data")
    tree.symlink(b, "up", "../rel")
    assert tree.resolve("/abs/data").object_id == obj
    assert tree.resolve("/a/rel").object_id == obj
    assert tree.resolve("/a/b/up").object_id == obj
    link = tree.resolve("/a/rel", follow_last=False)
    assert (link.kind, link.text, link.parent) == (EntryKind.SYMLINK, "b/data", a)
    assert tree.resolve("/abs/..").object_id == a  # '..' after a link: where it led


def test_symlink_loops_are_refused(tree: Tree) -> None:
    tree.symlink(tree.root, "self", "/self")
    tree.symlink(tree.root, "ping", "pong")
    tree.symlink(tree.root, "pong", "./ping")
    for path in ("/self", "/ping", "/pong/x"):
        with pytest.raises(SymlinkLoop, match=f"more than {MAX_SYMLINKS}"):
            tree.resolve(path)
    # a long chain that is no loop but passes the limit is refused the same way
    for i in range(MAX_SYMLINKS + 1):
        tree.symlink(tree.root, f"s{i}", f"s{i + 1}")
    tree.bind(tree.root, f"s{MAX_SYMLINKS + 1}", new_object(tree.store))
    with pytest.raises(SymlinkLoop):
        tree.resolve("/s0")
    assert tree.resolve("/s1").kind == EntryKind.OBJECT


def test_a_walk_refuses_a_root_that_is_not_a_directory(store: Store) -> None:
    walk = Walk("/x", new_object(store))
    need = walk.needs
    assert need is not None
    with pytest.raises(NotADirectory, match="/ is not a directory"):
        walk.feed(store.get(need), 1)


# -- the cache --------------------------------------------------------------------------


def test_cache_entries_live_while_their_directories_keep_their_versions(tree: Tree) -> None:
    a = tree.mkdir(tree.root, "a")
    first, second = new_object(tree.store), new_object(tree.store)
    tree.bind(a, "x", first)
    cache = NameCache(max_entries=2)

    def version_of(oid: ObjectId) -> int | None:
        return tree.store.get(oid).header().version

    resolved = tree.resolve("/a/x")
    cache.put(resolved, True)
    hit = cache.get("/a/x", True, version_of)
    assert hit is not None and hit.object_id == first
    assert cache.get("/a/x", False, version_of) is None  # nofollow is its own entry
    with tree.store.transaction() as tx:  # a rebinding bumps the directory's version
        dirs.bind(tx, a, "x", second, replace=True)
    assert cache.get("/a/x", True, version_of) is None
    assert cache.stats == {"hits": 1, "misses": 1, "stale": 1}
    assert tree.resolve("/a/x").object_id == second
    assert cache.get("/a/x", True, lambda oid: None) is None  # a directory no longer held
    for path in ("/", "/a", "/a/x"):
        cache.put(tree.resolve(path), True)
    assert len(cache) == 2  # least recently used first out
