"""The store's semantics: atomic transactions, versions, FOT entries, names, persistence."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz import U64, Layout, ObjectFlags, ObjectId, Pointer, Store, Transaction
from dtwz.errors import (
    InvalidArgument,
    ObjectFull,
    ObjectNotFound,
    PointerOutOfBounds,
    ReadOnlyObject,
    StoreError,
    TransactionClosed,
    TransactionConflict,
    UnresolvedName,
)
from dtwz.format.ids import verify_object_id
from dtwz.format.layout import DATA_START, FotEntry, FotFlags, Protection
from dtwz.format.pointers import make_pointer, split_pointer

KIB = 1024


class StoreCell(Layout):
    value = U64()
    link = Pointer("StoreCell")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path, create=True, lock_timeout=0.5) as s:
        yield s


def create(store: Store, size: int = 64 * KIB, **kw: int) -> ObjectId:
    with store.transaction() as tx:
        return tx.create(size, **kw)


def assert_unlocked(store: Store, oid: ObjectId) -> None:
    """``oid`` can be locked at once by a transaction that already holds a lock.

    A leaked lock makes the second acquisition time out with TransactionConflict
    instead of blocking forever (the store was opened with lock_timeout=0.5).
    """
    other = create(store)
    tx = store.transaction()
    tx.lock(other)
    tx.lock(oid)
    tx.abort()


# -- life cycle ------------------------------------------------------------------------


def test_init_open_close(path: Path) -> None:
    with Store.init(path) as s:
        assert len(s.store_id) == 32
        store_id = s.store_id
        assert list(s.object_ids()) == []
    with Store.open(path) as s:
        assert s.store_id == store_id
    with pytest.raises(StoreError, match="already"):
        Store.init(path)
    with pytest.raises(StoreError, match="not a dtwz store"):
        Store.open(path.parent / "nothing-here")
    s = Store.open(path)
    s.close()
    s.close()  # closing twice is harmless


# -- transactions ----------------------------------------------------------------------


def test_a_multi_object_transaction_commits_all_together(store: Store) -> None:
    a, b = create(store), create(store)
    with store.transaction() as tx:
        c = tx.create(8 * KIB)
        for oid, data in [(a, b"alpha"), (b, b"beta"), (c, b"gamma")]:
            tx.write(oid, DATA_START, data)
        assert set(tx.touched) == {a, b, c}
        assert not store.exists(c)  # nothing is visible before commit
        assert bytes(store.read(a, DATA_START, 5)) == bytes(5)
    assert bytes(store.read(a, DATA_START, 5)) == b"alpha"
    assert bytes(store.read(b, DATA_START, 4)) == b"beta"
    assert bytes(store.read(c, DATA_START, 5)) == b"gamma"
    assert [store.header(o).version for o in (a, b, c)] == [2, 2, 1]
    assert store.stats["commits"] == 3


def test_abort_leaves_nothing(store: Store) -> None:
    a = create(store)
    header = store.header(a)
    tx = store.transaction()
    c = tx.create()
    tx.write(a, DATA_START, b"never")
    tx.append(c, b"never either")
    tx.add_fot_entry(a, FotEntry.for_id(c))
    tx.abort()
    assert not store.exists(c)
    assert c not in set(store.object_ids())
    assert store.header(a) == header
    assert bytes(store.read(a, DATA_START, 5)) == bytes(5)
    assert_unlocked(store, a)
    tx.abort()  # aborting twice is harmless


def test_an_exception_inside_with_aborts(store: Store) -> None:
    a, b = create(store), create(store)
    headers = store.header(a), store.header(b)
    created: list[ObjectId] = []
    with pytest.raises(KeyError), store.transaction() as tx:
        created.append(tx.create())
        tx.write(a, DATA_START, b"x" * 100)
        tx.write(b, DATA_START, b"y" * 100)
        raise KeyError("boom")
    assert not store.exists(created[0])
    assert (store.header(a), store.header(b)) == headers
    assert bytes(store.read(b, DATA_START, 100)) == bytes(100)
    assert_unlocked(store, a)
    assert_unlocked(store, b)


def test_a_dtwz_error_inside_with_aborts_too(store: Store) -> None:
    a = create(store, 8 * KIB)
    with pytest.raises(ObjectFull), store.transaction() as tx:
        tx.write(a, DATA_START, b"first")
        tx.alloc(a, 8 * KIB)
    assert bytes(store.read(a, DATA_START, 5)) == bytes(5)


def test_read_your_own_writes(store: Store) -> None:
    a = create(store)
    with store.transaction() as tx:
        tx.write(a, DATA_START, b"0123456789")
    with store.transaction() as tx:
        tx.write(a, DATA_START + 2, b"ab")
        tx.write(a, DATA_START + 3, b"XYZ")  # later writes win where they overlap
        assert tx.read(a, DATA_START, 10) == b"01aXYZ6789"
        assert tx.read(a, DATA_START + 4, 1) == b"Y"
        tx.write_u64(a, DATA_START + 16, 0xDEADBEEF)
        assert tx.read_u64(a, DATA_START + 16) == 0xDEADBEEF
        # a new object reads as zeros plus what was written
        c = tx.create(8 * KIB)
        tx.alloc(c, 8)
        off = tx.append(c, b"hello", align=1)
        assert tx.read(c, off - 2, 9) == b"\0\0hello\0\0"
        assert tx.header(c).data_len == off + 5 - DATA_START
        # the committed bytes stay as they were until commit
        assert bytes(store.read(a, DATA_START, 10)) == b"0123456789"
    assert bytes(store.read(a, DATA_START, 10)) == b"01aXYZ6789"
    assert bytes(store.read(c, off, 5)) == b"hello"


writes = st.lists(
    st.tuples(st.integers(DATA_START, DATA_START + 300), st.binary(min_size=1, max_size=40)),
    max_size=12,
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with Store.open(tmp_path_factory.mktemp("shared"), create=True, durable=False) as s:
        yield s


@settings(deadline=None, max_examples=60)
@given(committed=writes, pending=writes)
def test_reads_match_a_byte_model(
    shared_store: Store, committed: list[tuple[int, bytes]], pending: list[tuple[int, bytes]]
) -> None:
    # a transaction sees committed bytes overlaid with its own writes, in order
    window = 400
    model = bytearray(window)
    s = shared_store
    with s.transaction() as tx:
        oid = tx.create(8 * KIB)
        for at, data in committed:
            tx.write(oid, at, data)
            model[at - DATA_START : at - DATA_START + len(data)] = data
    assert bytes(s.read(oid, DATA_START, window)) == bytes(model)
    seen = bytearray(model)
    with s.transaction() as tx:
        for at, data in pending:
            tx.write(oid, at, data)
            seen[at - DATA_START : at - DATA_START + len(data)] = data
            assert tx.read(oid, DATA_START, window) == bytes(seen)
        assert bytes(s.read(oid, DATA_START, window)) == bytes(model)
        tx.abort()
    assert bytes(s.read(oid, DATA_START, window)) == bytes(model)


def test_versions_bump_once_per_commit_that_changes_an_object(store: Store) -> None:
    a, b = create(store), create(store)
    assert store.header(a).version == 1
    for expected in range(2, 6):
        with store.transaction() as tx:
            tx.write(a, DATA_START, expected.to_bytes(8, "little"))
            tx.write(a, DATA_START + 8, b"twice in one transaction is still one version")
        assert store.header(a).version == expected
    with store.transaction() as tx:  # locked and read only: no new version
        tx.lock(b)
        tx.read(b, DATA_START, 8)
    assert store.header(b).version == 1
    with store.transaction() as tx:
        tx.alloc(b, 100)  # allocating changes the header: a new version
    assert store.header(b).version == 2
    assert store.header(b).data_len == 100
    assert store.header(a).version == 5


def test_lock_gives_the_current_header(store: Store) -> None:
    a = create(store)
    with store.transaction() as tx:
        assert tx.lock(a) == store.header(a)


def test_allocator(store: Store) -> None:
    a = create(store)
    with store.transaction() as tx:
        first = tx.alloc(a, 3, align=1)
        second = tx.alloc(a, 8, align=8)
        third = tx.append(a, b"abc", align=16)
        assert first == DATA_START
        assert second == DATA_START + 8
        assert third % 16 == 0 and third >= second + 8
        with pytest.raises(InvalidArgument):
            tx.alloc(a, -1)
        with pytest.raises(InvalidArgument):
            tx.alloc(a, 8, align=3)
    assert store.header(a).data_len == third + 3 - DATA_START
    # a write beyond the allocator moves it up
    with store.transaction() as tx:
        tx.write(a, DATA_START + 1000, b"z")
    assert store.header(a).data_len == 1001


def test_transaction_closed_after_commit_and_abort(store: Store) -> None:
    a = create(store)
    for finish in (Transaction.commit, Transaction.abort):
        tx = store.transaction()
        tx.write(a, DATA_START, b"x")
        finish(tx)
        with pytest.raises(TransactionClosed):
            tx.write(a, DATA_START, b"y")
        with pytest.raises(TransactionClosed):
            tx.create()
        with pytest.raises(TransactionClosed):
            tx.commit()
        with pytest.raises(TransactionClosed):
            tx.alloc(a, 8)
        with pytest.raises(TransactionClosed):
            tx.lock(a)
        with pytest.raises(TransactionClosed):
            tx.read(a, DATA_START, 1)
    assert bytes(store.read(a, DATA_START, 1)) == b"x"
    assert_unlocked(store, a)


def test_a_second_transaction_waits_or_conflicts(store: Store) -> None:
    a, b = create(store), create(store)
    first = store.transaction()
    first.write(a, DATA_START, b"first")
    second = store.transaction()
    second.lock(b)
    with pytest.raises(TransactionConflict):
        second.write(a, DATA_START, b"second")  # holds b, so it may not wait for a
    second.abort()
    first.commit()
    assert bytes(store.read(a, DATA_START, 5)) == b"first"


# -- objects ---------------------------------------------------------------------------


def test_created_object_ids_are_derived_from_their_metadata(store: Store) -> None:
    kuid = ObjectId(b"\x42" * 16)
    oid = create(
        store, 16 * KIB, flags=ObjectFlags.VOLATILE, default_prot=Protection.READ, kuid=kuid
    )
    h = store.header(oid)
    assert h.object_id == oid and h.kuid == kuid and h.max_size == 16 * KIB
    assert h.flags == ObjectFlags.VOLATILE and h.default_prot == Protection.READ
    assert verify_object_id(oid, h.nonce, h.kuid, int(h.flags), int(h.default_prot))
    assert os.path.getsize(store.object_path(oid)) == 16 * KIB
    assert list(store.object_ids()) == [oid]


@pytest.mark.parametrize("size", [0, 1, 4095, 5000, 3 * 4096, 1 << 31, -4096])
def test_bad_object_sizes(store: Store, size: int) -> None:
    with store.transaction() as tx, pytest.raises(InvalidArgument):
        tx.create(size)
    assert list(store.object_ids()) == []


def test_immutable_objects_refuse_writes_after_creation(store: Store) -> None:
    other = create(store)
    with store.transaction() as tx:
        frozen = tx.create(16 * KIB, flags=ObjectFlags.IMMUTABLE)
        at = tx.append(frozen, b"set in stone")
        tx.write_pointer(frozen, tx.alloc(frozen, 8), other)
    before = bytes(store.read(frozen, DATA_START, 64))
    header = store.header(frozen)
    assert header.immutable
    with store.transaction() as tx:
        with pytest.raises(ReadOnlyObject):
            tx.write(frozen, at, b"changed")
        with pytest.raises(ReadOnlyObject):
            tx.alloc(frozen, 8)
        with pytest.raises(ReadOnlyObject):
            tx.append(frozen, b"more")
        with pytest.raises(ReadOnlyObject):
            tx.add_fot_entry(frozen, FotEntry.for_id(other))
        with pytest.raises(ReadOnlyObject):
            tx.pointer_to(frozen, other, DATA_START)
        with pytest.raises(ReadOnlyObject):
            tx.write_pointer(frozen, at, frozen)
        assert tx.read(frozen, at, 12) == b"set in stone"
    assert bytes(store.read(frozen, DATA_START, 64)) == before
    assert store.header(frozen) == header


def test_delete(store: Store, path: Path) -> None:
    keep, gone = create(store), create(store)
    with store.transaction() as tx:
        tx.write(gone, DATA_START, b"bye")
    tx = store.transaction()
    tx.delete(gone)
    with pytest.raises(InvalidArgument):
        tx.write(gone, DATA_START, b"too late")
    tx.abort()
    assert store.exists(gone)  # an aborted delete deletes nothing
    with store.transaction() as tx:
        tx.delete(gone)
    assert not store.exists(gone)
    assert not store.object_path(gone).exists()
    assert list(store.object_ids()) == [keep]
    with pytest.raises(ObjectNotFound):
        store.get(gone)
    with pytest.raises(ObjectNotFound):
        store.read(gone, DATA_START, 1)
    with store.transaction() as tx, pytest.raises(ObjectNotFound):
        tx.write(gone, DATA_START, b"x")
    store.close()
    with Store.open(path) as again:
        assert list(again.object_ids()) == [keep]


def test_create_and_delete_in_one_transaction(store: Store) -> None:
    with store.transaction() as tx:
        oid = tx.create()
        tx.write(oid, DATA_START, b"short-lived")
        tx.delete(oid)
    assert not store.exists(oid)
    assert list(store.object_ids()) == []


def test_reads_are_zero_copy_and_read_only(store: Store) -> None:
    a = create(store)
    with store.transaction() as tx:
        tx.write(a, DATA_START, b"abc")
    view = store.read(a, DATA_START, 3)
    assert isinstance(view, memoryview) and view.readonly
    with pytest.raises(TypeError):
        view[0] = 0  # type: ignore[index]
    with store.transaction() as tx:
        tx.write(a, DATA_START, b"xyz")
    assert bytes(view) == b"xyz"  # the same mapping, now holding the new commit


# -- FOT entries and pointers ------------------------------------------------------------


def test_fot_entries_are_reused_for_the_same_target_and_flags(store: Store, path: Path) -> None:
    a, b, c = create(store), create(store), create(store)
    with store.transaction() as tx:
        p1 = tx.pointer_to(a, b, DATA_START)
        p2 = tx.pointer_to(a, b, DATA_START + 64)
        p3 = tx.pointer_to(a, c, DATA_START)
        p4 = tx.pointer_to(a, b, DATA_START, FotFlags.READ)
        p5 = tx.pointer_to(a, a, DATA_START + 8)
    assert split_pointer(p1) == (1, DATA_START)
    assert split_pointer(p2) == (1, DATA_START + 64)
    assert split_pointer(p3) == (2, DATA_START)
    assert split_pointer(p4) == (3, DATA_START)
    assert split_pointer(p5) == (0, DATA_START + 8)  # inside the object: no entry
    obj = store.get(a)
    assert [(i, e.target, e.flags) for i, e in obj.fot_entries()] == [
        (1, b, FotFlags.VALID | FotFlags.READ | FotFlags.WRITE),
        (2, c, FotFlags.VALID | FotFlags.READ | FotFlags.WRITE),
        (3, b, FotFlags.VALID | FotFlags.READ),
    ]
    store.close()
    with Store.open(path) as again, again.transaction() as tx:  # reuse of committed entries
        assert tx.pointer_to(a, c, DATA_START + 8) == make_pointer(2, DATA_START + 8)
        assert tx.pointer_to(a, b, DATA_START, FotFlags.READ) == make_pointer(3, DATA_START)
    with Store.open(path) as again:
        assert again.header(a).fot_count == 3


def test_follow_pointers(store: Store) -> None:
    a, b = create(store), create(store, 16 * KIB)
    with store.transaction() as tx:
        word = tx.write_pointer(a, DATA_START, b, DATA_START + 24)
        assert tx.follow(a, word) == (b, DATA_START + 24)
        assert tx.read_u64(a, DATA_START) == word
        tx.write_pointer(a, DATA_START + 8, None)
        assert tx.read_u64(a, DATA_START + 8) == 0
    target, offset = store.get(a).follow(word)
    assert (target.object_id, offset) == (b, DATA_START + 24)
    assert target is store.get(b)


def test_entries_added_in_a_transaction_are_followed_in_it(store: Store) -> None:
    target = create(store)
    with store.transaction() as tx:
        fresh = tx.create(16 * KIB)
        index = tx.add_fot_entry(fresh, FotEntry.for_id(target, FotFlags.READ))
        assert tx.follow(fresh, make_pointer(index, DATA_START + 8)) == (target, DATA_START + 8)
        old = create(store)  # committed by its own transaction, then touched here
        index = tx.add_fot_entry(old, FotEntry.for_id(target))
        assert tx.follow(old, make_pointer(index, DATA_START)) == (target, DATA_START)


def test_pointer_cannot_target_the_header_page(store: Store) -> None:
    a, b = create(store), create(store)
    with store.transaction() as tx:
        for offset in (0, 8, DATA_START - 1):
            with pytest.raises(InvalidArgument):
                tx.pointer_to(a, b, offset)
    assert store.header(a).fot_count == 0


def test_fot_entry_is_committed_with_the_pointer(store: Store) -> None:
    a, b = create(store), create(store)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.write_pointer(a, DATA_START, b)
        raise RuntimeError
    assert store.header(a).fot_count == 0
    assert store.get(a).fot_entries() == []


def _resolver_for(table: dict[str, ObjectId], calls: list[tuple[str, ObjectId]]):  # type: ignore[no-untyped-def]
    def resolve(name: str, holder: ObjectId) -> ObjectId:
        calls.append((name, holder))
        return table[name]

    return resolve


def test_pointer_by_name_resolves_late(path: Path) -> None:
    with Store.open(path, create=True) as s:
        holder, first, second = create(s), create(s), create(s)
        with s.transaction() as tx:
            tx.write(first, DATA_START, b"first")
            tx.write(second, DATA_START, b"second")
            word = tx.pointer_by_name(holder, "/kvs/index", DATA_START)
            tx.write_u64(holder, tx.alloc(holder, 8), word)
            with pytest.raises(InvalidArgument):
                tx.pointer_by_name(holder, "", DATA_START)
        index, _ = split_pointer(word)
        entry = s.get(holder).fot_entry(index)
        assert entry.is_name and s.get(holder).entry_name(entry) == "/kvs/index"
        # no resolver: a clear error, not a crash
        with pytest.raises(UnresolvedName):
            s.get(holder).follow(word)
    table = {"/kvs/index": first}
    calls: list[tuple[str, ObjectId]] = []
    with Store.open(path, name_resolver=_resolver_for(table, calls)) as s:
        target, offset = s.get(holder).follow(word)
        assert (target.object_id, offset) == (first, DATA_START)
        assert calls == [("/kvs/index", holder)]
        table["/kvs/index"] = second  # late binding: every follow asks again
        target, _ = s.get(holder).follow(word)
        assert bytes(target.read(DATA_START, 6)) == b"second"
        assert len(calls) == 2


def test_name_pointer_followed_in_its_own_transaction(path: Path) -> None:
    with Store.open(path, create=True, name_resolver=lambda name, holder: target) as s:
        holder, target = create(s), create(s)
        with s.transaction() as tx:
            word = tx.pointer_by_name(holder, "/target", DATA_START + 8)
            assert tx.follow(holder, word) == (target, DATA_START + 8)
        assert s.get(holder).follow(word)[0].object_id == target


def test_views_follow_name_pointers(path: Path) -> None:
    table: dict[str, ObjectId] = {}
    with Store.open(path, create=True, name_resolver=_resolver_for(table, [])) as s:
        holder, target = create(s), create(s)
        with s.transaction() as tx:
            tx.new(StoreCell, target, value=7)
            cell = tx.new(StoreCell, holder, value=1)
            tx.write_u64(holder, cell.offset + 8, tx.pointer_by_name(holder, "t", DATA_START))
        table["t"] = target
        assert s.view(StoreCell, holder).link.value == 7


def test_fot_full(store: Store) -> None:
    a, b = create(store, 8 * KIB), create(store)
    room = (8 * KIB - DATA_START) // 32
    with store.transaction() as tx:
        for i in range(room):
            tx.add_fot_entry(a, FotEntry.for_id(b, FotFlags(4 << (i % 3))))
        with pytest.raises(ObjectFull):
            tx.add_fot_entry(a, FotEntry.for_id(b))
        with pytest.raises(ObjectFull):
            tx.alloc(a, 1)
        with pytest.raises(ObjectFull):
            tx.write(a, DATA_START, b"x")
    assert store.header(a).fot_count == room
    assert store.header(a).free_bytes == 0


def test_data_area_full(store: Store) -> None:
    a, b = create(store, 8 * KIB), create(store)
    with store.transaction() as tx:
        tx.alloc(a, 4 * KIB - 32)
        tx.add_fot_entry(a, FotEntry.for_id(b))
        with pytest.raises(ObjectFull):
            tx.alloc(a, 1)
        with pytest.raises(ObjectFull):
            tx.add_fot_entry(a, FotEntry.for_id(b, FotFlags.READ))
        with pytest.raises(ObjectFull):
            tx.write(a, 8 * KIB - 32, b"over the FOT")
        with pytest.raises(PointerOutOfBounds):
            tx.write(a, 8 * KIB - 4, b"past the end")
        with pytest.raises(PointerOutOfBounds):
            tx.write(a, 16, b"in the header page")
    h = store.header(a)
    assert (h.data_len, h.fot_count, h.free_bytes) == (4 * KIB - 32, 1, 0)


# -- persistence -------------------------------------------------------------------------


def test_committed_data_survives_close_and_reopen(path: Path) -> None:
    with Store.open(path, create=True) as s:
        a, b = create(s), create(s, 16 * KIB)
        with s.transaction() as tx:
            head = tx.new(StoreCell, a, value=1)
            head.link = tx.new(StoreCell, b, value=2)
            tx.write(b, DATA_START + 100, b"payload")
        headers = s.header(a), s.header(b)
        assert s.checkpoint() >= 0
        with s.transaction() as tx:  # this one stays in the log: replayed at open
            tx.view(StoreCell, a).value = 11
    with Store.open(path) as s:
        assert s.stats["replayed_records"] >= 1
        head = s.view(StoreCell, a)
        assert head.value == 11
        assert head.link.value == 2
        assert head.link.object_id == b
        assert bytes(s.read(b, DATA_START + 100, 7)) == b"payload"
        assert s.header(b) == headers[1]
        assert s.header(a).version == headers[0].version + 1
        assert sorted(s.object_ids()) == sorted([a, b])
        assert os.path.getsize(path / "wal.log") == 0  # recovery emptied the log


def test_two_handles_on_one_folder_see_each_others_commits(path: Path) -> None:
    with Store.open(path, create=True) as one, Store.open(path) as two:
        a = create(one)
        with two.transaction() as tx:
            tx.write(a, DATA_START, b"from two")
        assert bytes(one.read(a, DATA_START, 8)) == b"from two"
        assert one.header(a).version == 2


def test_checkpoint_empties_the_log(store: Store, path: Path) -> None:
    a = create(store)
    with store.transaction() as tx:
        tx.write(a, DATA_START, b"x")
    assert os.path.getsize(path / "wal.log") > 0
    assert store.checkpoint() == 2
    assert os.path.getsize(path / "wal.log") == 0
    assert store.checkpoint() == 0
    assert bytes(store.read(a, DATA_START, 1)) == b"x"


def test_a_long_chain_does_not_keep_every_object_mapped(tmp_path: Path) -> None:
    """Evicted mappings forget their pointer targets: following a list longer than
    the mapping budget holds about the budget's worth of descriptors, not the list."""
    store = Store.open(tmp_path / "chain", create=True, durable=False)
    try:
        with store.transaction() as tx:
            ids = [tx.create(8192) for _ in range(400)]
            for oid in ids:
                tx.append(oid, bytes(16))
            for a, b in itertools.pairwise(ids):
                tx.write_pointer(a, DATA_START + 8, b, DATA_START)
        store._max_mappings = 50
        fds = len(os.listdir("/proc/self/fd"))
        head = obj = store.get(ids[0])
        for _ in range(len(ids) - 1):
            obj, _ = obj.follow(obj.read_u64(DATA_START + 8))
        assert obj.object_id == ids[-1] and head.object_id == ids[0]
        assert len(os.listdir("/proc/self/fd")) - fds < 120
    finally:
        store.close()
