"""CodeRunner and its worker: real worker processes over a real store in tmp_path.

The list walked is built in the store with transactions; one test also serves a
second store through a minimal stand-in for the node's ``/objects/{id}/image``
endpoint, so pointers out of local objects lead to remote ones. Every test
closes its runner and checks that no worker process is left.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dtwz import ObjectId, Store
from dtwz.errors import CodeError, CodeTimeout, InvalidArgument
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.graph.code import CodeBody, code_from_function
from dtwz.node.code.runner import CodeRunner
from tests.helpers import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

CELL = struct.Struct("<QQ")  # value, next pointer
RUN_TIMEOUT = 60.0


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


def spin_with_child(api, root, pid_file):  # type: ignore[no-untyped-def]
    import subprocess

    child = subprocess.Popen(["sleep", "120"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    while True:
        pass


def write_store(api, root):  # type: ignore[no-untyped-def]
    with api.store.transaction() as tx:
        tx.create()


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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store", create=True, durable=False) as opened:
        yield opened


@pytest.fixture
async def runner(store: Store) -> AsyncIterator[CodeRunner]:
    async with CodeRunner(store.path, f"http://127.0.0.1:{free_port()}") as started:
        yield started
    assert workers_of_this_process() == []


async def run(
    runner: CodeRunner, fn: Any, root: ObjectId, *args: Any, timeout: float = RUN_TIMEOUT
) -> Any:
    """The result of ``fn(api, root, *args)`` run by ``runner``."""
    return (await runner.run(code_from_function(fn), root, list(args), timeout=timeout)).result


# -- results --------------------------------------------------------------------------------


async def test_walks_a_list_over_many_objects(store: Store, runner: CodeRunner) -> None:
    values = [i * 7 for i in range(30)]
    root = build_list(store, values, per_object=4)
    outcome = await runner.run(code_from_function(walk), root, [], timeout=RUN_TIMEOUT)
    assert outcome.result == values
    assert outcome.stats["local_reads"] >= 8  # the root, then each of 7 more objects
    assert outcome.stats["remote_objects"] == outcome.stats["remote_bytes"] == 0
    assert 0 <= outcome.elapsed < RUN_TIMEOUT
    # the worker is warm: the second call runs in the same process
    pid = runner.worker_pid
    assert await run(runner, walk, root, 100) == values
    assert runner.worker_pid == pid


async def test_args_and_root_reach_the_function(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    result = await run(runner, echo, root, 1, "two", {"three": [3.5, None, True]})
    assert result["root"] == root.hex()
    assert result["args"] == [1, "two", {"three": [3.5, None, True]}]
    assert result["pid"] == runner.worker_pid != os.getpid()


async def test_typed_views_follow_pointers(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, list(range(1, 11)), per_object=3)
    outcome = await runner.run(CodeBody(TYPED_SOURCE, "total"), root, [], timeout=RUN_TIMEOUT)
    assert outcome.result == 55


async def test_store_changes_are_seen_by_the_warm_worker(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1, 2, 3])
    assert await run(runner, walk, root) == [1, 2, 3]
    with store.transaction() as tx:
        tx.write(root, DATA_START, CELL.pack(100, 0)[:8])
    assert await run(runner, walk, root) == [100, 2, 3]


# -- pointers into remote objects ----------------------------------------------------------


@pytest.fixture
async def remote_node(tmp_path: Path) -> AsyncIterator[tuple[str, Store, list[tuple[str, str]]]]:
    """Another store served as a node serves object images (``Client.get``'s request);
    the list gathers (object, the ``via`` object it was linked from) per fetch."""
    remote = Store.open(tmp_path / "remote", create=True, durable=False)
    fetches: list[tuple[str, str]] = []

    async def image(request: web.Request) -> web.Response:
        oid = ObjectId.parse(request.match_info["id"])
        fetches.append((oid.hex(), request.query.get("via", "")))
        if not remote.exists(oid):
            return web.json_response(
                {"error": "ObjectNotFound", "message": f"no object {oid.hex()}"}, status=404
            )
        obj = remote.get(oid)
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

    app = web.Application()
    app.router.add_get("/objects/{id}/image", image)
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(app_runner, sock)
    await site.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", remote, fetches
    finally:
        await app_runner.cleanup()
        remote.close()


async def test_pointers_out_of_local_objects_reach_remote_ones(
    store: Store, remote_node: tuple[str, Store, list[tuple[str, str]]]
) -> None:
    url, remote, fetches = remote_node
    back_home = build_list(store, [7, 8])  # where the remote part leads back to
    remote_head = build_list(
        remote, [100, 101, 102, 103, 104], per_object=2, then=(back_home, DATA_START)
    )  # 3 objects
    root = build_list(store, [1, 2, 3], then=(remote_head, DATA_START))
    async with CodeRunner(store.path, url) as runner:
        outcome = await runner.run(code_from_function(walk), root, [], timeout=RUN_TIMEOUT)
        assert outcome.result == [1, 2, 3, 100, 101, 102, 103, 104, 7, 8]
        assert outcome.stats["remote_objects"] == 3  # a copy's pointer home is no fetch
        # each fetch names the object whose pointer led there (edge-use counting)
        assert fetches[0] == (remote_head.hex(), root.hex())
        assert all(via for _, via in fetches[:3])
        assert outcome.stats["remote_bytes"] >= 3 * (HEADER_RECORD_SIZE + 2 * CELL.size)
        assert outcome.stats["local_reads"] >= 1
        # a root that only the remote node holds: api.get fetches a copy
        outcome = await runner.run(code_from_function(walk), remote_head, [], timeout=RUN_TIMEOUT)
        assert outcome.result == [100, 101, 102, 103, 104, 7, 8]
        assert outcome.stats["local_reads"] == 1
        # an object nobody holds: the node's ObjectNotFound, as the function's error
        missing = ObjectId(os.urandom(16))
        with pytest.raises(CodeError, match="walk raised ObjectNotFound: no object"):
            await runner.run(code_from_function(walk), missing, [], timeout=RUN_TIMEOUT)
    assert workers_of_this_process() == []


async def test_a_missing_object_without_a_node_is_a_clean_error(runner: CodeRunner) -> None:
    missing = ObjectId(os.urandom(16))
    says = re.escape("walk raised PeerUnavailable: node http://127.0.0.1")
    with pytest.raises(CodeError, match=says):
        await run(runner, walk, missing)


# -- failures -------------------------------------------------------------------------------


async def test_a_function_that_raises(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="fail raised ZeroDivisionError: division by zero") as info:
        await run(runner, fail, root, 0)
    assert not isinstance(info.value, CodeTimeout)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "return 1 / divisor" in notes and "line 2, in fail" in notes
    assert "worker.py" not in notes  # the worker's own frames are left out
    pid = runner.worker_pid
    assert await run(runner, fail, root, 4) == 0.25  # the worker lives on
    assert runner.worker_pid == pid


async def test_sys_exit_in_user_code_is_an_error(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="bye raised SystemExit: 3"):
        await run(runner, bye, root)
    assert await run(runner, walk, root) == [1]


async def test_user_code_cannot_write_the_store(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    before = sorted(store.object_ids())
    with pytest.raises(CodeError, match="write through the api"):
        await run(runner, write_store, root)
    assert sorted(store.object_ids()) == before


@pytest.mark.parametrize("kind", ["bytes", "nan", "object", "view", "huge", "sly"])
async def test_a_result_that_is_not_json_is_an_error(
    store: Store, runner: CodeRunner, kind: str
) -> None:
    root = build_list(store, [5])
    with pytest.raises(CodeError, match="the result of non_json is"):
        await run(runner, non_json, root, kind)
    pid = runner.worker_pid
    assert await run(runner, walk, root) == [5]
    assert runner.worker_pid == pid  # an error answer, not a crash


async def test_prints_do_not_break_the_protocol(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    # ~2.5 MB: far more than a pipe buffer, so stderr must be drained as it comes
    assert await run(runner, chatty, root, 12_000) == "still fine"
    assert await run(runner, walk, root) == [1]


async def test_arguments_over_the_frame_limit_are_refused(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    with pytest.raises(CodeError, match="exceeds the 64 MiB limit"):
        await run(runner, echo, root, "x" * (64 << 20))
    with pytest.raises(CodeError, match="not JSON-serialisable"):
        await runner.run(code_from_function(echo), root, [b"bytes"], timeout=RUN_TIMEOUT)
    with pytest.raises(InvalidArgument):
        await runner.run(code_from_function(echo), root, [], timeout=0)
    assert runner.worker_pid is None  # none of these started a worker


# -- timeouts and deaths --------------------------------------------------------------------


async def test_timeout_kills_the_worker_and_the_next_run_works(
    store: Store, runner: CodeRunner
) -> None:
    root = build_list(store, [1, 2])
    assert await run(runner, walk, root) == [1, 2]
    pid = runner.worker_pid
    assert pid is not None
    started = time.monotonic()
    with pytest.raises(CodeTimeout, match="spin ran past its time limit of 1s"):
        await run(runner, spin, root, timeout=1)
    assert time.monotonic() - started < 10
    assert gone(pid, timeout=0)  # killed and reaped before run() returned
    assert runner.worker_pid is None
    assert await run(runner, walk, root) == [1, 2]
    assert runner.worker_pid not in (None, pid)


async def test_timeout_kills_what_the_function_started(
    store: Store, runner: CodeRunner, tmp_path: Path
) -> None:
    root = build_list(store, [1])
    pid_file = tmp_path / "child.pid"
    with pytest.raises(CodeTimeout):
        await run(runner, spin_with_child, root, str(pid_file), timeout=2)
    assert gone(int(pid_file.read_text()))


async def test_a_worker_killed_between_runs_is_replaced(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [3, 4])
    for wait_for_death in (False, True):
        assert await run(runner, walk, root) == [3, 4]
        pid = runner.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        if wait_for_death:
            assert gone(pid)
            await asyncio.sleep(0.1)  # let the loop notice
        assert await run(runner, walk, root) == [3, 4]
        assert runner.worker_pid != pid


async def test_a_worker_dying_mid_call_is_a_code_error(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    says = re.escape("died while running die (exit status 7)")
    with pytest.raises(CodeError, match=says) as info:
        await run(runner, die, root, 7)
    assert "last words before exit" in str(info.value)
    assert await run(runner, walk, root) == [1]


async def test_a_cancelled_run_kills_its_worker(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [1])
    task = asyncio.ensure_future(run(runner, spin, root))
    for _ in range(500):  # until the worker has started and taken the call
        await asyncio.sleep(0.02)
        if runner.worker_pid is not None:
            break
    pid = runner.worker_pid
    assert pid is not None
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.worker_pid is None
    assert await run(runner, walk, root) == [1]
    assert gone(pid)


async def test_calls_are_serialised(store: Store, runner: CodeRunner) -> None:
    root = build_list(store, [9])
    results = await asyncio.gather(*(run(runner, echo, root, i) for i in range(5)))
    assert [r["args"] for r in results] == [[i] for i in range(5)]
    assert len({r["pid"] for r in results}) == 1
    assert runner.stats["workers_started"] == 1


# -- life cycle -----------------------------------------------------------------------------


async def test_close_leaves_no_process(store: Store) -> None:
    root = build_list(store, [1])
    runner = CodeRunner(store.path, f"http://127.0.0.1:{free_port()}")
    assert await run(runner, walk, root) == [1]
    pid = runner.worker_pid
    assert pid is not None and workers_of_this_process() == [pid]
    await runner.close()
    assert workers_of_this_process() == []
    assert gone(pid, timeout=0)
    await runner.close()  # idempotent
    with pytest.raises(CodeError, match="closed"):
        await run(runner, walk, root)
    assert workers_of_this_process() == []


async def test_close_during_a_call_stops_it(store: Store) -> None:
    root = build_list(store, [1])
    runner = CodeRunner(store.path, f"http://127.0.0.1:{free_port()}", stop_timeout=0.5)
    task = asyncio.ensure_future(run(runner, spin, root))
    for _ in range(500):
        await asyncio.sleep(0.02)
        if runner.worker_pid is not None:
            break
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await runner.close()
    assert time.monotonic() - started < 5
    with pytest.raises(CodeError, match="closed while running spin"):
        await task
    assert workers_of_this_process() == []


async def test_a_store_that_cannot_open_fails_the_start(tmp_path: Path) -> None:
    async with CodeRunner(tmp_path / "nowhere", "http://127.0.0.1:1") as runner:
        with pytest.raises(CodeError, match=r"did not start: it exited \(exit status 3\)") as info:
            await runner.run(code_from_function(walk), ObjectId(bytes(16)), [], timeout=5)
    assert "is not a dtwz store" in str(info.value)
    assert workers_of_this_process() == []
