"""The namespace inside node processes' own machinery: two real nodes run in this test's
event loop (A, the seed, homes the root; B joins through it), so the test can reach
what HTTP does not show: the root created once, and FOT name entries followed by
the node's own store, late-bound through ``resolve_for_pointer``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dtwz.errors import (
    InvalidArgument,
    InvalidName,
    NameExists,
    NotADirectory,
    ObjectNotFound,
    UnresolvedName,
)
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.config import NodeConfig
from dtwz.node.launcher import free_ports
from dtwz.node.server import Node
from dtwz.resolver.directory_objects import EntryKind
from dtwz.resolver.membership import MemberState
from dtwz.resolver.names import root_id
from dtwz.resolver.namespace import ACT_BIND, ACT_SYMLINK
from dtwz.service.objects import OP_NAME_POINTER
from dtwz.wire.messages import DirOp, DirResult, TxOp


def config(node_id: str, data: Path, seeds: list[str]) -> NodeConfig:
    peer, http = free_ports(2)
    return NodeConfig(
        node_id=node_id,
        data_dir=data / node_id,
        peer_port=peer,
        http_port=http,
        seeds=seeds,
        durable=False,
        keys_dir=data / "keys",
    )


async def both_alive(a: Node, b: Node) -> None:
    async def wait() -> None:
        while (
            a.membership.state("b") != MemberState.ALIVE
            or b.membership.state("a") != MemberState.ALIVE
        ):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), 30)


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a_config = config("a", tmp_path, [])
    a_config.seeds = [a_config.peer_addr]
    async with Node(a_config) as a, Node(config("b", tmp_path, [a_config.peer_addr])) as b:
        await both_alive(a, b)
        yield a, b


async def test_the_root_is_created_once_by_its_home(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert a.names is not None and b.names is not None
    assert a.names.is_root_home and not b.names.is_root_home
    root = root_id("dtwz")
    assert a.names.root == b.names.root == root
    assert a.store is not None and a.store.exists(root)
    assert b.store is not None and not b.store.exists(root)
    await b.names.mkdir("/made-through-b")
    assert a.store.get(root).header().version == 2  # created (1), then one binding


async def test_a_restarted_root_home_keeps_its_root(tmp_path: Path) -> None:
    a_config = config("a", tmp_path, [])
    async with Node(a_config) as a:
        assert a.names is not None
        await a.names.mkdir("/kept")
    async with Node(a_config) as again:
        assert again.names is not None
        listed = await again.names.listdir("/")
        assert [e.name for e in listed[1]] == ["kept"]


async def test_the_nodes_store_follows_name_entries_late(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    assert b.service is not None and b.names is not None and b.store is not None
    first = (await b.service.create(8192, data=b"first")).object_id
    second = (await b.service.create(8192, data=b"second")).object_id
    holder = (await b.service.create(8192)).object_id
    op = TxOp(OP_NAME_POINTER, holder, DATA_START, b"/dir/x", target_offset=DATA_START)
    word = (await b.service.transact([op])).results[0]
    await b.names.mkdir("/dir")  # homed with the root, on A
    await b.names.bind("/dir/x", first)
    loop = asyncio.get_running_loop()

    def follow() -> ObjectId:  # as code running beside the node (a worker thread) does
        assert b.store is not None
        target, offset = b.store.get(holder).follow(word)
        assert offset == DATA_START
        return target.object_id

    assert await loop.run_in_executor(None, follow) == first
    assert follow() == first  # on the loop: from what the node holds, no round trip

    assert a.names is not None
    await a.names.bind("/dir/x", second, replace=True)  # rebound through the other node
    assert await loop.run_in_executor(None, follow) == second

    b.service.copies.drop_home("a")  # B no longer holds the directories
    with pytest.raises(UnresolvedName, match="cannot wait"):
        follow()
    assert await loop.run_in_executor(None, follow) == second
    await a.names.unbind("/dir/x")
    with pytest.raises(UnresolvedName, match="no 'x' in /dir"):
        await loop.run_in_executor(None, follow)


async def test_dir_ops_at_the_home_apply_once_and_refuse_bad_input(
    nodes: tuple[Node, Node],
) -> None:
    a, b = nodes
    assert a.names is not None and b.service is not None
    root = a.names.root
    obj = (await b.service.create(8192, data=b"x")).object_id
    bind = DirOp(b"\x01" * 16, ACT_BIND, root, "once", EntryKind.OBJECT, obj)
    first = await b.request("a", bind)
    again = await b.request("a", bind)  # a retry: the same answer, applied once
    assert isinstance(first, DirResult) and again == first
    listed = await a.names.listdir("/")
    assert [e.name for e in listed[1]] == ["once"]
    with pytest.raises(NameExists):  # a new transaction binding the same name
        await b.request("a", DirOp(b"\x02" * 16, ACT_BIND, root, "once", 1, obj))
    bad = [
        (DirOp(b"\x03" * 16, 99, root, "x"), InvalidArgument),
        (DirOp(b"\x04" * 16, ACT_BIND, root, "a/b", 1, obj), InvalidName),
        (DirOp(b"\x05" * 16, ACT_BIND, root, "..", 1, obj), InvalidName),
        (DirOp(b"\x06" * 16, ACT_BIND, root, "z", 3, obj), InvalidArgument),
        (DirOp(b"\x07" * 16, ACT_SYMLINK, root, "s", text="/" + "x" * 300), InvalidName),
        (DirOp(b"\x08" * 16, ACT_BIND, obj, "x", 1, obj), ObjectNotFound),  # not homed on A
    ]
    for op, error in bad:
        with pytest.raises(error):
            await b.request("a", op)
    assert a.service is not None
    plain = (await a.service.create(8192, data=b"not a directory")).object_id
    with pytest.raises(NotADirectory):
        await b.request("a", DirOp(b"\x09" * 16, ACT_BIND, plain, "x", 1, obj))
    assert [e.name for e in (await a.names.listdir("/"))[1]] == ["once"]
