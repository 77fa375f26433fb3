"""The node store's figures, each beside a baseline measured in the same run.

    python -m bench.bench_store [--quick] [--repeat N] [--json PATH] [--dir DIR]

1. cross-object pointer dereference (follow + read a u64) vs ``struct.unpack_from``
   on a raw mmap; target at most 2x. The typed-view path is shown for information.
2. 1 KiB zero-copy read vs py-lmdb ``get`` in an open read transaction; target 1x.
3. small durable transactions per second vs py-lmdb with ``sync=True``, one writer
   (target 1x) and 8 writer threads (target 5x); 8 writer processes for information.
4. creating 100,000 objects in transactions of 1,000, for information, beside lmdb
   inserting 4 KiB values and plain empty files.

Every store and lmdb environment lives in a scratch folder under ``--dir``.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import lmdb
from rich.console import Console

from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row, Target
from bench.timing import measure, measure_interleaved, run_concurrently
from dtwz import U64, Layout, ObjectId, Pointer, Store
from dtwz.format.layout import DATA_START
from dtwz.store.objects import StoredObject

_U64 = struct.Struct("<Q")
_KEY = struct.Struct(">Q")
_RECORD = 1024
_CTL_FSYNCS_DONE = 32
_SMALL_PUT = os.urandom(100)
_LOG = Console(stderr=True)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    pointers: int  # distinct pointers; each batch follows them round-robin
    pointer_ops: int
    read_objects: int
    records_per_object: int
    read_ops: int
    spill_objects: int  # more objects than the store keeps mapped
    spill_ops: int
    txns: int  # per repetition, one writer
    writer_txns: int  # per writer and repetition, 8 writers
    writers: int
    create_objects: int
    create_batch: int
    create_repeat: int  # each run makes and removes that many files: fewer repetitions


FULL = Scale(
    repeat=7,
    pointers=4096,
    pointer_ops=200_000,
    read_objects=2000,
    records_per_object=32,
    read_ops=100_000,
    spill_objects=8192,
    spill_ops=40_000,
    txns=2000,
    writer_txns=400,
    writers=8,
    create_objects=100_000,
    create_batch=1000,
    create_repeat=3,
)
QUICK = Scale(
    repeat=3,
    pointers=1024,
    pointer_ops=30_000,
    read_objects=200,
    records_per_object=16,
    read_ops=20_000,
    spill_objects=5000,
    spill_ops=20_000,
    txns=300,
    writer_txns=60,
    writers=8,
    create_objects=2000,
    create_batch=1000,
    create_repeat=2,
)


class BenchNode(Layout):
    value = U64()
    next = Pointer("BenchNode")


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    scale = QUICK if args.quick else FULL
    repeat = args.repeat or scale.repeat
    settings = {"quick": args.quick, "repeat": repeat, "dir": str(args.dir)}
    settings["filesystem"] = check_dir(args.dir)
    report = Report("dtwz store vs baselines (same run)", settings)
    figures = [pointer_figures, read_figures, transaction_figures, create_figures]
    with scratch_dir(args.dir, "store") as root:
        for figure in figures:
            _LOG.log(f"measuring {figure.__name__.removesuffix('_figures')} ...")
            figure(report, root / figure.__name__, scale, repeat)
    report.print()
    if args.json:
        report.write_json(args.json)


# -- 1. pointer dereference -------------------------------------------------------


def pointer_figures(report: Report, root: Path, scale: Scale, repeat: int) -> None:
    root.mkdir()
    with Store.init(root / "store", durable=False) as store:
        source, nodes = _pointer_graph(store, scale.pointers)
        at = BenchNode.next.offset
        words = [source.read_u64(node.offset + at) for node in nodes]
        words = _cycle(words, scale.pointer_ops)
        nodes = _cycle(nodes, scale.pointer_ops)
        offsets = [source.follow(word)[1] for word in words]
        with open(root / "raw", "w+b") as raw:
            raw.write(source.view)  # the baseline reads the same bytes from a plain mapping
            raw.flush()
            mapping = mmap.mmap(raw.fileno(), source.max_size)
            t = measure_interleaved(
                {
                    "raw": partial(_unpack_loop, mapping, offsets),
                    "follow": partial(_follow_loop, source, words),
                    "tlb": partial(_translation_loop, source, words),
                    "checked": partial(_follow_read_u64_loop, source, words),
                    "typed": partial(_typed_view_loop, nodes),
                },
                ops=scale.pointer_ops,
                repeat=repeat,
            )
            mapping.close()
    raw_name = "unpack_from(mmap, off)"
    report.add(
        Row(
            "pointer deref: follow + read u64",
            t["follow"],
            raw_name,
            t["raw"],
            target=Target("max_ratio", 2),
        ),
        Row("  (hot loop: translations[word] + read u64)", t["tlb"], raw_name, t["raw"]),
        Row("  (follow + read_u64, bounds-checked)", t["checked"], raw_name, t["raw"]),
        Row("  (typed view: node.next.value)", t["typed"], raw_name, t["raw"]),
    )


def _pointer_graph(store: Store, count: int) -> tuple[StoredObject, list[BenchNode]]:
    """``count`` nodes in one object, each pointing to a node in one of 16 others."""
    with store.transaction() as tx:
        source = tx.create(1 << 20)
        targets = [tx.create(1 << 20) for _ in range(16)]
        offsets = []
        for i in range(count):
            target = tx.new(BenchNode, targets[i % len(targets)], value=i)
            offsets.append(tx.new(BenchNode, source, value=i, next=target).offset)
    return store.get(source), [store.view(BenchNode, source, at) for at in offsets]


def _unpack_loop(mapping: mmap.mmap, offsets: list[int]) -> None:
    unpack = _U64.unpack_from
    for offset in offsets:
        unpack(mapping, offset)


def _follow_loop(source: StoredObject, words: list[int]) -> None:
    follow, unpack = source.follow, _U64.unpack_from
    for word in words:
        target, offset = follow(word)
        unpack(target.view, offset)


def _translation_loop(source: StoredObject, words: list[int]) -> None:
    """What a pointer-chasing loop writes: the object's translation cache first."""
    translations, follow, unpack = source.translations, source.follow, _U64.unpack_from
    for word in words:
        try:
            target, offset = translations[word]
        except KeyError:
            target, offset = follow(word)
        unpack(target.view, offset)


