"""The cluster's figures, each beside a baseline measured in the same run.

    python -m bench.bench_cluster [--quick] [--repeat N] [--json PATH] [--dir DIR]

Node A runs as its own process (``python -m dtwz node run``) and homes every object.
Node B runs inside this process, on an event loop in a background thread, joined to
A: its reads are timed on that loop, where they are issued, and B's own machinery
(heartbeats, the directory) runs as it does in a real node.

1. remote read of a 4 KiB object not yet cached at B (``service.read``; a different
   object per read) vs a raw pyzmq DEALER (zmq.asyncio) to a ROUTER in another
   process replying with 4 KiB (target at most 1.3x) and vs redis-py GET of 4 KiB
   from a redis-server (target at most 1x). For information: blocking pyzmq,
   redis.asyncio, a refetch whose location is already cached, and a second read
   served from the cached copy.
2. remote read of a 1 MiB object not yet cached: MiB/s vs raw pyzmq carrying 1 MiB
   (target at least 0.8x) and vs redis-py GET of 1 MiB (target at least 1.5x).
3. ``LocationCache.get`` on a populated cache: under 2 µs; beside a dict lookup.
   For information: ``await node.locate(oid)`` of a cached remote object.
4. 8 client processes doing keep-alive HTTP GETs of 4 KiB object data from node A
   (aiohttp) vs 8 doing redis-py GETs of 4 KiB (no target: for information).

The benchmark starts its own redis-server (no persistence, a scratch folder, a free
loopback port); without one on PATH the redis baselines are skipped and it says why.
``_router`` is this module's child role (the raw ROUTER), not for direct use.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import random
import selectors
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio
import zmq
import zmq.asyncio
from rich.console import Console

from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row, Target
from bench.timing import Batch, Timing, measure, run_concurrently
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.config import NodeConfig
from dtwz.node.launcher import free_ports
from dtwz.node.server import Node
from dtwz.resolver.locations import LocationCache
from dtwz.resolver.membership import MemberState
from dtwz.security import keyfiles
from dtwz.security.auth import body_sha256, sign_request
from dtwz.security.keys import Identity
from dtwz.wire.messages import Create, Created, HomeRecord

_LOG = Console(stderr=True)
_HOST = "127.0.0.1"
_SMALL = 4096
_EMPTY_DIGEST = body_sha256(b"")
_BIG = 1 << 20
_ZERO_COPY_FROM = 64 << 10  # as the peer endpoint: copy small frames, track big ones
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_CREATE_PARALLEL = 32
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    small_reads: int  # uncached 4 KiB reads per repetition (one object each)
    big_reads: int  # uncached 1 MiB reads per repetition
    small_trips: int  # baseline round trips / GETs of 4 KiB per repetition
    big_trips: int
    cache_entries: int
    lookups: int
    locates: int
    clients: int
    client_requests: int  # per client and repetition


FULL = Scale(
    repeat=7,
    small_reads=200,
    big_reads=24,
    small_trips=2000,
    big_trips=60,
    cache_entries=100_000,
    lookups=200_000,
    locates=20_000,
    clients=8,
    client_requests=1500,
)
QUICK = Scale(
    repeat=3,
    small_reads=40,
    big_reads=4,
    small_trips=300,
    big_trips=12,
    cache_entries=10_000,
    lookups=20_000,
    locates=2000,
    clients=8,
    client_requests=150,
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in _CHILD_ROLES:
        _CHILD_ROLES[args[0]](*args[1:])
        return
    opts = parser(__doc__.splitlines()[0]).parse_args(args)
    scale = QUICK if opts.quick else FULL
    repeat = opts.repeat or scale.repeat
    settings: dict[str, object] = {"quick": opts.quick, "repeat": repeat, "dir": str(opts.dir)}
    settings["filesystem"] = check_dir(opts.dir)
    settings["nodes"] = "A: own process, --no-durable; B: in this process"
    report = Report("dtwz cluster reads vs baselines (same run)", settings)
    with scratch_dir(opts.dir, "cluster") as root, contextlib.ExitStack() as stack:
        bench = ClusterBench(stack, root, scale, repeat, report)
        bench.start()
        for figure in (bench.small_reads, bench.big_reads, bench.lookups, bench.clients):
            _LOG.log(f"measuring {figure.__name__} ...")
            figure()
        report.notes.update(bench.notes())
    report.print()
    if opts.json:
        report.write_json(opts.json)


# -- the running pieces ---------------------------------------------------------------


class LoopThread:
    """An event loop in a background thread; ``run`` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def timed(self, make: Callable[[], Awaitable[object]]) -> Batch:
        """A ``measure`` batch timed on the loop itself (the thread hop is not counted)."""
        return lambda: self.run(_elapsed_ns(make()))

    def self_timed(self, make: Callable[[], Coroutine[Any, Any, int]]) -> Batch:
        """A ``measure`` batch whose coroutine returns the nanoseconds it timed itself."""
        return lambda: self.run(make())

    def close(self) -> None:
        self.run(_cancel_the_rest())  # as asyncio.run does: no task dies pending
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_the_rest() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _elapsed_ns(work: Awaitable[object]) -> int:
    start = time.perf_counter_ns()
    await work
    return time.perf_counter_ns() - start


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _spawn(stack: contextlib.ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    stack.callback(_stop_process, proc)
    return proc


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {_START_TIMEOUT_S:g}s")
        time.sleep(0.05)


def start_node_a(stack: contextlib.ExitStack, root: Path) -> tuple[str, int]:
    """Node A as its own process; returns its peer address and HTTP port once /ready."""
    peer_port, http_port = free_ports(2)
    log = root / "node-a.log"
    argv = [
        sys.executable,
        "-m",
        "dtwz",
        "node",
        "run",
        "--node-id",
        "a",
        "--data-dir",
        str(root / "a"),
        "--bind-host",
        _HOST,
        "--peer-port",
        str(peer_port),
        "--http-port",
        str(http_port),
        "--no-durable",
        "--log-level",
        "warning",
        "--keys-dir",
        str(root / "keys"),
    ]
    proc = _spawn(stack, argv, log)
    try:
        _wait_until(partial(_http_ok, http_port, "/ready"), proc, "node A")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its log ends:\n{_tail(log)}") from None
    return f"tcp://{_HOST}:{peer_port}", http_port


def _http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection(_HOST, port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def start_router(stack: contextlib.ExitStack) -> str:
    """The raw baseline's ROUTER in its own process; returns its address."""
    argv = [sys.executable, "-m", "bench.bench_cluster", "_router"]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    stack.callback(_stop_process, proc)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(_START_TIMEOUT_S):
            raise RuntimeError("the raw ROUTER process did not start")
    addr = proc.stdout.readline().decode().strip()
    if not addr.startswith("tcp://"):
        raise RuntimeError(f"the raw ROUTER process failed (status {proc.poll()})")
    return addr


def start_redis(stack: contextlib.ExitStack, root: Path) -> tuple[int | None, str]:
    """A private redis-server: (its port, "") or (None, why there is none)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "redis-server is not on PATH (Debian: apt-get install redis-server)"
    folder = root / "redis"
    folder.mkdir()
    (port,) = free_ports(1)
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        _HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
    ]
    proc = _spawn(stack, argv, folder / "redis.log")

    def answers() -> bool:
        try:
            return bool(redis.Redis(host=_HOST, port=port, socket_timeout=1.0).ping())
        except redis.RedisError:
            return False

    try:
        _wait_until(answers, proc, "redis-server")
    except RuntimeError as exc:
        return None, f"{exc}: {_tail(folder / 'redis.log', 3)}"
    return port, ""


# -- the benchmark ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Baselines:
    """One payload size's baselines; the redis ones are None when redis was skipped."""

    zmq_async: Timing
    zmq_blocking: Timing
    redis: Timing | None
    redis_async: Timing | None


class ClusterBench:
    def __init__(
        self, stack: contextlib.ExitStack, root: Path, scale: Scale, repeat: int, report: Report
    ) -> None:
        self.stack, self.root, self.scale, self.repeat = stack, root, scale, repeat
        self.report = report
        self.redis_port: int | None = None
        self.redis_skipped = ""
        self.small: list[ObjectId] = []
        self.big: list[ObjectId] = []
        self._stats: dict[str, str] = {}

    # -- setting up -----------------------------------------------------------------

    def start(self) -> None:
        _LOG.log("starting node A, the raw ROUTER and redis-server ...")
        peer_a, self.http_a = start_node_a(self.stack, self.root)
        self.router = start_router(self.stack)
        self.redis_port, self.redis_skipped = start_redis(self.stack, self.root)
        if self.redis_port is None:
            _LOG.log(f"[yellow]redis baselines skipped: {self.redis_skipped}")
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
        self.stack.callback(self._stop_b)
        self.on_loop.run(self.b.startup())
        self.on_loop.run(self._joined())
        s = self.scale
        small_count = (self.repeat + 1) * s.small_reads  # one warm-up repetition
        big_count = (self.repeat + 1) * s.big_reads
        _LOG.log(f"creating {small_count:,} 4 KiB and {big_count} 1 MiB objects on A ...")
        self.small_data, self.big_data = os.urandom(_SMALL), os.urandom(_BIG)
        self.small = self.on_loop.run(self._create(small_count, 8192, self.small_data))
        self.big = self.on_loop.run(self._create(big_count, 2 * _BIG, self.big_data))
        if self.redis_port is not None:
            self._fill_redis()

    def _stop_b(self) -> None:
        try:
            self.on_loop.run(self.b.shutdown())
        except Exception as exc:  # a half-started node: say so, stop the rest anyway
            _LOG.log(f"[yellow]node B did not shut down cleanly: {exc!r}")

    async def _joined(self) -> None:
        async def both_alive() -> None:
            await self.b.joined.wait()
            while self.b.membership.state("a") != MemberState.ALIVE:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(both_alive(), _START_TIMEOUT_S)

    async def _create(self, count: int, size: int, data: bytes) -> list[ObjectId]:
        """Objects homed on A (the Create peer message), each holding ``data``."""
        gate = asyncio.Semaphore(_CREATE_PARALLEL)

        async def one() -> ObjectId:
            async with gate:
                reply = await self.b.request("a", Create(b"", size, 0, 3, data), 30.0)
            assert isinstance(reply, Created)
            return reply.object_id

        return list(await asyncio.gather(*(one() for _ in range(count))))

    def _redis(self) -> redis.Redis:
        assert self.redis_port is not None
        return redis.Redis(host=_HOST, port=self.redis_port)

    def _fill_redis(self) -> None:
        client = self._redis()
        pipe = client.pipeline(transaction=False)
        for i in range(self.scale.small_trips):
            pipe.set(f"small:{i}", self.small_data)
        for i in range(self.scale.big_trips):
            pipe.set(f"big:{i}", self.big_data)
        pipe.execute()
        client.close()

    # -- 1. 4 KiB remote reads -------------------------------------------------------

    def small_reads(self) -> None:
        s, service = self.scale, self.b.service
        assert service is not None
        self._check_read(self.small[0], self.small_data)
        runs = _chunks(self.small, s.small_reads)
        timed = partial(measure, ops=s.small_reads, repeat=self.repeat)
        before = self._counters()
        uncached = timed(self.on_loop.timed(lambda: _read_each(service, next(runs), _SMALL)))
        self._note_fetches("4 KiB uncached reads", before, len(self.small))
        runs = _chunks(self.small, s.small_reads)
        cached = timed(self.on_loop.timed(lambda: _read_each(service, next(runs), _SMALL)))
        service.copies.drop_home("a")  # forget the copies, keep the cached locations
        runs = _chunks(self.small, s.small_reads)
        before = self._counters()
        refetch = timed(self.on_loop.timed(lambda: _read_each(service, next(runs), _SMALL)))
        self._note_fetches("4 KiB refetches", before, len(self.small))
        base = self._baselines(_SMALL, s.small_trips, "small")
        zmq_name, name = "raw pyzmq asyncio DEALER, 4 KiB", "remote read 4 KiB, not cached at B"
        self.report.add(
            Row(name, uncached, zmq_name, base.zmq_async, target=Target("max_ratio", 1.3)),
            _redis_row(name, uncached, "redis-py GET 4 KiB", base.redis, 1.0),
            Row("  (same)", uncached, "raw pyzmq blocking, 4 KiB", base.zmq_blocking),
            _redis_row("  (same)", uncached, "redis.asyncio GET 4 KiB", base.redis_async),
            Row("  (not cached, location cached)", refetch, zmq_name, base.zmq_async),
            _redis_row("  (second read: copy cached)", cached, "redis-py GET 4 KiB", base.redis),
        )

    def _check_read(self, oid: ObjectId, expected: bytes) -> None:
        assert self.b.service is not None
        view, _, home = self.on_loop.run(self.b.service.read(oid, DATA_START, len(expected)))
        if bytes(view) != expected or home != "a":
            raise RuntimeError(f"node B read the wrong bytes of {oid.hex()} (home {home})")
        self.b.service.copies.drop_home("a")

    def _counters(self) -> tuple[int, int, int]:
        assert self.b.service is not None
        requests = self.b.peer.stats["requests_out"]
        return self.b.service.stats["remote_reads"], self.b.stats["directory_lookups"], requests

    def _note_fetches(self, what: str, before: tuple[int, int, int], expected: int) -> None:
        fetched, lookups, requests = (a - b for a, b in zip(self._counters(), before, strict=True))
        self._stats[what] = (
            f"{fetched:,} copies fetched (expected {expected:,}), {lookups:,} directory "
            f"lookups, {requests:,} peer requests from B ({requests / max(fetched, 1):.2f}/read)"
        )

    def _baselines(self, size: int, trips: int, prefix: str) -> _Baselines:
        timed = partial(measure, ops=trips, repeat=self.repeat)
        trips_async = partial(_zmq_async_trips, self.router, size, trips)
        zmq_async = timed(self.on_loop.self_timed(trips_async))
        with _zmq_dealer(self.router) as dealer:
            zmq_blocking = timed(partial(_zmq_trips, dealer, size, trips))
        if self.redis_port is None:
            return _Baselines(zmq_async, zmq_blocking, None, None)
        keys = [f"{prefix}:{i}" for i in range(trips)]
        client = self._redis()
        redis_sync = timed(partial(_redis_gets, client, keys))
        client.close()
        gets = partial(_redis_async_gets, _HOST, self.redis_port, keys)
        return _Baselines(zmq_async, zmq_blocking, redis_sync, timed(self.on_loop.self_timed(gets)))

    # -- 2. 1 MiB remote reads ---------------------------------------------------------

    def big_reads(self) -> None:
        s, service = self.scale, self.b.service
        assert service is not None
        self._check_read(self.big[0], self.big_data)
        runs = _chunks(self.big, s.big_reads)
        timed = partial(measure, ops=s.big_reads, repeat=self.repeat)
        before = self._counters()
        uncached = timed(self.on_loop.timed(lambda: _read_each(service, next(runs), _BIG)))
        self._note_fetches("1 MiB uncached reads", before, len(self.big))
        runs = _chunks(self.big, s.big_reads)
        cached = timed(self.on_loop.timed(lambda: _read_each(service, next(runs), _BIG)))
        service.copies.drop_home("a")  # 2 MiB mappings each: give the memory back
        base = self._baselines(_BIG, s.big_trips, "big")
        name, redis_name = "remote read 1 MiB, not cached at B", "redis-py GET 1 MiB"
        mib = partial(Row, rate=True, unit="MiB")  # one read moves 1 MiB: reads/s are MiB/s
        redis_row = partial(_redis_row, rate=True, unit="MiB")
        zmq_name, goal = "raw pyzmq asyncio DEALER, 1 MiB", Target("min_ratio", 0.8)
        self.report.add(
            mib(name, uncached, zmq_name, base.zmq_async, target=goal),
            redis_row(name, uncached, redis_name, base.redis, 1.5),
            mib("  (same)", uncached, "raw pyzmq blocking, 1 MiB", base.zmq_blocking),
            redis_row("  (second read: copy cached)", cached, redis_name, base.redis),
        )

    # -- 3. location lookups -----------------------------------------------------------

    def lookups(self) -> None:
        s = self.scale
        rng = random.Random(3)
        records = [
            HomeRecord(ObjectId(rng.randbytes(16)), "a", 1, 1) for _ in range(s.cache_entries)
        ]
        cache = LocationCache()
        plain: dict[bytes, HomeRecord] = {}
        for record in records:
            cache.put(record)
            plain[record.object_id] = record
        picks = [records[rng.randrange(len(records))].object_id for _ in range(s.lookups)]
        timed = partial(measure, ops=s.lookups, repeat=self.repeat)
        base = timed(partial(_dict_gets, plain, picks))
        ours = timed(partial(_cache_gets, cache, picks))
        remote = [oid for oid in self.small if oid in self.b.locations]
        if not remote:
            raise RuntimeError("node B cached no locations of A's objects")
        located = _cycle(remote, s.locates)
        locate = measure(
            self.on_loop.timed(partial(_locate_each, self.b, located)),
            ops=len(located),
            repeat=self.repeat,
        )
        entries, goal = f"{s.cache_entries:,} entries", Target("max_seconds", 2e-6)
        dict_name = f"dict.get, {entries}"
        self.report.add(
            Row(f"LocationCache.get, {entries}", ours, dict_name, base, target=goal),
            Row("  (await node.locate(oid), cached remote)", locate, dict_name, base),
        )

    # -- 4. concurrent clients -----------------------------------------------------------

    def clients(self) -> None:
        s = self.scale
        paths = [
            f"/objects/{oid.hex()}/data?offset={DATA_START}&length={_SMALL}" for oid in self.small
        ]
        for n in (s.clients, 1):
            ops = n * s.client_requests
            timed = partial(measure, ops=ops, repeat=self.repeat)
            admin = keyfiles.admin_identity_file(self.root / "keys")  # requests are signed
            prepare = partial(_http_client, self.http_a, paths, s.client_requests, admin)
            ours = timed(partial(run_concurrently, prepare, n, processes=True))
            base = None
            if self.redis_port is not None:
                keys = [f"small:{i}" for i in range(s.small_trips)]
                prepare = partial(_redis_client, self.redis_port, keys, s.client_requests)
                base = timed(partial(run_concurrently, prepare, n, processes=True))
            who = f"{n} client{'s' if n > 1 else ''}"
            figure = f"{who}: HTTP GET 4 KiB from node A" if n > 1 else f"  ({who})"
            self.report.add(
                _redis_row(figure, ours, f"{who}: redis-py GET 4 KiB", base, rate=True, unit="req")
            )

    def notes(self) -> dict[str, object]:
        notes: dict[str, object] = dict(self._stats)
        copies = self.b.config.directory_copies
        notes["node B directory shard"] = (
            f"{len(self.b.shard):,} records: with 2 nodes and {copies} copies B owns every record"
        )
        if self.redis_port is None:
            notes["redis baseline"] = f"skipped: {self.redis_skipped}"
        return notes


def _redis_row(
    figure: str, ours: Timing, name: str, baseline: Timing | None, target: float = 0, **row: Any
) -> Row:
    """A row against a redis baseline, which may have been skipped (then it has no target)."""
    if baseline is None:
        return Row(figure, ours, f"{name}: skipped", **row)
    goal = Target("min_ratio" if row.get("rate") else "max_ratio", target) if target else None
    return Row(figure, ours, name, baseline, target=goal, **row)


# -- timed loops ---------------------------------------------------------------------------


async def _read_each(service: Any, oids: Sequence[ObjectId], length: int) -> None:
    read = service.read
    for oid in oids:
        await read(oid, DATA_START, length)


async def _locate_each(node: Node, oids: Sequence[ObjectId]) -> None:
    locate = node.locate
    for oid in oids:
        await locate(oid)


def _cache_gets(cache: LocationCache, oids: Sequence[bytes]) -> None:
    get = cache.get
    for oid in oids:
        get(oid)


def _dict_gets(plain: dict[bytes, HomeRecord], oids: Sequence[bytes]) -> None:
    get = plain.get
    for oid in oids:
        get(oid)


@contextlib.contextmanager
def _zmq_dealer(addr: str) -> Iterator[zmq.Socket[bytes]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    try:
        yield sock
    finally:
        sock.close()
        ctx.term()


def _zmq_trips(sock: zmq.Socket[bytes], size: int, count: int) -> None:
    request, copy = size.to_bytes(8, "little"), size < _ZERO_COPY_FROM
    for _ in range(count):
        sock.send(request)
        sock.recv(copy=copy)


async def _zmq_async_trips(addr: str, size: int, count: int) -> int:
    """Round trips on a zmq.asyncio DEALER; nanoseconds, connecting not counted."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    request, copy = size.to_bytes(8, "little"), size < _ZERO_COPY_FROM
    try:
        await sock.send(request)
        await sock.recv()
        start = time.perf_counter_ns()
        for _ in range(count):
            await sock.send(request)
            await sock.recv(copy=copy)
        return time.perf_counter_ns() - start
    finally:
        sock.close()
        ctx.term()


def _redis_gets(client: redis.Redis, keys: Sequence[str]) -> None:
    get = client.get
    for key in keys:
        get(key)


async def _redis_async_gets(host: str, port: int, keys: Sequence[str]) -> int:
    client = redis.asyncio.Redis(host=host, port=port)
    try:
        await client.get(keys[0])  # connect before the clock starts
        start = time.perf_counter_ns()
        for key in keys:
            await client.get(key)
        return time.perf_counter_ns() - start
    finally:
        await client.aclose()


def _http_client(
    port: int, paths: list[str], count: int, identity_file: Path, i: int
) -> Callable[[], None]:
    """In a forked client: one keep-alive connection, ``count`` signed GETs of 4 KiB
    (signing is part of what a client pays, so it is inside the timing)."""
    conn = http.client.HTTPConnection(_HOST, port)
    mine = _cycle(paths[i * 97 % len(paths) :] + paths, count)
    identity = Identity.load(identity_file)
    _http_get(conn, mine[0], identity)  # connect before the start line

    def work() -> None:
        for path in mine:
            _http_get(conn, path, identity)

    return work


def _http_get(conn: http.client.HTTPConnection, path: str, identity: Identity) -> None:
    headers = sign_request(identity, "GET", path, _EMPTY_DIGEST, time.time(), audience="a")
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or len(body) != _SMALL:
        raise RuntimeError(f"GET {path}: status {response.status}, {len(body)} bytes")


def _redis_client(port: int, keys: list[str], count: int, i: int) -> Callable[[], None]:
    client = redis.Redis(host=_HOST, port=port)
    mine = _cycle(keys[i * 97 % len(keys) :] + keys, count)
    client.get(mine[0])
    return partial(_redis_gets, client, mine)


# -- the raw ROUTER (a child role) ---------------------------------------------------------


def _child_router() -> None:
    """Answer each request (a little-endian u64 size) with that many bytes."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port(f"tcp://{_HOST}")
    payload = memoryview(os.urandom(_BIG))
    print(f"tcp://{_HOST}:{port}", flush=True)
    while True:
        identity, request = sock.recv_multipart()
        size = min(int.from_bytes(request, "little"), _BIG)
        sock.send_multipart([identity, payload[:size]], copy=size < _ZERO_COPY_FROM)


_CHILD_ROLES: dict[str, Callable[..., None]] = {"_router": _child_router}


# -- helpers -------------------------------------------------------------------------------


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of ``size``: one per repetition, so no object is read twice."""
    for first in range(0, len(items) - size + 1, size):
        yield items[first : first + size]


def _cycle(items: list[T], length: int) -> list[T]:
    return (items * (length // len(items) + 1))[:length]


if __name__ == "__main__":
    main()
