"""The Twizzler key-value store: values, zero-copy reads, limits, persistence, crashes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz import Store
from dtwz.errors import FormatError, InvalidArgument, ObjectFull
from dtwz.format.layout import DATA_START
from examples.kvstore import (
    DEFAULT_CAPACITY,
    SLOT_SIZE,
    IndexFull,
    KVDataHeader,
    KVIndexHeader,
    KVStore,
    ValueTooLarge,
    key_hash,
)

REPO = Path(__file__).resolve().parents[2]


def test_values_round_trip(store: Store) -> None:
    kv = KVStore.create(store)
    kv.put(b"alpha", b"one")
    kv.put(b"beta", b"")
    kv.put(bytearray(b"gamma"), memoryview(b"three"))
    assert kv.get(b"alpha") == b"one"
    assert kv.get(b"beta") == b""
    assert kv[b"gamma"] == b"three"
    assert kv.get(b"missing") is None
    with pytest.raises(KeyError):
        kv[b"missing"]
    assert b"alpha" in kv and b"missing" not in kv and "alpha" not in kv
    assert len(kv) == 3


def test_get_is_a_read_only_view_of_the_mapping(store: Store) -> None:
    kv = KVStore.create(store)
    kv.put(b"k", b"before")
    value = kv[b"k"]
    where = kv.locate(b"k")
    assert where is not None and where.object_id != kv.index_id
    assert isinstance(value, memoryview) and value.readonly
    assert value.obj is store.get(where.object_id).view.obj  # the mmap itself, no copy
    with pytest.raises(TypeError):
        value[0] = 0
    kv.put(b"k", b"AFTER!")  # same length: rewritten in place by a transaction
    assert value == b"AFTER!"  # the view we already hold sees the committed bytes


def test_overwrite_with_another_length_appends_a_record(store: Store) -> None:
    kv = KVStore.create(store)
    kv.put(b"k", b"short")
    old = kv[b"k"]
    first = kv.locate(b"k")
    kv.put(b"k", b"a much longer value")
    assert kv[b"k"] == b"a much longer value"
    assert old == b"short"  # the old record is left as it was, not reused
    assert kv.locate(b"k") != first
    assert len(kv) == 1
    block = store.view(KVDataHeader, kv.data_objects()[0])
    assert block.records == 2
    assert block.dead_bytes == 8 + 1 + 5


def test_delete_leaves_a_tombstone_that_put_reuses(store: Store) -> None:
    kv = KVStore.create(store)
    for i in range(10):
        kv.put(b"k%d" % i, b"v%d" % i)
    assert kv.delete(b"k3") is True
    assert kv.delete(b"k3") is False
    assert kv.delete(b"never") is False
    assert kv.get(b"k3") is None and len(kv) == 9
    assert kv.stats()["tombstones"] == 1
    assert sorted(kv) == sorted(b"k%d" % i for i in range(10) if i != 3)
    kv.put(b"k3", b"back")
    assert kv[b"k3"] == b"back"
    assert kv.stats()["tombstones"] == 0 and len(kv) == 10


def test_everything_persists_across_close_and_reopen(store_path: Path) -> None:
    with Store.init(store_path) as store:
        kv = KVStore.create(store, data_size=1 << 13)
        kv.put_many((b"key-%d" % i, b"value-%d" % i * 5) for i in range(600))
        kv.delete(b"key-7")
        handle = kv.index_id
        objects_before = kv.data_objects()
    with Store.open(store_path) as store:
        kv = KVStore.open(store, handle)
        assert len(kv) == 599
        assert kv.get(b"key-7") is None
        assert all(kv[b"key-%d" % i] == b"value-%d" % i * 5 for i in range(600) if i != 7)
        assert kv.data_objects() == objects_before
        assert dict(kv.items()).keys() == {b"key-%d" % i for i in range(600) if i != 7}


def test_full_data_objects_spill_into_new_ones(store: Store) -> None:
    kv = KVStore.create(store, data_size=1 << 13)  # 4 KiB of data per object
    value = b"x" * 500
    for i in range(40):
        kv.put(b"%d" % i, value)
    objects = kv.data_objects()
    assert len(objects) == kv.stats()["data_objects"] >= 5
    assert len(set(objects)) == len(objects)
    homes = {kv.locate(b"%d" % i).object_id for i in range(40)}  # type: ignore[union-attr]
    assert homes == set(objects)
    index = store.get(kv.index_id)
    assert {entry.target for _, entry in index.fot_entries()} == set(objects)


def test_a_value_larger_than_a_data_object_is_refused(store: Store) -> None:
    kv = KVStore.create(store, data_size=1 << 13)
    kv.put(b"keep", b"me")
    fits = b"v" * (kv.max_record - 8 - 3)
    kv.put(b"big", fits)  # exactly the largest record: a fresh data object holds it
    assert kv[b"big"] == fits
    with pytest.raises(ValueTooLarge, match="at most"):
        kv.put(b"big", fits + b"!")
    with pytest.raises(ValueTooLarge):
        kv.put(b"huge", b"v" * (1 << 13))
    assert isinstance(ValueTooLarge("x"), InvalidArgument)
    assert kv[b"big"] == fits and kv[b"keep"] == b"me" and len(kv) == 2


def test_the_table_doubles_as_it_fills(store: Store) -> None:
    kv = KVStore.create(store, capacity=8)
    for i in range(100):
        kv.put(b"%d" % i, b"%d" % i)
    stats = kv.stats()
    assert stats["capacity"] == 256 and stats["live"] == 100
    assert stats["live"] <= stats["capacity"] * 3 // 4
    assert all(kv[b"%d" % i] == b"%d" % i for i in range(100))


def test_a_full_index_refuses_clearly_and_changes_nothing(store: Store) -> None:
    # an 8 KiB index holds one 4 KiB data page: room for a table of 128 slots at most
    kv = KVStore.create(store, index_size=1 << 13, capacity=128)
    stored = 0
    with pytest.raises(IndexFull, match="larger index_size"):
        for i in range(200):
            kv.put(b"%d" % i, b"v")
            stored += 1
    assert stored == 96  # 3/4 of 128
    assert isinstance(IndexFull("x"), ObjectFull)
    assert len(kv) == 96 and kv.get(b"96") is None
    kv.put(b"5", b"w")  # overwrites and deletes still work
    assert kv.delete(b"6")
    kv.put(b"new", b"fits in the tombstone")
    assert kv[b"new"] == b"fits in the tombstone" and len(kv) == 96


def test_tombstones_are_purged_in_place_when_the_index_cannot_grow(store: Store) -> None:
    kv = KVStore.create(store, index_size=1 << 13, capacity=128)
    for round_ in range(20):  # 20 x 50 inserts and deletes through 128 slots
        with kv.batch() as batch:
            for i in range(50):
                batch.put(b"%d-%d" % (round_, i), b"v")
        with kv.batch() as batch:
            for i in range(50):
                assert batch.delete(b"%d-%d" % (round_, i))
    assert len(kv) == 0 and kv.stats()["capacity"] == 128
    assert kv.stats()["tombstones"] < 96


def test_a_batch_is_one_transaction(store: Store) -> None:
    kv = KVStore.create(store)
    with kv.batch() as batch:
        batch.put(b"a", b"1")
        batch.put(b"a", b"22")  # the batch sees its own writes
        assert batch.get(b"a") == b"22"
        assert kv.get(b"a") is None  # not committed yet
        assert batch.delete(b"a") and not batch.delete(b"a")
        batch.put(b"b", b"2")
    assert kv.get(b"a") is None and kv[b"b"] == b"2" and len(kv) == 1
    with pytest.raises(RuntimeError), kv.batch() as batch:
        batch.put(b"c", b"3")
        raise RuntimeError("abort")
    assert kv.get(b"c") is None and len(kv) == 1


def test_puts_join_a_callers_transaction(store: Store) -> None:
    kv = KVStore.create(store, capacity=8)
    with store.transaction() as tx:
        for i in range(20):  # grows the table twice inside one transaction
            kv.put(b"%d" % i, b"first", tx=tx)
        kv.put(b"3", b"second", tx=tx)
        kv.put(b"4", b"changed length", tx=tx)
        assert kv.delete(b"5", tx=tx)
        other = tx.create()
        tx.append(other, b"committed together")
    assert len(kv) == 19 and kv[b"3"] == b"second" and kv[b"4"] == b"changed length"
    assert kv.get(b"5") is None and kv[b"19"] == b"first"
    with pytest.raises(RuntimeError), store.transaction() as tx:
        kv.put(b"gone", b"x", tx=tx)
        raise RuntimeError("abort")
    assert kv.get(b"gone") is None


def test_keys_hash_with_a_stable_hash() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "little")
    assert key_hash(b"abc") == expected


def test_the_on_object_layout(store: Store) -> None:
    kv = KVStore.create(store)
    kv.put(b"key", b"value")
    header = store.view(KVIndexHeader, kv.index_id)
    assert bytes(header.magic) == b"DTWZKVI1" and header.capacity == DEFAULT_CAPACITY
    table = header.table
    assert table.object_id == kv.index_id
    assert table.offset == DATA_START + KVIndexHeader.SIZE
    slot = (key_hash(b"key") >> 1) % DEFAULT_CAPACITY
    tag, word = (
        int.from_bytes(store.read(kv.index_id, table.offset + slot * SLOT_SIZE + i, 8), "little")
        for i in (0, 8)
    )
    assert tag == key_hash(b"key") | 1
    assert word >> 48 == 1  # FOT entry 1: the first data object
    where = kv.locate(b"key")
    assert where is not None and word & ((1 << 48) - 1) == where.offset
    record = bytes(store.read(where.object_id, where.offset, 8 + 3 + 5))
    assert record == (3).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"keyvalue"
    block = store.view(KVDataHeader, where.object_id)
    assert bytes(block.magic) == b"DTWZKVD1" and block.index == header and block.prev is None


def test_bad_input_is_refused(store: Store) -> None:
    with pytest.raises(InvalidArgument):
        KVStore.create(store, capacity=100)
    kv = KVStore.create(store)
    with pytest.raises(InvalidArgument, match="a key must be bytes"):
        kv.put("text", b"v")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="a value must be bytes"):
        kv.put(b"k", 5)  # type: ignore[arg-type]
    with store.transaction() as tx:
        other = tx.create()
        tx.append(other, b"not an index at all")
    with pytest.raises(FormatError, match="not a KV index"):
        KVStore.open(store, other)


keys = st.one_of(st.sampled_from([b"", b"a", b"b", b"key", b"\x00" * 8]), st.binary(max_size=3))
values = st.one_of(st.sampled_from([b"", b"same", b"SAME"]), st.binary(max_size=300))
changes = st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=12)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), keys, values),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("get"), keys),
        st.tuples(st.just("batch"), changes),  # a value of None deletes
        st.tuples(st.just("reopen")),
    ),
    max_size=100,
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store folder for every example of the property test (a fresh KV store each)."""
    path = tmp_path_factory.mktemp("kv-property") / "store"
    Store.init(path, durable=False).close()
    return path


