"""CodeRunner and its workers: real, confined worker processes over a real store in
tmp_path (docs/GRAPH.md, code at the data; docs/SECURITY.md §11).

The list walked is built in the store with transactions. The node's side is a
``StoreCodeHost`` whose API is a small stand-in application (one test serves a
second store's object images through it, so pointers out of local objects lead to
remote ones). Every test closes its runner and checks that no worker process is
left. The isolation itself is tested in test_isolation.py, whole nodes in
test_code_security.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dtwz import ObjectId, Store
from dtwz.errors import AccessDenied, CodeError, CodeTimeout, InvalidArgument
from dtwz.format.ids import ZERO_ID
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.graph.agent import Caller
from dtwz.graph.code import CodeBody, code_from_function
from dtwz.node.code.host import CallerOf, StoreCodeHost
from dtwz.node.code.runner import CodeLimits, CodeRunner, Isolation

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

CELL = struct.Struct("<QQ")  # value, next pointer
RUN_TIMEOUT = 60.0
NOBODY = Caller(ZERO_ID)
ALICE = Caller(ObjectId(b"\xa1" * 16))
BOB = Caller(ObjectId(b"\xb0" * 16))


# -- the functions shipped to the worker (self-contained: imports inside) -------------------


def walk(api, root, limit=1000):  # type: ignore[no-untyped-def]
    """The values of a list of (value u64, next pointer) cells, following pointers."""
    obj, offset = api.get(root), 0x1000
    values = []
    while len(values) < limit:
        values.append(obj.read_u64(offset))
        word = obj.read_u64(offset + 8)
        if not word:
            return values
        obj, offset = obj.follow(word)
    raise RuntimeError("list longer than the limit")


def fail(api, root, divisor):  # type: ignore[no-untyped-def]
    return 1 / divisor


def spin(api, root):  # type: ignore[no-untyped-def]
    while True:
        pass


def nap(api, root, seconds):  # type: ignore[no-untyped-def]
    import os
    import time

    started = time.time()
    time.sleep(seconds)
    return [started, time.time(), os.getpid()]


def echo(api, root, *args):  # type: ignore[no-untyped-def]
    import os

    return {"root": root.hex(), "args": list(args), "pid": os.getpid()}


def chatty(api, root, lines):  # type: ignore[no-untyped-def]
    import os
    import sys

    for i in range(lines):
        print("print line", i, "x" * 200)
    sys.stdout.write("no newline at the end")
    print("to stderr", file=sys.stderr)
    os.write(1, b"straight to descriptor 1\n")
    return "still fine"


def non_json(api, root, kind):  # type: ignore[no-untyped-def]
    class Sly(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            raise KeyError("gotcha")

    return {
        "bytes": b"raw",
        "nan": float("nan"),
        "object": object(),
        "view": api.get(root).view,
        "huge": "x" * (65 << 20),
        "sly": Sly(a=1),
    }[kind]


def die(api, root, status):  # type: ignore[no-untyped-def]
    import os
    import sys

    print("last words before exit", file=sys.stderr, flush=True)
    os._exit(status)


def spin_with_child(api, root, tag):  # type: ignore[no-untyped-def]
    import subprocess

    subprocess.Popen(["sleep", tag])
    while True:
        pass


def touch_store(api, root, store, object_file):  # type: ignore[no-untyped-def]
    """What opening the store's files gives: the error of each attempt."""
    import os

    tried = {}
    for what, path, mode in (
        ("object for writing", object_file, "r+b"),
        ("object", object_file, "rb"),
        ("STORE", os.path.join(store, "STORE"), "rb"),
    ):
        try:
            with open(path, mode):
                tried[what] = "opened"
        except OSError as exc:
            tried[what] = type(exc).__name__
    try:
        os.listdir(store)
        tried["folder"] = "opened"
    except OSError as exc:
        tried["folder"] = type(exc).__name__
    tried["transaction"] = hasattr(api.store, "transaction")
    return tried


def bye(api, root):  # type: ignore[no-untyped-def]
    import sys

    sys.exit(3)


