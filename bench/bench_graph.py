"""Traversing a linked list homed on another node, three ways, beside local data (same run).

    python -m bench.bench_graph [--quick] [--repeat N] [--json PATH] [--dir DIR]

A local cluster of two node processes (n1, n2). The lists (``ITEMS`` objects of
8 KiB each: a u64 value and a pointer to the next item) are written straight
into n2's store while n2 is stopped, so they are homed on n2. A client of n1
sums each list by following its pointers:

(a) on demand: pointer by pointer, nothing cached at the client or at n1; every
    step is a fetch through n1 from n2. A fresh list per repetition.
(b) after prefetch: ``client.prefetch(head)`` brings the list to n1 and into the
    client in one streamed answer; then the same traversal, in the client's
    copies. Shown without and with the prefetch itself.
(c) as code at the data: ``client.run(code, head)``: n1 walks the list's graph,
    finds every byte on n2, and n2's worker runs the traversal on its own store.

Baselines, in this process: the same traversal over a local store of the same
list, warm (objects mapped and pointers followed before) and cold (the store
opened afresh, every object mapped on the way). Targets (issue 5): (b) and (c)
at least 50x faster than (a), and within 3x of local (warm). (b') adds the
prefetch itself to (b), for information. (c) includes the walk that decides
where to run; n2 runs it in an isolated worker, as the caller, in a process of its
own that maps each object as the node hands it over (docs/SECURITY.md §11).
"""

from __future__ import annotations

import contextlib
import struct
import sys
import time
from dataclasses import dataclass

from rich.console import Console

from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row, Target
from bench.timing import Timing
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node import launcher as local_cluster
from dtwz.store.objects import StoredObject
from dtwz.store.store import Store

_LOG = Console(stderr=True)
ITEM_SIZE = 8192
NEXT = DATA_START + 8


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    items: int


FULL = Scale(repeat=3, items=10_000)
QUICK = Scale(repeat=2, items=2_000)


def build_list(store: Store, items: int, batch: int = 1000) -> ObjectId:
    """A list of ``items`` objects, value i at DATA_START, next pointer at NEXT; its head."""
    ids: list[ObjectId] = []
    for start in range(0, items, batch):
        with store.transaction() as tx:
            for i in range(start, min(items, start + batch)):
                oid = tx.create(ITEM_SIZE)
                tx.append(oid, struct.pack("<QQ", i, 0))
                ids.append(oid)
    for start in range(0, items - 1, batch):
        with store.transaction() as tx:
            for i in range(start, min(items - 1, start + batch)):
                tx.write_pointer(ids[i], NEXT, ids[i + 1], DATA_START)
    return ids[0]


def traverse(head: StoredObject) -> int:
    """The traversal every variant runs: sum the values, following the pointers."""
    obj, total = head, 0
    while True:
        total += obj.read_u64(DATA_START)
        word = obj.read_u64(NEXT)
        if not word:
            return total
        obj, _ = obj.follow(word)


def traverse_code(api, root):  # type: ignore[no-untyped-def]  # runs in a node's worker
    obj, total = api.get(root), 0
    while True:
        total += obj.read_u64(0x1000)
        word = obj.read_u64(0x1008)
        if not word:
            return total
        obj, _ = obj.follow(word)


def _timed(samples: list[float], items: int) -> Timing:
    return Timing(tuple(s / items for s in samples))


def main(argv: list[str] | None = None) -> None:
    opts = parser(__doc__.splitlines()[0]).parse_args(sys.argv[1:] if argv is None else argv)
    scale = QUICK if opts.quick else FULL
    repeat = opts.repeat or scale.repeat
    settings: dict[str, object] = {
        "quick": opts.quick,
        "repeat": repeat,
        "items": scale.items,
        "dir": str(opts.dir),
        "filesystem": check_dir(opts.dir),
        "nodes": "n1, n2 processes; client here",
    }
    report = Report(f"dtwz: traverse a {scale.items:,}-object list homed on another node", settings)
    expected = scale.items * (scale.items - 1) // 2
    with scratch_dir(opts.dir, "graph") as root, contextlib.ExitStack() as stack:
        _LOG.log("building the lists (local baseline, then n2's store) ...")
        local = Store.open(root / "local", create=True, durable=False)
        stack.callback(local.close)
        local_head = build_list(local, scale.items)
        cluster = local_cluster.up(2, root / "cluster")
        stack.callback(lambda: cluster.stop(timeout=10))
        cluster.stop(["n2"])
        lists = 2 * repeat + 2
        with Store.open(cluster.node("n2").data_dir / "store", durable=False) as n2_store:
            heads = [build_list(n2_store, scale.items) for _ in range(lists)]
        cluster.start(["n2"])
        client = stack.enter_context(cluster.client("n1", timeout=60))
        code = client.put_code(traverse_code)

        warm, cold, on_demand, after, with_prefetch, at_data = [], [], [], [], [], []
        for r in range(repeat):
            _LOG.log(f"repetition {r + 1}/{repeat} ...")
            t = time.perf_counter_ns()
            assert traverse(local.get(local_head)) == expected
            warm.append(time.perf_counter_ns() - t)
            with Store.open(root / "local", durable=False) as fresh:
                t = time.perf_counter_ns()
                assert traverse(fresh.get(local_head)) == expected
                cold.append(time.perf_counter_ns() - t)
            with cluster.client("n1", timeout=60) as fresh_client:  # (a): nothing cached
                t = time.perf_counter_ns()
                assert traverse(fresh_client.get(heads[2 * r])) == expected
                on_demand.append(time.perf_counter_ns() - t)
            with cluster.client("n1", timeout=60) as fresh_client:  # (b)
                head = heads[2 * r + 1]
                t = time.perf_counter_ns()
                fresh_client.prefetch(head)
                t_fetched = time.perf_counter_ns()
                assert traverse(fresh_client.get(head)) == expected
                after.append(time.perf_counter_ns() - t_fetched)
                with_prefetch.append(time.perf_counter_ns() - t)
            t = time.perf_counter_ns()
            ran = client.run(code, heads[-1], timeout=300)  # (c), at most a node's limit
            at_data.append(time.perf_counter_ns() - t)
            if ran["result"] != expected or ran["ran_at"] != "n2":
                raise RuntimeError(f"code at the data went wrong: {ran}")

        n = scale.items
        a = _timed(on_demand, n)
        local_warm, local_cold = _timed(warm, n), _timed(cold, n)
        report.add(Row("(a) on demand, per object", a, "local warm", local_warm, unit="object"))
        variants = (
            ("(b) after prefetch", _timed(after, n)),
            ("(c) code at the data", _timed(at_data, n)),
        )
        for name, ours in variants:
            report.add(
                Row(
                    f"{name} vs (a)",
                    ours,
                    "(a) on demand",
                    a,
                    target=Target("max_ratio", 1 / 50),
                    unit="object",
                )
            )
            report.add(
                Row(
                    f"{name} vs local",
                    ours,
                    "local warm",
                    local_warm,
                    target=Target("max_ratio", 3),
                    unit="object",
                )
            )
            report.add(Row(f"{name} vs local, cold", ours, "local cold", local_cold, unit="object"))
        b_all = _timed(with_prefetch, n)
        report.add(
            Row("(b') prefetch + traversal vs (a)", b_all, "(a) on demand", a, unit="object")
        )
    report.print()
    if opts.json:
        report.write_json(opts.json)


if __name__ == "__main__":
    main()