@settings(max_examples=80, deadline=None)
@given(ops=operations)
def test_behaves_like_a_dict(shared_store: Path, ops: list[tuple[Any, ...]]) -> None:
    store = Store.open(shared_store, durable=False)
    try:
        kv = KVStore.create(store, data_size=1 << 13, capacity=8)
        model: dict[bytes, bytes] = {}
        for op, *args in ops:
            if op == "put":
                kv.put(args[0], args[1])
                model[args[0]] = args[1]
            elif op == "delete":
                assert kv.delete(args[0]) == (model.pop(args[0], None) is not None)
            elif op == "get":
                got = kv.get(args[0])
                assert (None if got is None else bytes(got)) == model.get(args[0])
            elif op == "batch":
                with kv.batch() as batch:
                    for key, value in args[0]:
                        if value is None:
                            assert batch.delete(key) == (model.pop(key, None) is not None)
                        else:
                            batch.put(key, value)
                            model[key] = value
                        assert batch.get(key) == model.get(key)
            else:
                store.close()
                store = Store.open(shared_store, durable=False)
                kv = KVStore.open(store, kv.index_id)
        assert len(kv) == len(model)
        assert {key: bytes(value) for key, value in kv.items()} == model
    finally:
        store.close()


def crash_batch(model: dict[bytes, bytes], batch: int) -> None:
    """Batch number ``batch`` of the crash worker, applied to a dict."""
    for i in range(7 * batch, 7 * batch + 7):
        model[b"key-%d" % (i % 50)] = b"round %d " % i * (1 + i % 5)
    model.pop(b"key-%d" % (batch * 3 % 50), None)