TYPED_SOURCE = """
from dtwz import U64, Layout, Pointer


class Cell(Layout):
    value = U64()
    next = Pointer("Cell")


def total(api, root):
    cell, out = api.view(Cell, root), 0
    while cell is not None:
        out += cell.value
        cell = cell.next
    return out
"""


# -- helpers -------------------------------------------------------------------------------


def build_list(
    store: Store,
    values: list[int],
    *,
    per_object: int = 4,
    then: tuple[ObjectId, int] | None = None,
) -> ObjectId:
    """Cells holding ``values``, ``per_object`` to an object, the last one pointing at
    ``then`` (an object and offset, maybe in another store); the first object's ID."""
    with store.transaction() as tx:
        cells: list[tuple[ObjectId, int]] = []
        oid = None
        for i, value in enumerate(values):
            if i % per_object == 0:
                oid = tx.create(1 << 14)
            assert oid is not None
            cells.append((oid, tx.append(oid, CELL.pack(value, 0))))
        for (src, at), (target, offset) in itertools.pairwise(cells):
            tx.write_pointer(src, at + 8, target, offset)
        if then is not None:
            src, at = cells[-1]
            tx.write_pointer(src, at + 8, then[0], then[1])
    assert cells[0][1] == DATA_START
    return cells[0][0]


def workers_of_this_process() -> list[int]:
    """PIDs of live (not zombie) code workers whose parent is this process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == os.getpid() and state != "Z" and b"dtwz.node.code.worker" in cmdline:
            out.append(int(entry))
    return out


def processes_running(argument: str) -> list[int]:
    """PIDs of live processes with ``argument`` on their command line."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argument.encode() in args and state != "Z":
            found.append(int(entry))
    return found


def gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stand_in(*routes: web.RouteDef) -> Callable[[CallerOf], web.Application]:
    """The node's API as a test gives it: these routes, anyone's."""

    def make(caller_of: CallerOf) -> web.Application:
        app = web.Application()
        app.add_routes(list(routes))
        return app

    return make


def isolation_for(store: Store, **options: Any) -> Isolation:
    return Isolation(protect=(store.path, store.path / "STORE"), **options)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store", create=True, durable=False) as opened:
        yield opened


@pytest.fixture
async def runner(store: Store) -> AsyncIterator[CodeRunner]:
    host = StoreCodeHost(store, stand_in())
    async with CodeRunner(host, isolation=isolation_for(store)) as started:
        yield started
    assert workers_of_this_process() == []


async def run(
    runner: CodeRunner,
    fn: Any,
    root: ObjectId,
    *args: Any,
    timeout: float = RUN_TIMEOUT,
    caller: Caller = NOBODY,
) -> Any:
    """The result of ``fn(api, root, *args)`` run by ``runner``."""
    body = code_from_function(fn)
    return (await runner.run(body, root, list(args), timeout=timeout, caller=caller)).result


async def started_worker(runner: CodeRunner) -> int:
    for _ in range(500):  # until a worker has started and taken the call
        await asyncio.sleep(0.02)
        if runner.worker_pids:
            return runner.worker_pids[0]
    raise AssertionError("no worker started")


# -- results --------------------------------------------------------------------------------


async def test_walks_a_list_over_many_objects(store: Store, runner: CodeRunner) -> None:
    values = [i * 7 for i in range(30)]
    root = build_list(store, values, per_object=4)
    outcome = await runner.run(
        code_from_function(walk), root, [], timeout=RUN_TIMEOUT, caller=NOBODY
    )
    assert outcome.result == values
    assert outcome.stats["local_reads"] >= 8  # the root, then each of 7 more objects
    assert outcome.stats["remote_objects"] == outcome.stats["remote_bytes"] == 0
    assert 0 <= outcome.elapsed < RUN_TIMEOUT
    # the worker is warm: the second call is served by the same worker
    pids = runner.worker_pids
    assert await run(runner, walk, root, 100) == values
    assert runner.worker_pids == pids
    assert runner.host.stats["opened"] >= 16  # type: ignore[attr-defined]


