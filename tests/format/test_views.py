"""Typed views: layout of fields, reading and writing in place, following pointers."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz import F64, I64, U8, U16, U32, U64, Bytes, Layout, Pointer, Ref, Store
from dtwz.errors import InvalidArgument, PointerOutOfBounds
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, FotFlags


class ViewsNode(Layout):
    value = U64()
    next = Pointer("ViewsNode")


class ViewsMixed(Layout):
    a = U8()
    b = U32()
    c = U16()
    d = U64()
    e = I64()
    f = F64()
    tag = Bytes(5)
    any = Pointer()


class ViewsChild(ViewsMixed):
    extra = U8()


class ViewsSmall(Layout):
    x = U8()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "s", create=True, durable=False) as s:
        yield s


def new_object(store: Store, size: int = 1 << 16) -> ObjectId:
    with store.transaction() as tx:
        return tx.create(size)


def test_field_offsets_are_naturally_aligned() -> None:
    offsets = {name: f.offset for name, f in ViewsMixed.FIELDS.items()}
    assert offsets == {"a": 0, "b": 4, "c": 8, "d": 16, "e": 24, "f": 32, "tag": 40, "any": 48}
    assert ViewsMixed.SIZE == 56 and ViewsMixed.ALIGN == 8
    assert ViewsNode.SIZE == 16
    assert ViewsSmall.SIZE == 8  # rounded up to the struct's alignment


def test_subclass_fields_follow_the_parent() -> None:
    assert list(ViewsChild.FIELDS) == [*ViewsMixed.FIELDS, "extra"]
    assert ViewsChild.FIELDS["extra"].offset == ViewsMixed.SIZE
    assert ViewsChild.SIZE == ViewsMixed.SIZE + 8


def test_views_are_not_constructed_directly() -> None:
    with pytest.raises(TypeError):
        ViewsNode()


def test_write_in_transaction_read_outside(store: Store) -> None:
    oid = new_object(store)
    with store.transaction() as tx:
        m = tx.new(ViewsMixed, oid, a=255, b=2**32 - 1, c=7, d=2**64 - 1, e=-5, f=1.5)
        m.tag = b"hi"
        # a transaction reads its own writes
        assert (m.a, m.b, m.c, m.d, m.e, m.f) == (255, 2**32 - 1, 7, 2**64 - 1, -5, 1.5)
        assert bytes(m.tag) == b"hi\0\0\0"
        at = m.offset
        assert m.object_id == oid and m.ref == Ref(oid, at)
        # nobody else sees them before commit
        assert bytes(store.read(oid, at, 8)) == bytes(8)
    ro = store.view(ViewsMixed, oid, at)
    assert (ro.a, ro.b, ro.c, ro.d, ro.e, ro.f) == (255, 2**32 - 1, 7, 2**64 - 1, -5, 1.5)
    assert isinstance(ro.tag, memoryview)  # zero-copy outside transactions
    assert bytes(ro.tag) == b"hi\0\0\0"
    assert ro.any is None
    assert ro.as_dict() == {
        "a": 255,
        "b": 2**32 - 1,
        "c": 7,
        "d": 2**64 - 1,
        "e": -5,
        "f": 1.5,
        "tag": b"hi\0\0\0",
        "any": 0,
    }
    raw = bytes(store.read(oid, at, ViewsMixed.SIZE))
    assert struct.unpack_from("<B3xIH6xQqd", raw) == (255, 2**32 - 1, 7, 2**64 - 1, -5, 1.5)


def test_linked_list_within_one_object(store: Store) -> None:
    oid = new_object(store)
    with store.transaction() as tx:
        head = tx.new(ViewsNode, oid, value=1)
        node = head
        for value in range(2, 6):
            node.next = tx.new(ViewsNode, oid, value=value)
            node = node.next
        assert [n.value for n in _walk(head)] == [1, 2, 3, 4, 5]
        start = head.offset
    assert [n.value for n in _walk(store.view(ViewsNode, oid, start))] == [1, 2, 3, 4, 5]
    # pointers inside one object use FOT index 0 and add no entry
    assert store.header(oid).fot_count == 0
    word = ViewsNode.FIELDS["next"].raw(store.view(ViewsNode, oid, start))  # type: ignore[attr-defined]
    assert word >> 48 == 0


def _walk(node: ViewsNode | None) -> Iterator[ViewsNode]:
    while node is not None:
        yield node
        node = node.next


def test_cross_object_pointers_share_one_fot_entry(store: Store) -> None:
    a, b = new_object(store), new_object(store)
    with store.transaction() as tx:
        targets = [tx.new(ViewsNode, b, value=10 * i) for i in range(3)]
        sources = [tx.new(ViewsNode, a, value=i) for i in range(3)]
        for source, target in zip(sources, targets, strict=True):
            source.next = target
        # followed inside the transaction before the entry is committed
        assert [s.next.value for s in sources] == [0, 10, 20]
        assert sources[1].next == targets[1]
        at = [s.offset for s in sources]
    assert store.header(a).fot_count == 1  # same target and flags: one entry
    got = [store.view(ViewsNode, a, offset).next for offset in at]
    assert [g.object_id for g in got] == [b, b, b]
    assert [g.value for g in got] == [0, 10, 20]
    # a later transaction reuses the committed entry too
    with store.transaction() as tx:
        tx.new(ViewsNode, a, value=99).next = tx.view(ViewsNode, b, targets[0].offset)
    assert store.header(a).fot_count == 1
    # other rights need another entry
    with store.transaction() as tx:
        word = tx.pointer_to(a, b, targets[0].offset, FotFlags.READ)
    assert word >> 48 == 2
    assert store.header(a).fot_count == 2


def test_untyped_pointer_yields_refs(store: Store) -> None:
    a, b = new_object(store), new_object(store)
    with store.transaction() as tx:
        m = tx.new(ViewsMixed, a)
        m.any = Ref(b, DATA_START + 8)
        assert m.any == Ref(b, DATA_START + 8)
        at = m.offset
    assert store.view(ViewsMixed, a, at).any == Ref(b, DATA_START + 8)
    with store.transaction() as tx:
        m = tx.view(ViewsMixed, a, at)
        m.any = None
    assert store.view(ViewsMixed, a, at).any is None


def test_read_only_views_refuse_every_write(store: Store) -> None:
    a = new_object(store)
    with store.transaction() as tx:
        at = tx.new(ViewsMixed, a, d=3).offset
        target = tx.new(ViewsNode, a)
    before = bytes(store.read(a, DATA_START, 256))
    ro = store.view(ViewsMixed, a, at)
    for name, value in [("a", 1), ("d", 5), ("f", 2.0), ("tag", b"x"), ("any", None)]:
        with pytest.raises(InvalidArgument, match="read-only"):
            setattr(ro, name, value)
    with pytest.raises(InvalidArgument, match="read-only"):
        ro.any = Ref(a, DATA_START)
    with pytest.raises(InvalidArgument, match="read-only"):
        ro.any = target
    assert bytes(store.read(a, DATA_START, 256)) == before
    assert ro.d == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("a", 256),
        ("a", -1),
        ("b", 2**32),
        ("c", 2**16),
        ("d", -1),
        ("d", 2**64),
        ("e", 2**63),
        ("f", "1.0"),
        ("tag", b"toolong"),
        ("any", 12345),
    ],
)
def test_bad_field_values(store: Store, field: str, value: object) -> None:
    a = new_object(store)
    with store.transaction() as tx:
        m = tx.new(ViewsMixed, a, a=9)
        with pytest.raises(InvalidArgument):
            setattr(m, field, value)
        assert m.a == 9
        at = m.offset
    assert store.view(ViewsMixed, a, at).a == 9  # the transaction is still good


def test_new_with_unknown_field(store: Store) -> None:
    a = new_object(store)
    with store.transaction() as tx, pytest.raises(InvalidArgument, match="no field"):
        tx.new(ViewsNode, a, nope=1)


@pytest.mark.parametrize("offset", [0, 8, DATA_START - 1, (1 << 16) - 8, 1 << 16, 1 << 40])
def test_views_out_of_bounds(store: Store, offset: int) -> None:
    a = new_object(store)
    with pytest.raises(PointerOutOfBounds):
        store.view(ViewsNode, a, offset)
    with store.transaction() as tx, pytest.raises(PointerOutOfBounds):
        tx.view(ViewsNode, a, offset)


def test_view_identity(store: Store) -> None:
    a = new_object(store)
    with store.transaction() as tx:
        n = tx.new(ViewsNode, a)
        at = n.offset
    v1, v2 = store.view(ViewsNode, a, at), store.view(ViewsNode, a, at)
    assert v1 == v2 and hash(v1) == hash(v2)
    assert v1 != store.view(ViewsNode, a, at + 16)
    assert repr(v1) == f"ViewsNode@{a.hex()}:{at:#x}"
    assert Layout.resolve("ViewsNode", __name__) is ViewsNode


def test_view_of_default_offset_is_the_data_start(store: Store) -> None:
    a = new_object(store)
    with store.transaction() as tx:
        first = tx.new(ViewsNode, a, value=42)
    assert first.offset == DATA_START
    assert store.view(ViewsNode, a).value == 42
