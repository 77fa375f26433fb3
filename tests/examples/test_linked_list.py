"""The linked list across many objects: order, links, edits, limits and persistence."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz import Ref, Store
from dtwz.errors import FormatError, InvalidArgument
from dtwz.format.layout import DATA_START
from examples.linked_list import DListNode, LinkedList, ListAnchor, NodeBlock, max_value_size


def values_of(linked: LinkedList) -> list[bytes]:
    return [bytes(value) for value in linked]


def test_build_and_iterate_in_order(store: Store) -> None:
    linked = LinkedList.create(store)
    assert len(linked) == 0 and values_of(linked) == [] and linked.find(b"x") is None
    assert linked.extend([]) == []
    refs = linked.extend(b"v%d" % i for i in range(100))
    assert len(refs) == 100 and len(linked) == 100
    assert values_of(linked) == [b"v%d" % i for i in range(100)]
    assert [bytes(v) for v in reversed(linked)] == [b"v%d" % i for i in reversed(range(100))]
    assert [node.ref for node in linked.nodes()] == refs


def test_nodes_are_spread_over_many_objects(store: Store) -> None:
    linked = LinkedList.create(store, block_size=1 << 13, nodes_per_block=8)
    linked.extend(b"%d" % i for i in range(200))
    objects = linked.objects()
    assert len(objects) == 25  # 200 nodes, 8 per block
    assert sorted(objects) == sorted(linked.blocks())
    assert linked.anchor_id not in objects
    # every step from one block to the next crosses objects through the FOT
    nodes = list(linked.nodes())
    for here, there in itertools.pairwise(nodes):
        if here.object_id != there.object_id:
            targets = {e.target for _, e in store.get(here.object_id).fot_entries()}
            assert there.object_id in targets
            assert DListNode.FIELDS["next"].raw(here) >> 48 != 0  # FOT index, not 0


def test_values_are_zero_copy_views(store: Store) -> None:
    linked = LinkedList.create(store)
    ref = linked.append(b"hello")
    node = linked.find(b"hello")
    assert node is not None and node.ref == ref
    value = linked.value(node)
    assert value.readonly and value.obj is store.get(ref.object_id).view.obj
    assert value == b"hello"


def test_find_by_value_or_predicate(store: Store) -> None:
    linked = LinkedList.create(store, nodes_per_block=4)
    refs = linked.extend(b"item %02d" % i for i in range(30))
    found = linked.find(b"item 17")
    assert found is not None and found.ref == refs[17]
    wanted = linked.find(lambda v: bytes(v).endswith(b"9") and bytes(v) > b"item 10")
    assert wanted is not None and wanted.ref == refs[19]
    assert linked.find(b"item 99") is None


def test_insert_prepend_and_remove(store: Store) -> None:
    linked = LinkedList.create(store, nodes_per_block=4)
    refs = linked.extend([b"a", b"b", b"c"])
    linked.insert_after(refs[0], b"a2")
    linked.insert_after(refs[2], b"d")  # after the tail: the new tail
    linked.prepend(b"start")
    linked.append(b"end")
    assert values_of(linked) == [b"start", b"a", b"a2", b"b", b"c", b"d", b"end"]
    assert [bytes(v) for v in reversed(linked)] == [b"end", b"d", b"c", b"b", b"a2", b"a", b"start"]
    head = linked.find(b"start")
    tail = linked.find(b"end")
    assert head is not None and tail is not None
    linked.remove(refs[1])  # middle
    linked.remove(head)
    linked.remove(tail)
    assert values_of(linked) == [b"a", b"a2", b"c", b"d"]
    assert [bytes(v) for v in reversed(linked)] == [b"d", b"c", b"a2", b"a"]
    assert len(linked) == 4
    with pytest.raises(InvalidArgument, match="not a node"):
        linked.remove(refs[1])  # already removed
    assert len(linked) == 4


def test_remove_everything_then_reuse(store: Store) -> None:
    linked = LinkedList.create(store)
    refs = linked.extend([b"x", b"y"])
    linked.remove(refs[0])
    linked.remove(refs[1])
    assert len(linked) == 0 and values_of(linked) == []
    anchor = store.view(ListAnchor, linked.anchor_id)
    assert anchor.head is None and anchor.tail is None
    linked.append(b"z")
    assert values_of(linked) == [b"z"] and [bytes(v) for v in reversed(linked)] == [b"z"]


def test_persistence_across_close_and_reopen(store_path: Path) -> None:
    with Store.init(store_path) as store:
        linked = LinkedList.create(store, nodes_per_block=16)
        linked.extend(b"%d" % i for i in range(500))
        linked.insert_after(linked.find(b"250") or pytest.fail("no 250"), b"250.5")
        handle = linked.anchor_id
        objects = linked.objects()
    with Store.open(store_path) as store:
        linked = LinkedList.open(store, handle)
        expected = [b"%d" % i for i in range(251)] + [b"250.5"]
        expected += [b"%d" % i for i in range(251, 500)]
        assert values_of(linked) == expected
        assert linked.objects() == objects and len(objects) == 32


def test_value_size_limit(store: Store) -> None:
    linked = LinkedList.create(store, block_size=1 << 13, nodes_per_block=4)
    assert linked.max_value == max_value_size(1 << 13, 4)
    linked.append(b"keep")
    biggest = b"b" * linked.max_value
    for _ in range(4):  # a whole block of the largest values fits
        linked.append(biggest)
    with pytest.raises(InvalidArgument, match="does not fit in a node"):
        linked.extend([b"ok", b"b" * (linked.max_value + 1)])
    assert len(linked) == 5 and values_of(linked)[0] == b"keep"  # the batch did nothing
    with pytest.raises(InvalidArgument):
        LinkedList.create(store, block_size=1 << 12, nodes_per_block=4)


def test_the_on_object_layout(store: Store) -> None:
    linked = LinkedList.create(store, nodes_per_block=2)
    refs = linked.extend([b"one", b"two", b"three"])
    anchor = store.view(ListAnchor, linked.anchor_id)
    assert bytes(anchor.magic) == b"DTWZDLL1"
    assert anchor.length == 3 and anchor.blocks == 2 and anchor.nodes_per_block == 2
    assert anchor.head.ref == refs[0] and anchor.tail.ref == refs[2]
    first_block = store.view(NodeBlock, refs[0].object_id)
    assert bytes(first_block.magic) == b"DTWZDLB1"
    assert first_block.nodes == 2 and first_block.prev_block is None
    assert first_block.anchor == anchor
    assert refs[0].offset == DATA_START + NodeBlock.SIZE
    assert refs[2].object_id != refs[0].object_id
    assert anchor.block.prev_block == first_block
    node = store.view(DListNode, *refs[0])
    assert node.value_len == 3
    assert bytes(store.read(refs[0].object_id, refs[0].offset + DListNode.SIZE, 3)) == b"one"


def test_open_and_edits_refuse_other_objects(store: Store) -> None:
    with store.transaction() as tx:
        other = tx.create()
        tx.append(other, b"just bytes that are no list at all")
    with pytest.raises(FormatError, match="not a list anchor"):
        LinkedList.open(store, other)
    linked = LinkedList.create(store)
    ref = linked.append(b"a")
    stranger = LinkedList.create(store)
    for bad in (Ref(other, DATA_START), Ref(ref.object_id, ref.offset + 4096)):
        with pytest.raises(InvalidArgument, match="not a node of list"):
            linked.insert_after(bad, b"x")
    with pytest.raises(InvalidArgument, match="not a node of list"):
        stranger.remove(ref)
    assert values_of(linked) == [b"a"] and len(stranger) == 0


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("list-property") / "store"
    Store.init(path, durable=False).close()
    return path


edits = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(max_size=20)),
        st.tuples(st.just("prepend"), st.binary(max_size=20)),
        st.tuples(st.just("insert_after"), st.integers(0, 1000), st.binary(max_size=20)),
        st.tuples(st.just("remove"), st.integers(0, 1000)),
        st.tuples(st.just("extend"), st.lists(st.binary(max_size=8), max_size=6)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=edits)
def test_behaves_like_a_python_list(shared_store: Path, ops: list[tuple[Any, ...]]) -> None:
    with Store.open(shared_store, durable=False) as store:
        linked = LinkedList.create(store, block_size=1 << 13, nodes_per_block=3)
        model: list[bytes] = []
        for op, *args in ops:
            nodes = list(linked.nodes())
            if op == "append":
                linked.append(args[0])
                model.append(args[0])
            elif op == "prepend":
                linked.prepend(args[0])
                model.insert(0, args[0])
            elif op == "extend":
                linked.extend(args[0])
                model.extend(args[0])
            elif nodes and op == "insert_after":
                at = args[0] % len(nodes)
                linked.insert_after(nodes[at], args[1])
                model.insert(at + 1, args[1])
            elif nodes and op == "remove":
                at = args[0] % len(nodes)
                linked.remove(nodes[at])
                del model[at]
            assert len(linked) == len(model)
        assert values_of(linked) == model
        assert [bytes(v) for v in reversed(linked)] == model[::-1]