async def test_args_and_root_reach_the_function(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    result = await run(runner, echo, root, 1, "two", {"three": [3.5, None, True]})
    assert result["root"] == root.hex()
    assert result["args"] == [1, "two", {"three": [3.5, None, True]}]
    # each call runs in a process of its own, forked by the warm worker
    assert result["pid"] != os.getpid() and result["pid"] not in runner.worker_pids
    again = await run(runner, echo, root)
    assert again["pid"] != result["pid"]


async def test_typed_views_follow_pointers(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, list(range(1, 11)), per_object=3)
    outcome = await runner.run(
        CodeBody(TYPED_SOURCE, "total"), root, [], timeout=RUN_TIMEOUT, caller=NOBODY
    )
    assert outcome.result == 55


async def test_store_changes_are_seen_by_the_next_call(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1, 2, 3])
    assert await run(runner, walk, root) == [1, 2, 3]
    with store.transaction() as tx:
        tx.write(root, DATA_START, CELL.pack(100, 0)[:8])
    assert await run(runner, walk, root) == [100, 2, 3]


async def test_code_cannot_open_the_store_itself(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    tried = await run(runner, touch_store, root, str(store.path), str(store.object_path(root)))
    assert tried == {
        "object for writing": "PermissionError",
        "object": "PermissionError",
        "STORE": "PermissionError",
        "folder": "PermissionError",
        "transaction": False,
    }
    assert await run(runner, walk, root) == [1]  # what it may read, it reads by the node


# -- what the node does not hand over ------------------------------------------------------


def images_of(
    source: Store, fetches: list[tuple[str, str]], refuse: set[ObjectId] = frozenset()
) -> web.RouteDef:
    """``GET /objects/{id}/image`` of ``source``, as a node serves it (403 for ``refuse``)."""

    async def image(request: web.Request) -> web.Response:
        oid = ObjectId.parse(request.match_info["id"])
        fetches.append((oid.hex(), request.query.get("via", "")))
        if oid in refuse:
            return web.json_response({"error": "AccessDenied", "message": "not yours"}, status=403)
        if not source.exists(oid):
            return web.json_response(
                {"error": "ObjectNotFound", "message": f"no object {oid.hex()}"}, status=404
            )
        obj = source.get(oid)
        header = ObjectHeader.decode(obj.view[:HEADER_RECORD_SIZE])
        data = bytes(obj.view[DATA_START : header.data_end])
        fot = bytes(obj.view[header.fot_start : header.max_size])
        headers = {
            "X-Dtwz-Version": str(header.version),
            "X-Dtwz-Home": "n2",
            "X-Dtwz-Data-Len": str(len(data)),
            "X-Dtwz-Fot-Len": str(len(fot)),
        }
        body = bytes(obj.view[:HEADER_RECORD_SIZE]) + data + fot
        return web.Response(body=body, headers=headers)

    return web.get("/objects/{id}/image", image)


async def test_pointers_out_of_local_objects_reach_remote_ones(
    store: Store, tmp_path: Path
) -> None:
    fetches: list[tuple[str, str]] = []
    with Store.open(tmp_path / "remote", create=True, durable=False) as remote:
        back_home = build_list(store, [7, 8])  # where the remote part leads back to
        remote_head = build_list(
            remote, [100, 101, 102, 103, 104], per_object=2, then=(back_home, DATA_START)
        )  # 3 objects
        root = build_list(store, [1, 2, 3], then=(remote_head, DATA_START))
        host = StoreCodeHost(store, stand_in(images_of(remote, fetches)))
        async with CodeRunner(host, isolation=isolation_for(store)) as runner:
            outcome = await runner.run(
                code_from_function(walk), root, [], timeout=RUN_TIMEOUT, caller=NOBODY
            )
            assert outcome.result == [1, 2, 3, 100, 101, 102, 103, 104, 7, 8]
            assert outcome.stats["remote_objects"] == 3  # a copy's pointer home is no fetch
            # each fetch names the object whose pointer led there (edge-use counting)
            assert fetches[0] == (remote_head.hex(), root.hex())
            assert all(via for _, via in fetches[:3])
            assert outcome.stats["remote_bytes"] >= 3 * (HEADER_RECORD_SIZE + 2 * CELL.size)
            assert outcome.stats["local_reads"] >= 1
            # a root that only the remote node holds: api.get fetches a copy
            outcome = await runner.run(
                code_from_function(walk), remote_head, [], timeout=RUN_TIMEOUT, caller=NOBODY
            )
            assert outcome.result == [100, 101, 102, 103, 104, 7, 8]
            assert outcome.stats["local_reads"] == 1
            # an object nobody holds: the node's ObjectNotFound, as the function's error
            missing = ObjectId(os.urandom(16))
            with pytest.raises(CodeError, match="walk raised ObjectNotFound: no object"):
                await runner.run(
                    code_from_function(walk), missing, [], timeout=RUN_TIMEOUT, caller=NOBODY
                )
    assert workers_of_this_process() == []


class Refusing:
    """An access policy that refuses some objects to everyone but one caller."""

    def __init__(self, refused: set[ObjectId], owner: ObjectId) -> None:
        self.refused = refused
        self.owner = owner
        self.asked: list[tuple[ObjectId, ObjectId]] = []

    async def check(self, accessor: ObjectId, oid: ObjectId, *args: Any, **kw: Any) -> None:
        self.asked.append((accessor, oid))
        if oid in self.refused and accessor != self.owner:
            raise AccessDenied(f"{accessor} may not read {oid}")


async def test_only_what_the_caller_may_read_whole_is_mapped(store: Store) -> None:
    mine = build_list(store, [1, 2])
    theirs = build_list(store, [666])
    policy = Refusing({theirs}, owner=BOB.kuid)
    fetches: list[tuple[str, str]] = []
    host = StoreCodeHost(
        store,
        stand_in(images_of(store, fetches, refuse={theirs})),
        lambda: policy,  # type: ignore[arg-type,return-value]
    )
    async with CodeRunner(host, isolation=isolation_for(store)) as runner:
        assert await run(runner, walk, mine, caller=ALICE) == [1, 2]
        assert fetches == []  # mapped: the node handed over its file
        # not hers: no descriptor, and the API (the node's answer) refuses her
        with pytest.raises(CodeError, match="walk raised AccessDenied: not yours"):
            await run(runner, walk, theirs, caller=ALICE)
        assert fetches == [(theirs.hex(), "")]
        assert (ALICE.kuid, theirs) in policy.asked
        # its owner maps it
        assert await run(runner, walk, theirs, caller=BOB) == [666]
        assert len(fetches) == 1
    assert workers_of_this_process() == []


async def test_a_missing_object_is_the_apis_answer(runner: CodeRunner) -> None:
    missing = ObjectId(os.urandom(16))
    with pytest.raises(CodeError, match=re.escape("walk raised ClusterError: node http://")):
        await run(runner, walk, missing)  # the stand-in has no such route: HTTP 404


# -- failures -------------------------------------------------------------------------------


async def test_a_function_that_raises(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="fail raised ZeroDivisionError: division by zero") as info:
        await run(runner, fail, root, 0)
    assert not isinstance(info.value, CodeTimeout)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "return 1 / divisor" in notes and "line 2, in fail" in notes
    assert "worker.py" not in notes  # the worker's own frames are left out
    pids = runner.worker_pids
    assert await run(runner, fail, root, 4) == 0.25  # the worker lives on
    assert runner.worker_pids == pids


async def test_sys_exit_in_user_code_is_an_error(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="bye raised SystemExit: 3"):
        await run(runner, bye, root)
    assert await run(runner, walk, root) == [1]


@pytest.mark.parametrize("kind", ["bytes", "nan", "object", "view", "huge", "sly"])
async def test_a_result_that_is_not_json_is_an_error(
    store: Store, runner: CodeRunner, kind: str
) -> None:
    root = build_list(store, [5])
    with pytest.raises(CodeError, match="the result of non_json is"):
        await run(runner, non_json, root, kind)
    pids = runner.worker_pids
    assert await run(runner, walk, root) == [5]
    assert runner.worker_pids == pids  # an error answer, not a crash


async def test_prints_do_not_break_the_protocol(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    # ~2.5 MB: far more than a pipe buffer, so the output must be drained as it comes
    assert await run(runner, chatty, root, 12_000) == "still fine"
    assert await run(runner, walk, root) == [1]


async def test_arguments_over_the_frame_limit_are_refused(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="exceeds the 64 MiB limit"):
        await run(runner, echo, root, "x" * (64 << 20))
    with pytest.raises(CodeError, match="not JSON-serialisable"):
        await runner.run(
            code_from_function(echo), root, [b"bytes"], timeout=RUN_TIMEOUT, caller=NOBODY
        )
    with pytest.raises(InvalidArgument):
        await runner.run(code_from_function(echo), root, [], timeout=0, caller=NOBODY)
    assert runner.worker_pids == []  # none of these started a worker


# -- timeouts and deaths --------------------------------------------------------------------


async def test_a_timeout_kills_the_call_and_the_worker_lives_on(
    store: Store, runner: CodeRunner
) -> None:
    root = build_list(store, [1, 2])
    assert await run(runner, walk, root) == [1, 2]
    pids = runner.worker_pids
    started = time.monotonic()
    with pytest.raises(CodeTimeout, match="spin ran past its time limit of 1s"):
        await run(runner, spin, root, timeout=1)
    assert time.monotonic() - started < 10
    assert await run(runner, walk, root) == [1, 2]
    assert runner.worker_pids == pids
    assert runner.stats["timeouts"] == 1


async def test_a_timeout_kills_what_the_function_started(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    tag = str(100_000 + os.getpid())  # sleep's argument: how we find it
    task = asyncio.ensure_future(run(runner, spin_with_child, root, tag, timeout=5))
    for _ in range(250):
        await asyncio.sleep(0.02)
        if processes_running(tag):
            break
    started = processes_running(tag)
    assert started, "the function did not start its child"
    with pytest.raises(CodeTimeout):
        await task
    assert all(gone(pid) for pid in started)


async def test_a_worker_killed_between_runs_is_replaced(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [3, 4])
    for wait_for_death in (False, True):
        assert await run(runner, walk, root) == [3, 4]
        (pid,) = runner.worker_pids
        os.kill(pid, signal.SIGKILL)
        if wait_for_death:
            assert gone(pid)
            await asyncio.sleep(0.1)  # let the loop notice
        assert await run(runner, walk, root) == [3, 4]
        assert runner.worker_pids != [pid]


async def test_a_call_dying_is_a_code_error_with_its_last_words(
    store: Store, runner: CodeRunner
) -> None:
    root = build_list(store, [1])
    says = re.escape("the process running die died (exit status 7)")
    with pytest.raises(CodeError, match=says) as info:
        await run(runner, die, root, 7)
    assert "last words before exit" in str(info.value)
    assert await run(runner, walk, root) == [1]
    # another call's death does not show the output of this one
    with pytest.raises(CodeError) as other:
        await run(runner, die, root, 9)
    assert str(other.value).count("last words before exit") == 1


async def test_a_cancelled_run_kills_its_worker(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    task = asyncio.ensure_future(run(runner, spin, root))
    pid = await started_worker(runner)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.worker_pids == []
    assert await run(runner, walk, root) == [1]
    assert gone(pid)


# -- sharing the workers --------------------------------------------------------------------


async def test_one_callers_calls_run_one_at_a_time_others_beside_them(store: Store) -> None:
    root = build_list(store, [1])
    host = StoreCodeHost(store, stand_in())
    limits = CodeLimits(workers=2, per_caller=1)
    async with CodeRunner(host, limits=limits, isolation=isolation_for(store)) as runner:
        await run(runner, echo, root)  # warm a worker
        alice = [asyncio.ensure_future(run(runner, nap, root, 1.5, caller=ALICE)) for _ in range(3)]
        await asyncio.sleep(0.2)
        started = time.monotonic()
        bob = await run(runner, nap, root, 0.0, caller=BOB)
        waited = time.monotonic() - started
        assert waited < 1.2, f"bob's short call waited {waited:.2f}s behind alice's long ones"
        spans = sorted(await asyncio.gather(*alice))
        # alice's calls ran one after another: none began before the previous ended
        for (_, end, _), (begin, _, _) in itertools.pairwise(spans):
            assert begin >= end - 0.05
        assert spans[0][0] < bob[0] < spans[0][1]  # bob's ran beside alice's first
    assert workers_of_this_process() == []


async def test_callers_are_served_in_turn(store: Store) -> None:
    """With one worker, waiting callers alternate, whoever queued more."""
    root = build_list(store, [1])
    host = StoreCodeHost(store, stand_in())
    limits = CodeLimits(workers=1, per_caller=1)
    async with CodeRunner(host, limits=limits, isolation=isolation_for(store)) as runner:
        blocker = asyncio.ensure_future(run(runner, nap, root, 0.5, caller=BOB))
        await asyncio.sleep(0.2)
        order: list[str] = []

        async def one(who: Caller, name: str) -> None:
            await run(runner, nap, root, 0.0, caller=who)
            order.append(name)

        calls = [asyncio.ensure_future(one(ALICE, "a")) for _ in range(3)]
        await asyncio.sleep(0.05)
        calls += [asyncio.ensure_future(one(BOB, "b")) for _ in range(2)]
        await asyncio.gather(blocker, *calls)
        assert order == ["a", "b", "a", "b", "a"]


async def test_waiting_is_bounded(store: Store) -> None:
    root = build_list(store, [1])
    host = StoreCodeHost(store, stand_in())
    limits = CodeLimits(workers=1, per_caller=1, queue=1)
    async with CodeRunner(host, limits=limits, isolation=isolation_for(store)) as runner:
        long = asyncio.ensure_future(run(runner, nap, root, 2.0, caller=ALICE))
        await asyncio.sleep(0.3)
        waiting = asyncio.ensure_future(run(runner, nap, root, 0.0, caller=ALICE))
        await asyncio.sleep(0.05)
        with pytest.raises(CodeError, match=r"has 1 calls waiting .*\(at most 1\)"):
            await run(runner, nap, root, 0.0, caller=ALICE)
        # a call waits for a worker at most its own time limit
        with pytest.raises(CodeTimeout, match=r"waited 0\.5s for one of this node's 1 code"):
            await run(runner, nap, root, 0.0, caller=BOB, timeout=0.5)
        await asyncio.gather(long, waiting)
        assert runner.stats["refused"] == 1


# -- life cycle -----------------------------------------------------------------------------


async def test_close_leaves_no_process(store: Store) -> None:
    root = build_list(store, [1])
    runner = CodeRunner(StoreCodeHost(store, stand_in()), isolation=isolation_for(store))
    assert await run(runner, walk, root) == [1]
    (pid,) = runner.worker_pids
    assert workers_of_this_process() == [pid]
    await runner.close()
    assert workers_of_this_process() == []
    assert gone(pid, timeout=0)
    await runner.close()  # idempotent
    with pytest.raises(CodeError, match="closed"):
        await run(runner, walk, root)
    assert workers_of_this_process() == []


async def test_close_during_a_call_stops_it(store: Store) -> None:
    root = build_list(store, [1])
    host = StoreCodeHost(store, stand_in())
    runner = CodeRunner(host, isolation=isolation_for(store), stop_timeout=0.5)
    task = asyncio.ensure_future(run(runner, spin, root))
    await started_worker(runner)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await runner.close()
    assert time.monotonic() - started < 5
    with pytest.raises(CodeError, match="closed while running spin"):
        await task
    assert workers_of_this_process() == []
