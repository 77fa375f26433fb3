"""Code workers confined at the OS level, and each call's limits (docs/SECURITY.md §11).

Real workers over a store in tmp_path next to a keys folder whose admin identity
is (on purpose) readable by everyone: what keeps the code out is the isolation,
not the file's mode. A function probes what it can reach: files, the network (a
port this test listens on), signals and /proc of this process (the node's place).
Root-only tests become the worker's own uid as a root node does; the
``unprivileged`` ones confine as a node running as an ordinary user does
(Landlock, seccomp, a user namespace), the way the container image runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtwz import ObjectId, Store
from dtwz.errors import CodeError, CodeTimeout
from dtwz.format.ids import ZERO_ID
from dtwz.graph.agent import Caller
from dtwz.graph.code import code_from_function
from dtwz.node.code.host import StoreCodeHost
from dtwz.node.code.isolation import landlock_abi
from dtwz.node.code.runner import CodeLimits, CodeRunner, Isolation
from tests.node.code.test_runner import build_list, stand_in, workers_of_this_process

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the node's uid 0 path)")
NOBODY = Caller(ZERO_ID)
UID = 61000


def probe(api, root, paths, port, pids):  # type: ignore[no-untyped-def]
    """Everything a malicious function would try, and what it got."""
    import os
    import socket

    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
    opened = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                f.read(1)
            opened[path] = "opened"
        except OSError as exc:
            opened[path] = type(exc).__name__
    out["opened"] = opened
    try:
        sock = socket.socket()
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))
        out["network"] = "connected"
    except OSError as exc:
        out["network"] = type(exc).__name__
    for pid in pids:
        try:
            os.kill(pid, 0)
            out[f"signal {pid}"] = "done"
        except OSError as exc:
            out[f"signal {pid}"] = type(exc).__name__
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                f.read()
            out[f"environ {pid}"] = "done"
        except OSError as exc:
            out[f"environ {pid}"] = type(exc).__name__
    out["mapped"] = api.get(root).read_u64(0x1000)  # what it may read, it reads
    return out


def spin(api, root):  # type: ignore[no-untyped-def]
    while True:
        pass


def hog(api, root, mib):  # type: ignore[no-untyped-def]
    return len(bytearray(mib << 20))


def grow(api, root):  # type: ignore[no-untyped-def]
    chunks = []
    while True:
        chunks.append(bytearray(16 << 20))


@pytest.fixture
def place(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A store and a keys folder with a world-readable secret in it."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "admin.id").write_bytes(b"the admin's key")
    os.chmod(keys / "admin.id", 0o644)
    os.chmod(keys, 0o755)
    os.chmod(tmp_path, 0o755)
    with Store.open(tmp_path / "store", create=True, durable=False) as store:
        os.chmod(store.path, 0o755)
        yield store, keys


@pytest.fixture
def listening() -> Iterator[int]:
    """A port this process listens on: the node's HTTP port, as far as code knows."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.fixture
def same_uid_process() -> Iterator[int]:
    """A process running as the workers' uid outside any sandbox (root only)."""
    proc = subprocess.Popen(["sleep", "60"], user=UID, group=UID, extra_groups=[])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def runner_for(store: Store, keys: Path, port: int, **options: Any) -> CodeRunner:
    protect = (store.path, store.path / "STORE", keys, keys / "admin.id")
    limits = options.pop("limits", None)
    options.setdefault("uid", UID)
    isolation = Isolation(protect=protect, probe=("127.0.0.1", port), **options)
    return CodeRunner(StoreCodeHost(store, stand_in()), limits=limits, isolation=isolation)


@pytest.fixture
async def confined(
    place: tuple[Store, Path], listening: int, request: pytest.FixtureRequest
) -> AsyncIterator[CodeRunner]:
    store, keys = place
    async with runner_for(store, keys, listening, **getattr(request, "param", {})) as runner:
        yield runner
    assert workers_of_this_process() == []


async def probed(
    runner: CodeRunner, store: Store, keys: Path, port: int, pids: list[int]
) -> dict[str, Any]:
    root = build_list(store, [42])
    paths = [str(keys / "admin.id"), str(store.path / "STORE"), str(store.object_path(root))]
    paths += [str(keys), "/etc/hostname"]
    body = code_from_function(probe)
    outcome = await runner.run(body, root, [paths, port, pids], timeout=30, caller=NOBODY)
    result: dict[str, Any] = outcome.result
    assert result["mapped"] == 42
    assert result["opened"] == {p: "PermissionError" for p in paths}
    assert result["network"] == "PermissionError"  # no socket at all
    return result


@as_root
async def test_a_root_nodes_worker_runs_as_its_own_uid_and_reaches_nothing(
    confined: CodeRunner, place: tuple[Store, Path], listening: int
) -> None:
    store, keys = place
    result = await probed(confined, store, keys, listening, [os.getpid()])
    assert (result["uid"], result["gid"], result["groups"]) == (UID, UID, [])
    assert result[f"signal {os.getpid()}"] == "PermissionError"
    assert result[f"environ {os.getpid()}"] == "PermissionError"
    report = confined.isolation_report
    assert report["mode"] == "root" and report["netns"] and report["unisolated"] == []


