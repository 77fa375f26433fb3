"""Name resolution, cold and cached, beside a location lookup of the same objects (same run).

    python -m bench.bench_names [--quick] [--repeat N] [--json PATH] [--dir DIR]

Node A runs as its own process and homes the namespace: the root (it is the seed)
and, under it, ``PATHS`` trees ``/bK/c/d/obj`` — a 4-level path whose three
directories are homed with their parent on A and whose last name is bound to an
object homed on A. Node B runs in this process (as in ``bench_cluster``) and
resolves the paths; its figures are timed on its event loop.

1. ``names.resolve`` of a 4-level path with nothing cached at B (name cache,
   directory copies and locations dropped before each resolution, untimed): four
   directory fetches from A, each one round trip. Beside it ``node.locate`` of the
   object the path names, with its location forgotten the same way: one ``Locate``
   round trip to A. B also forgets its directory shard before each, so locations
   come from A as they would in a cluster of more nodes (with two nodes and three
   directory copies B would otherwise own every record).
2. ``names.resolve`` cached (a name-cache hit, checked against the versions of the
   four directories B holds) beside ``node.locate`` cached (a LocationCache hit).
3. For information: a walk over directory copies B holds (name cache cleared only),
   and both lookups as a client sees them, through B's HTTP API (``Client.resolve``
   vs ``Client.locate``; both answered from B's caches).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.bench_cluster import LoopThread, start_node_a
from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row
from bench.timing import measure_interleaved
from dtwz.client.api import Client
from dtwz.format.ids import ObjectId
from dtwz.node.config import NodeConfig
from dtwz.node.launcher import free_ports
from dtwz.node.server import Node
from dtwz.resolver.membership import MemberState
from dtwz.security import keyfiles
from dtwz.security.keys import Identity

_LOG = Console(stderr=True)
_HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    paths: int  # distinct 4-level trees
    cold: int  # cold resolutions per repetition
    cached: int  # cached resolutions per repetition
    http: int  # HTTP requests per repetition


FULL = Scale(repeat=7, paths=50, cold=100, cached=20_000, http=1000)
QUICK = Scale(repeat=3, paths=10, cold=20, cached=2000, http=200)


def main(argv: list[str] | None = None) -> None:
    opts = parser(__doc__.splitlines()[0]).parse_args(sys.argv[1:] if argv is None else argv)
    scale = QUICK if opts.quick else FULL
    repeat = opts.repeat or scale.repeat
    settings: dict[str, object] = {
        "quick": opts.quick,
        "repeat": repeat,
        "dir": str(opts.dir),
        "filesystem": check_dir(opts.dir),
        "paths": scale.paths,
        "nodes": "A: own process, homes the namespace; B: here",
    }
    report = Report("dtwz name resolution vs location lookup (same run)", settings)
    with scratch_dir(opts.dir, "names") as root, contextlib.ExitStack() as stack:
        bench = NamesBench(stack, root, scale, repeat, report)
        bench.start()
        bench.measure()
    report.print()
    if opts.json:
        report.write_json(opts.json)


class NamesBench:
    def __init__(
        self, stack: contextlib.ExitStack, root: Path, scale: Scale, repeat: int, report: Report
    ) -> None:
        self.stack, self.root, self.scale, self.repeat = stack, root, scale, repeat
        self.report = report
        self.paths: list[str] = []
        self.targets: list[ObjectId] = []

    def start(self) -> None:
        _LOG.log("starting node A (a process) and node B (here) ...")
        peer_a, _ = start_node_a(self.stack, self.root)
        self.on_loop = LoopThread()
        self.stack.callback(self.on_loop.close)
        b_peer, b_http = free_ports(2)
        config = NodeConfig(
            node_id="b",
            data_dir=self.root / "b",
            bind_host=_HOST,
            peer_port=b_peer,
            http_port=b_http,
            seeds=[peer_a],
            durable=False,
            keys_dir=self.root / "keys",
        )
        self.b = Node(config)
        self.stack.callback(lambda: self.on_loop.run(self.b.shutdown()))
        self.on_loop.run(self.b.startup())
        self.on_loop.run(self._joined())
        admin = Identity.load(keyfiles.admin_identity_file(self.root / "keys"))
        self.client = Client(config.http_addr, identity=admin)
        self.stack.callback(self.client.close)
        _LOG.log(f"making {self.scale.paths} trees /bK/c/d/obj, homed on A ...")
        with Client(f"http://{_HOST}:{self._http_a()}", identity=admin) as at_a:
            for k in range(self.scale.paths):
                at_a.mkdir(f"/b{k}/c/d", parents=True)
                oid = at_a.create(8192, b"target")
                at_a.bind(f"/b{k}/c/d/obj", oid)
                self.paths.append(f"/b{k}/c/d/obj")
                self.targets.append(oid)
        got = self.on_loop.run(self._resolve(self.paths[0]))
        if got != self.targets[0] or self.on_loop.run(self.b.locate(got)).home != "a":
            raise RuntimeError("node B resolved the wrong object")

    def _http_a(self) -> int:
        member = self.b.membership.get("a")
        assert member is not None
        return int(member.http_addr.rsplit(":", 1)[1])

    async def _joined(self) -> None:
        async def alive() -> None:
            await self.b.joined.wait()
            while self.b.membership.state("a") != MemberState.ALIVE:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(alive(), 30)

    async def _resolve(self, path: str) -> ObjectId:
        assert self.b.names is not None
        return (await self.b.names.resolve(path)).object_id

    def _forget(self) -> None:
        """Nothing about names or locations cached at B (copies, caches, its shard)."""
        b = self.b
        assert b.names is not None and b.service is not None
        b.names.cache.clear()
        b.service.copies.drop_home("a")
        b.locations.clear()
        b.shard.drop_not_owned("b", ["a"], 1)

    async def _cold_resolves(self) -> int:
        elapsed = 0
        for i in range(self.scale.cold):
            self._forget()
            start = time.perf_counter_ns()
            await self._resolve(self.paths[i % len(self.paths)])
            elapsed += time.perf_counter_ns() - start
        return elapsed

    async def _cold_locates(self) -> int:
        elapsed = 0
        for i in range(self.scale.cold):
            self._forget()
            start = time.perf_counter_ns()
            await self.b.locate(self.targets[i % len(self.targets)])
            elapsed += time.perf_counter_ns() - start
        return elapsed

    async def _warm_walks(self) -> int:
        assert self.b.names is not None
        for path in self.paths:  # the other batches dropped the copies: fetch them, untimed
            await self._resolve(path)
        elapsed = 0
        for i in range(self.scale.cold):
            self.b.names.cache.clear()  # the directory copies stay
            start = time.perf_counter_ns()
            await self._resolve(self.paths[i % len(self.paths)])
            elapsed += time.perf_counter_ns() - start
        return elapsed

    async def _cached_resolves(self) -> int:
        names = self.b.names
        assert names is not None
        paths = self.paths
        for path in paths:
            await names.resolve(path)  # warm, untimed
        start = time.perf_counter_ns()
        for i in range(self.scale.cached):
            await names.resolve(paths[i % len(paths)])
        return time.perf_counter_ns() - start

    async def _cached_locates(self) -> int:
        locate, targets = self.b.locate, self.targets
        for oid in targets:
            await locate(oid)
        start = time.perf_counter_ns()
        for i in range(self.scale.cached):
            await locate(targets[i % len(targets)])
        return time.perf_counter_ns() - start

    def _http_resolves(self) -> None:
        for i in range(self.scale.http):
            self.client.resolve(self.paths[i % len(self.paths)])

    def _http_locates(self) -> None:
        for i in range(self.scale.http):
            self.client.locate(self.targets[i % len(self.targets)])

    def measure(self) -> None:
        s, run = self.scale, self.on_loop.self_timed
        _LOG.log("measuring cold lookups ...")
        cold = measure_interleaved(
            {
                "resolve": run(self._cold_resolves),
                "locate": run(self._cold_locates),
                "walk": run(self._warm_walks),
            },
            ops=s.cold,
            repeat=self.repeat,
        )
        _LOG.log("measuring cached lookups ...")
        cached = measure_interleaved(
            {"resolve": run(self._cached_resolves), "locate": run(self._cached_locates)},
            ops=s.cached,
            repeat=self.repeat,
        )
        _LOG.log("measuring lookups through B's HTTP API ...")
        for path in self.paths:  # B's caches warm: the HTTP figures are the API's cost
            self.client.resolve(path)
        http = measure_interleaved(
            {"resolve": self._http_resolves, "locate": self._http_locates},
            ops=s.http,
            repeat=self.repeat,
        )
        locate_cold = "node.locate, nothing cached (1 round trip)"
        self.report.add(
            Row(
                "resolve /bK/c/d/obj, nothing cached at B",
                cold["resolve"],
                locate_cold,
                cold["locate"],
            ),
            Row(
                "  (directories held, name cache cleared)",
                cold["walk"],
                locate_cold,
                cold["locate"],
            ),
            Row(
                "resolve /bK/c/d/obj, cached",
                cached["resolve"],
                "node.locate, cached",
                cached["locate"],
            ),
            Row(
                "  (Client.resolve through B's HTTP API)",
                http["resolve"],
                "Client.locate through B's HTTP API",
                http["locate"],
            ),
        )
        assert self.b.names is not None and self.b.service is not None
        self.report.notes["cold resolution"] = (
            "root, /bK, /bK/c and /bK/c/d fetched from A: four round trips; the directories' "
            "homes are guessed (the root's from the seeds, the others' from their parent's), "
            "so no Locate round trips"
        )
        self.report.notes["node B names"] = str(self.b.names.status())


if __name__ == "__main__":
    main()