def _follow_read_u64_loop(source: StoredObject, words: list[int]) -> None:
    follow = source.follow
    for word in words:
        target, offset = follow(word)
        target.read_u64(offset)


def _typed_view_loop(nodes: list[BenchNode]) -> None:
    for node in nodes:
        node.next.value  # noqa: B018 - the read is the point


# -- 2. 1 KiB reads ----------------------------------------------------------------


def read_figures(report: Report, root: Path, scale: Scale, repeat: int) -> None:
    root.mkdir()
    rng = random.Random(1)
    keys = scale.read_objects * scale.records_per_object
    picks = [rng.randrange(keys) for _ in range(scale.read_ops)]
    spill_picks = [rng.randrange(scale.spill_objects) for _ in range(scale.spill_ops)]
    with (
        Store.init(root / "store", durable=False) as store,
        lmdb.open(str(root / "lmdb"), map_size=4 << 30) as env,
    ):
        oids = _fill_objects(store, scale.read_objects, scale.records_per_object)
        spill_oids = _fill_objects(store, scale.spill_objects, 1)
        _fill_lmdb(env, keys)
        ours = [(oids[p // scale.records_per_object], _record_at(p, scale)) for p in picks]
        spill = [(spill_oids[p], DATA_START) for p in spill_picks]
        lmdb_keys = [_KEY.pack(p) for p in picks]
        with env.begin() as copying, env.begin(buffers=True) as zero_copy:
            t = measure_interleaved(
                {
                    "lmdb": partial(_lmdb_get_loop, copying, lmdb_keys),
                    "lmdb buffers": partial(_lmdb_get_loop, zero_copy, lmdb_keys),
                    "dtwz": partial(_store_read_loop, store, ours),
                },
                ops=len(picks),
                repeat=repeat,
            )
            spilled = measure(
                partial(_store_read_loop, store, spill), ops=len(spill), repeat=repeat
            )
    lmdb_name = "lmdb txn.get"
    report.add(
        Row(
            f"1 KiB read, {keys:,} keys in {scale.read_objects:,} objects",
            t["dtwz"],
            lmdb_name,
            t["lmdb"],
            target=Target("max_ratio", 1),
        ),
        Row(
            "  (same, baseline with buffers=True)",
            t["dtwz"],
            "lmdb get, buffers=True",
            t["lmdb buffers"],
        ),
        Row(
            f"  (1 KiB read, {scale.spill_objects:,} objects > mapping cache)",
            spilled,
            lmdb_name,
            t["lmdb"],
        ),
    )


def _record_at(pick: int, scale: Scale) -> int:
    return DATA_START + (pick % scale.records_per_object) * _RECORD


def _fill_objects(store: Store, count: int, records: int) -> list[ObjectId]:
    """``count`` objects holding ``records`` random 1 KiB records each."""
    size = _power_of_two(DATA_START + records * _RECORD + 4096)
    block = os.urandom(records * _RECORD)
    oids: list[ObjectId] = []
    for first in range(0, count, 500):
        with store.transaction() as tx:
            for _ in range(first, min(first + 500, count)):
                oid = tx.create(size)
                tx.write(oid, DATA_START, block)
                oids.append(oid)
    return oids


def _fill_lmdb(env: lmdb.Environment, keys: int) -> None:
    value = os.urandom(_RECORD)
    with env.begin(write=True) as txn:
        for key in range(keys):
            txn.put(_KEY.pack(key), value)


def _store_read_loop(store: Store, keys: list[tuple[ObjectId, int]]) -> None:
    read = store.read
    for oid, offset in keys:
        read(oid, offset, _RECORD)


def _lmdb_get_loop(txn: lmdb.Transaction, keys: list[bytes]) -> None:
    get = txn.get
    for key in keys:
        get(key)


# -- 3. durable transactions ---------------------------------------------------------


def transaction_figures(report: Report, root: Path, scale: Scale, repeat: int) -> None:
    root.mkdir()
    n, writers, per_writer = scale.txns, scale.writers, scale.writer_txns
    together = partial(run_concurrently, workers=writers)
    with (
        Store.init(root / "store") as store,
        lmdb.open(str(root / "lmdb"), map_size=1 << 30, sync=True) as env,
    ):
        with store.transaction() as tx:
            oids = [tx.create(1 << 16) for _ in range(writers)]
        one = measure_interleaved(
            {
                "lmdb": partial(_lmdb_puts, env, 0, n),
                "dtwz": partial(_store_txns, store, oids[0], n),
            },
            ops=n,
            repeat=repeat,
        )
        before = dict(store.stats)  # this handle's: the threads' commits, not the processes'
        all_fsyncs_before = _log_fsyncs_done(store.path)
        many = measure_interleaved(
            {
                "lmdb": partial(together, lambda i: partial(_lmdb_puts, env, i, per_writer)),
                "threads": partial(
                    together, lambda i: partial(_store_txns, store, oids[i], per_writer)
                ),
                "processes": partial(
                    together,
                    partial(_store_process, store.path, oids, per_writer),
                    processes=True,
                ),
            },
            ops=writers * per_writer,
            repeat=repeat,
        )
        commits = store.stats["commits"] - before["commits"]
        fsyncs = store.stats["fsyncs"] - before["fsyncs"]
        process_fsyncs = _log_fsyncs_done(store.path) - all_fsyncs_before - fsyncs
    lmdb_name = "lmdb put, sync=True"
    lmdb_threads = f"{lmdb_name}, {writers} threads"
    report.add(
        Row(
            "durable txns, 1 writer",
            one["dtwz"],
            lmdb_name,
            one["lmdb"],
            rate=True,
            unit="tx",
            target=Target("min_ratio", 1),
        ),
        Row(
            f"durable txns, {writers} writer threads",
            many["threads"],
            lmdb_threads,
            many["lmdb"],
            rate=True,
            unit="tx",
            target=Target("min_ratio", 5),
        ),
        Row(
            f"  ({writers} writer processes)",
            many["processes"],
            lmdb_threads,
            many["lmdb"],
            rate=True,
            unit="tx",
        ),
    )
    report.notes[f"group commit, {writers} threads"] = _per_fsync(commits, fsyncs)
    # the processes ran as many times, with as many transactions, as the threads
    report.notes[f"group commit, {writers} processes"] = _per_fsync(commits, process_fsyncs)


def _per_fsync(commits: int, fsyncs: int) -> str:
    return f"{commits:,} commits, {fsyncs:,} log fsyncs ({commits / max(fsyncs, 1):.2f} per fsync)"


def _log_fsyncs_done(store: Path) -> int:
    """The store-wide count of completed log fsyncs (store.ctl, docs/FORMAT.md)."""
    with open(store / "store.ctl", "rb") as ctl:
        return int(_U64.unpack_from(ctl.read(40), _CTL_FSYNCS_DONE)[0])


def _store_txns(store: Store, oid: ObjectId, count: int) -> None:
    for i in range(count):
        with store.transaction() as tx:
            tx.write(oid, DATA_START + (i % 64) * 128, _SMALL_PUT)


def _store_process(path: Path, oids: list[ObjectId], count: int, i: int) -> Callable[[], None]:
    """Runs in a forked worker: its own store handle, its own object."""
    store = Store.open(path)
    return partial(_store_txns, store, oids[i], count)


def _lmdb_puts(env: lmdb.Environment, writer: int, count: int) -> None:
    for i in range(count):
        with env.begin(write=True) as txn:
            txn.put(_KEY.pack(writer << 32 | i % 64), _SMALL_PUT)


# -- 4. creating objects -------------------------------------------------------------


def create_figures(report: Report, root: Path, scale: Scale, repeat: int) -> None:
    root.mkdir()
    n, batch = scale.create_objects, scale.create_batch
    t = measure_interleaved(
        {
            "dtwz": partial(_create_objects, root, n, batch, checkpoint=False),
            "dtwz+checkpoint": partial(_create_objects, root, n, batch, checkpoint=True),
            "lmdb": partial(_lmdb_inserts, root, n, batch),
            "files": partial(_create_files, root, n),
        },
        ops=n,
        repeat=min(repeat, scale.create_repeat),
        warmup=0,
    )
    what = f"create {n:,} objects, txns of {batch:,}"
    lmdb_name = f"lmdb insert 4 KiB values, txns of {batch:,}"
    report.add(
        Row(what, t["dtwz"], lmdb_name, t["lmdb"], rate=True, unit="obj"),
        Row(
            "  (same, then checkpoint: files durable)",
            t["dtwz+checkpoint"],
            lmdb_name,
            t["lmdb"],
            rate=True,
            unit="obj",
        ),
        Row(
            f"  ({what})",
            t["dtwz"],
            "os.open + ftruncate, no fsync",
            t["files"],
            rate=True,
            unit="obj",
        ),
    )


def _create_objects(root: Path, count: int, batch: int, *, checkpoint: bool) -> int:
    """Nanoseconds to create ``count`` objects (setting up and removing the store not counted)."""
    with scratch_dir(root, "create") as folder, Store.init(folder / "store") as store:
        start = time.perf_counter_ns()
        for _ in range(0, count, batch):
            with store.transaction() as tx:
                for _ in range(batch):
                    tx.create()
        if checkpoint:
            store.checkpoint()
        return time.perf_counter_ns() - start


def _lmdb_inserts(root: Path, count: int, batch: int) -> int:
    value = os.urandom(4096)
    with (
        scratch_dir(root, "lmdb") as folder,
        lmdb.open(str(folder), map_size=count * 8192 + (64 << 20), sync=True) as env,
    ):
        start = time.perf_counter_ns()
        for first in range(0, count, batch):
            with env.begin(write=True) as txn:
                for key in range(first, first + batch):
                    txn.put(_KEY.pack(key), value)
        return time.perf_counter_ns() - start


def _create_files(root: Path, count: int) -> int:
    with scratch_dir(root, "files") as folder:
        for prefix in range(256):
            (folder / f"{prefix:02x}").mkdir()
        names = [os.urandom(16).hex() for _ in range(count)]
        start = time.perf_counter_ns()
        for name in names:
            fd = os.open(folder / name[:2] / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.ftruncate(fd, 1 << 20)
            os.close(fd)
        return time.perf_counter_ns() - start


# -- helpers ------------------------------------------------------------------------


def _cycle(items: list[T], length: int) -> list[T]:
    return (items * (length // len(items) + 1))[:length]


def _power_of_two(size: int) -> int:
    return 1 << max(12, (size - 1).bit_length())


if __name__ == "__main__":
    main()