CRASH_WORKER = textwrap.dedent(
    """
    import sys
    from dtwz import Store, ObjectId
    from examples.kvstore import KVStore
    from tests.examples.test_kvstore import crash_batch

    class Recorder(dict):  # replays crash_batch into the KV store, one batch per commit
        def __init__(self, batch):
            self.batch = batch
        def __setitem__(self, key, value):
            self.batch.put(key, value)
        def pop(self, key, default=None):
            self.batch.delete(key)

    store = Store.open(sys.argv[1])
    kv = KVStore.open(store, ObjectId.parse(sys.argv[2]))
    batch = int(sys.argv[3])
    while True:
        with kv.batch() as kv_batch:
            crash_batch(Recorder(kv_batch), batch)
        batch += 1
        print(batch, flush=True)
    """
)


def test_a_kill_at_any_instant_leaves_the_last_acknowledged_state(store_path: Path) -> None:
    with Store.init(store_path) as store:
        handle = KVStore.create(store, data_size=1 << 14, capacity=8).index_id
    model: dict[bytes, bytes] = {}
    done = 0  # batches in the store
    for attempt in range(4):
        worker = subprocess.Popen(
            [sys.executable, "-c", CRASH_WORKER, str(store_path), str(handle), str(done)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        first = worker.stdout.readline()  # wait until it commits, then kill it at once
        time.sleep(0.05 * attempt)
        os.kill(worker.pid, signal.SIGKILL)
        acknowledged = max(int(line) for line in [first, *worker.stdout.read().split()])
        worker.wait()
        worker.stdout.close()
        while done < acknowledged:
            crash_batch(model, done)
            done += 1
        with Store.open(store_path) as store:
            kv = KVStore.open(store, handle)
            found = {key: bytes(value) for key, value in kv.items()}
            assert len(found) == len(kv)
            if found != model:  # the kill may land after a commit and before its print
                crash_batch(model, done)
                done += 1
                assert found == model, f"attempt {attempt}: not the state of any prefix"
