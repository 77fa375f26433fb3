"""Code at the data in an isolated worker, beside the same function called in-process (same run).

    python -m bench.bench_code [--quick] [--repeat N] [--json PATH] [--dir DIR]

A local cluster of one node process (security on, as by default). A list of
``objects`` objects (8 KiB each: a u64 value and a pointer to the next) is
written straight into the node's store while it is stopped, so the node homes
it. This process is the client: it asks the node to run a function that sums the
list (``client.run(code, head, where="here")``). The node runs it as the caller
(here the admin), in a confined worker (its own uid or namespaces, Landlock,
seccomp), in a process forked for the call, which gets a read-only descriptor
of each object's file from the node and maps it (docs/SECURITY.md §11). What is
timed is the whole call as the client sees it: the signed request, the node's
checks, the fork, the descriptors and mappings, the function and the answer.

Baselines, in this process: the same function called directly over a local
store holding the same list, warm (its objects mapped and pointers followed
before: what an unconfined, long-lived worker reached) and cold (the store
opened afresh, every object mapped on the way: what each isolated call does).
For information: a run of a function that does nothing beside a signed 16-byte
read of one object (what a call costs on its own, beside a plain request).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

from bench.bench_graph import build_list
from bench.bench_graph import traverse_code as traverse
from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row
from bench.timing import measure_interleaved
from dtwz.format.layout import DATA_START
from dtwz.node import launcher as local_cluster
from dtwz.store.store import Store

_LOG = Console(stderr=True)


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    objects: int


FULL = Scale(repeat=15, objects=1000)
QUICK = Scale(repeat=5, objects=200)


def nothing(api, root):  # type: ignore[no-untyped-def]
    return 0


class LocalApi:
    """What ``api`` is to ``traverse`` in this process: a store's ``get``."""

    def __init__(self, store: Store) -> None:
        self.get = store.get


def main(argv: list[str] | None = None) -> None:
    opts = parser(__doc__.splitlines()[0]).parse_args(sys.argv[1:] if argv is None else argv)
    scale = QUICK if opts.quick else FULL
    repeat = opts.repeat or scale.repeat
    settings: dict[str, object] = {
        "quick": opts.quick,
        "repeat": repeat,
        "objects": scale.objects,
        "dir": str(opts.dir),
        "filesystem": check_dir(opts.dir),
        "nodes": "n1 process (security on); client here",
    }
    report = Report(
        f"dtwz: a function over a {scale.objects:,}-object list, isolated run vs in-process",
        settings,
    )
    expected = scale.objects * (scale.objects - 1) // 2
    with scratch_dir(opts.dir, "code") as root, contextlib.ExitStack() as stack:
        _LOG.log("building the lists (local baseline, then the node's store) ...")
        local = Store.open(root / "local", create=True, durable=False)
        stack.callback(local.close)
        local_head = build_list(local, scale.objects)
        cluster = local_cluster.up(1, root / "cluster")
        stack.callback(lambda: cluster.stop(timeout=10))
        cluster.stop(["n1"])
        with Store.open(cluster.node("n1").data_dir / "store", durable=False) as store:
            head = build_list(store, scale.objects)
        cluster.start(["n1"])
        client = stack.enter_context(cluster.client("n1", timeout=120))
        code, empty = client.put_code(traverse), client.put_code(nothing)
        client.run(empty, head, where="here")  # starts a worker
        warm_api = LocalApi(local)

        def isolated() -> None:
            ran = client.run(code, head, where="here", timeout=120)
            if ran["result"] != expected:
                raise RuntimeError(f"the run went wrong: {ran}")

        def in_process_warm() -> None:
            if traverse(warm_api, local_head) != expected:
                raise RuntimeError("the local traversal went wrong")

        def in_process_cold() -> None:
            with Store.open(root / "local", durable=False) as fresh:
                if traverse(LocalApi(fresh), local_head) != expected:
                    raise RuntimeError("the local traversal went wrong")

        def run_nothing() -> None:
            client.run(empty, head, where="here")

        def read() -> None:
            client.read(head, DATA_START, 16)

        batches: dict[str, Callable[[], None]] = {
            "isolated": isolated,
            "warm": in_process_warm,
            "cold": in_process_cold,
            "empty": run_nothing,
            "read": read,
        }
        _LOG.log(f"timing {repeat} repetitions of each, taking turns ...")
        t = measure_interleaved(batches, ops=1, repeat=repeat, warmup=2)
        report.notes["isolation"] = client.cluster_status()["code"].get("isolation")
        n = scale.objects
        report.add(
            Row(
                "run, isolated worker vs in-process (cold)",
                t["isolated"],
                "in-process, cold",
                t["cold"],
                unit="call",
            )
        )
        report.add(
            Row(
                "run, isolated worker vs in-process (warm)",
                t["isolated"],
                "in-process, warm",
                t["warm"],
                unit="call",
            )
        )
        report.add(
            Row(
                "run of a function doing nothing",
                t["empty"],
                "16-byte read",
                t["read"],
                unit="call",
            )
        )
        report.notes["per object (us)"] = {
            name: round(t[name].median_ns / n / 1e3, 2) for name in ("isolated", "cold", "warm")
        }
    report.print()
    if opts.json:
        report.write_json(opts.json)


if __name__ == "__main__":
    main()