@as_root
@pytest.mark.parametrize("confined", [{"unprivileged": True}], indirect=True)
async def test_an_unprivileged_nodes_worker_reaches_nothing(
    confined: CodeRunner, place: tuple[Store, Path], listening: int, same_uid_process: int
) -> None:
    """As the container runs it: the worker has the node's uid, so only the sandbox
    (Landlock, seccomp) keeps it from the node's files, port and processes."""
    store, keys = place
    pids = [os.getpid(), same_uid_process]
    result = await probed(confined, store, keys, listening, pids)
    assert result["uid"] == UID
    report = confined.isolation_report
    assert report["mode"] == "unprivileged" and report["unisolated"] == []
    assert report["landlock_abi"] >= 1 and report["seccomp"]
    assert result[f"environ {same_uid_process}"] == "PermissionError"
    if landlock_abi() >= 6:  # signals are scoped to the sandbox
        assert result[f"signal {same_uid_process}"] == "PermissionError"


@as_root
@pytest.mark.parametrize("confined", [{"uid": 0}], indirect=True)
async def test_a_worker_that_cannot_be_isolated_runs_nothing(
    confined: CodeRunner, place: tuple[Store, Path]
) -> None:
    store, _ = place
    root = build_list(store, [1])
    says = "cannot isolate the code worker: the node runs as root and no worker uid was given"
    with pytest.raises(CodeError, match=says) as info:
        await confined.run(code_from_function(spin), root, [], timeout=5, caller=NOBODY)
    assert "--allow-unisolated-code" in str(info.value)
    assert confined.worker_pids == []


@as_root
@pytest.mark.parametrize("confined", [{"uid": 0, "allow_unisolated": True}], indirect=True)
async def test_the_admin_may_let_code_run_unisolated(
    confined: CodeRunner, place: tuple[Store, Path]
) -> None:
    store, _ = place
    root = build_list(store, [1])
    outcome = await confined.run(code_from_function(hog), root, [1], timeout=30, caller=NOBODY)
    assert outcome.result == 1 << 20
    assert confined.isolation_report["unisolated"]  # and it says so


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("confined", [{"limits": CodeLimits(cpu=1)}], indirect=True)
async def test_cpu_time_is_limited(confined: CodeRunner, place: tuple[Store, Path]) -> None:
    store, _ = place
    root = build_list(store, [1])
    started = time.monotonic()
    with pytest.raises(CodeTimeout, match="spin ran past its CPU time limit of 1s"):
        await confined.run(code_from_function(spin), root, [], timeout=60, caller=NOBODY)
    assert time.monotonic() - started < 20  # the CPU limit, not the wall time
    pids = confined.worker_pids
    outcome = await confined.run(code_from_function(hog), root, [1], timeout=30, caller=NOBODY)
    assert outcome.result == 1 << 20 and confined.worker_pids == pids  # the worker lives on


@pytest.mark.parametrize("confined", [{"limits": CodeLimits(memory=256 << 20)}], indirect=True)
async def test_memory_is_limited(confined: CodeRunner, place: tuple[Store, Path]) -> None:
    store, _ = place
    root = build_list(store, [1])
    body = code_from_function(hog)
    with pytest.raises(CodeError, match="hog raised MemoryError"):
        await confined.run(body, root, [512], timeout=30, caller=NOBODY)
    with pytest.raises(CodeError, match=r"MemoryError|memory limit is 256 MiB"):
        await confined.run(code_from_function(grow), root, [], timeout=30, caller=NOBODY)
    outcome = await confined.run(body, root, [64], timeout=30, caller=NOBODY)
    assert outcome.result == 64 << 20


def test_the_run_code_object_is_the_admins(tmp_path: Path) -> None:
    """The right to run code is x on an object only the admin can grant rights on."""
    from dtwz.node.access import run_code_object
    from dtwz.security.keys import Identity

    admin = Identity.generate("admin")
    oid = run_code_object(admin.kuid, "dtwz")
    assert oid == run_code_object(admin.kuid, "dtwz")
    assert oid != run_code_object(admin.kuid, "other")
    assert oid != run_code_object(Identity.generate("x").kuid, "dtwz")
    assert isinstance(oid, ObjectId)


def _confine_in_a_child(uid: int, protect: list[str], landlock: bool, allow: bool) -> str:
    """What ``confine`` says in a forked child that became ``uid`` (as an unprivileged
    node is), with or without Landlock: "ok <report>" or the error's text."""
    from dtwz.node.code import isolation

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        text = ""
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            if not landlock:
                isolation.landlock_abi = lambda: 0  # a kernel without it
            report = isolation.confine(
                isolation.Confinement(protect=protect, allow_unisolated=allow)
            )
            text = f"ok {report.as_json()}"
        except BaseException as exc:
            text = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write, text.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.fixture
def careless() -> Iterator[Path]:
    """A secret every local user can read (pytest's own folders are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="dtwz-careless-", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        secret = folder / "admin.id"
        secret.write_bytes(b"key")
        os.chmod(secret, 0o644)
        yield secret
    finally:
        shutil.rmtree(folder)


@as_root
def test_without_landlock_an_unprivileged_worker_fails_closed(careless: Path) -> None:
    secret = careless
    said = _confine_in_a_child(UID, [str(secret)], landlock=False, allow=False)
    assert said.startswith("IsolationError: cannot isolate the code worker"), said
    assert f"the worker can open {secret}" in said and "no Landlock" in said
    assert "--allow-unisolated-code" in said
    opted_out = _confine_in_a_child(UID, [str(secret)], landlock=False, allow=True)
    assert opted_out.startswith("ok ") and f"the worker can open {secret}" in opted_out
    # with Landlock the same file is out of reach: nothing to refuse
    assert _confine_in_a_child(UID, [str(secret)], landlock=True, allow=False).startswith("ok ")
