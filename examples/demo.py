"""The dtwz demo (``make demo``): a persistent object space used like memory.

``python -m examples.demo [--data DIR]`` builds, in a fresh store under DIR
(default ``./data/demo``):

1. the Twizzler key-value store: an index object whose hash table holds
   persistent pointers into many data objects;
2. a doubly linked list whose nodes are spread over many objects;

then reads values back zero-copy, shows an object's header and FOT, closes and
reopens the store to show that everything persisted, and prints a few figures.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from collections.abc import Sequence
from enum import IntFlag
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dtwz import ObjectId, Store
from dtwz.format.layout import FotEntry, ObjectHeader
from examples.kvstore import KVStore
from examples.linked_list import LinkedList

KV_ENTRIES = 5000
LIST_NODES = 2000
LOOKUPS = 50_000
SINGLE_PUTS = 200

console = Console(highlight=False)


def fresh_folder(path: Path) -> None:
    """Empty ``path`` for the demo, but only if it is empty or a previous demo store."""
    if path.exists():
        if path.is_dir() and ((path / "STORE").is_file() or not any(path.iterdir())):
            shutil.rmtree(path)
            console.print(f"[yellow]Starting fresh:[/] removed the previous demo store at {path}")
        else:
            raise SystemExit(
                f"error: {path} exists and is not a dtwz store folder; "
                "choose another folder with --data"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"Creating a new store at [bold]{path}[/]")


def user_value(i: int) -> bytes:
    return b"{'name': 'user %d', 'email': 'user%d@example.org', 'score': %d}" % (i, i, i * 7 % 1000)


def flag_names(flags: IntFlag) -> str:
    names = [flag.name for flag in type(flags) if flag and flag in flags and flag.name]
    return "|".join(names) or "-"


def header_table(title: str, header: ObjectHeader) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="cyan")
    table.add_column("value")
    rows = [
        ("object ID", str(header.object_id)),
        ("max size", f"{header.max_size:,} bytes (2**{header.size_log2})"),
        ("flags", flag_names(header.flags)),
        ("default protection", flag_names(header.default_prot)),
        ("nonce", header.nonce.hex()),
        ("kuid", header.kuid.hex()),
        ("data length", f"{header.data_len:,} bytes"),
        ("free", f"{header.free_bytes:,} bytes"),
        ("version", f"{header.version} (commits that touched it)"),
        ("FOT entries", str(header.fot_count)),
    ]
    for field, value in rows:
        table.add_row(field, value)
    return table


def fot_table(title: str, entries: Sequence[tuple[int, FotEntry]], limit: int = 8) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("index", justify="right")
    table.add_column("target object")
    table.add_column("flags")
    for index, entry in entries[:limit]:
        target = str(entry.target) if entry.target is not None else "(name)"
        table.add_row(str(index), target, flag_names(entry.flags))
    if len(entries) > limit:
        table.add_row("...", f"{len(entries) - limit} more", "")
    return table


def build_kv(store: Store) -> tuple[KVStore, dict[str, float]]:
    console.rule("1. The Twizzler key-value store")
    kv = KVStore.create(store, data_size=1 << 16, capacity=1024)
    started = time.perf_counter()
    for first in range(0, KV_ENTRIES, 1000):
        kv.put_many(
            (b"user:%d" % i, user_value(i)) for i in range(first, min(first + 1000, KV_ENTRIES))
        )
    batched = KV_ENTRIES / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(SINGLE_PUTS):
        kv.put(b"counter:%d" % i, b"%d" % i)
    single = SINGLE_PUTS / (time.perf_counter() - started)
    stats = kv.stats()
    console.print(
        f"Index object [bold]{kv.index_id}[/]: {stats['live']:,} entries in a table of "
        f"{stats['capacity']:,} slots, values spread over {stats['data_objects']} data objects "
        f"of {kv.data_size // 1024} KiB"
    )
    keys = [b"user:%d" % random.randrange(KV_ENTRIES) for _ in range(LOOKUPS)]
    started = time.perf_counter()
    for key in keys:
        kv.get(key)
    lookups = LOOKUPS / (time.perf_counter() - started)
    return kv, {"batched puts": batched, "single-put transactions": single, "lookups": lookups}


def show_zero_copy(store: Store, kv: KVStore) -> None:
    console.rule("2. Zero-copy reads")
    value = kv[b"user:42"]
    where = kv.locate(b"user:42")
    assert where is not None
    console.print(escape(f"kv[b'user:42'] = {bytes(value)!r}"))
    console.print(
        f"  a {type(value).__name__} of {len(value)} bytes, read-only={value.readonly}, "
        f"backed by the mapping of data object {where.object_id} "
        f"(same buffer: {value.obj is store.get(where.object_id).view.obj})"
    )
    kv.put(b"user:42", bytes(value).upper())  # same length: overwritten in place
    console.print(
        escape(f"  after a committed overwrite, the same memoryview reads {bytes(value)!r}")
    )


def build_list(store: Store) -> tuple[LinkedList, dict[str, float]]:
    console.rule("3. A linked list across many objects")
    started = time.perf_counter()
    linked = LinkedList.create(store, block_size=1 << 14, nodes_per_block=32)
    linked.extend(b"node %04d" % i for i in range(LIST_NODES))
    build = LIST_NODES / (time.perf_counter() - started)
    middle = linked.find(b"node 1000")
    assert middle is not None
    linked.insert_after(middle, b"inserted after node 1000")
    started = time.perf_counter()
    walked = sum(1 for _ in linked)
    walk = walked / (time.perf_counter() - started)
    objects = linked.objects()
    console.print(
        f"Anchor object [bold]{linked.anchor_id}[/]: {len(linked):,} nodes living in "
        f"{len(objects)} objects, linked by persistent pointers through their FOTs"
    )
    first = [bytes(v).decode() for v in list(linked)[999:1003]]
    console.print(f"  around the insertion: {first}")
    return linked, {"list nodes appended": build, "list nodes walked": walk}


def show_object(store: Store, kv: KVStore, linked: LinkedList) -> None:
    console.rule("4. Inside the objects")
    index = store.get(kv.index_id)
    console.print(header_table("KV index object: header", index.header()))
    console.print(
        fot_table("KV index object: FOT (one entry per data object)", index.fot_entries())
    )
    block = store.get(linked.objects()[1])
    console.print(
        fot_table(f"List node block {block.object_id}: FOT", block.fot_entries(), limit=6)
    )


def show_persistence(path: Path, kv_id: ObjectId, list_id: ObjectId) -> None:
    console.rule("5. Close, reopen: everything is still there")
    started = time.perf_counter()
    with Store.open(path) as store:
        opened = time.perf_counter() - started
        kv = KVStore.open(store, kv_id)
        linked = LinkedList.open(store, list_id)
        console.print(
            f"Reopened in {opened * 1000:.0f} ms (recovery replayed "
            f"{store.stats['replayed_records']} log records into the objects)"
        )
        console.print(
            escape(
                f"  the KV store has {len(kv):,} entries, "
                f"kv[b'user:42'] = {bytes(kv[b'user:42'])!r}"
            )
        )
        console.print(
            f"  the list has {len(linked):,} nodes; its tail is "
            f"{bytes(next(reversed(linked))).decode()!r}"
        )
        objects = sum(1 for _ in store.object_ids())
    on_disk = sum(f.stat().st_blocks * 512 for f in (path / "objects").rglob("*") if f.is_file())
    console.print(f"  {objects} objects, {on_disk / (1 << 20):.1f} MiB on disk (sparse files)")


def figures_table(figures: dict[str, float]) -> Table:
    table = Table(title="Figures (this machine, this run)", title_justify="left")
    table.add_column("operation")
    table.add_column("per second", justify="right")
    for name, rate in figures.items():
        table.add_row(name, f"{rate:,.0f}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path("data/demo"), help="store folder (default data/demo)"
    )
    args = parser.parse_args(argv)
    path: Path = args.data
    started = time.perf_counter()
    fresh_folder(path)
    figures: dict[str, float] = {}
    with Store.init(path) as store:
        kv, kv_figures = build_kv(store)
        show_zero_copy(store, kv)
        linked, list_figures = build_list(store)
        show_object(store, kv, linked)
        figures = kv_figures | list_figures
        kv_id, list_id = kv.index_id, linked.anchor_id
    show_persistence(path, kv_id, list_id)
    console.rule("6. Figures")
    console.print(figures_table(figures))
    console.print(f"Demo finished in {time.perf_counter() - started:.1f} s; the store is in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
