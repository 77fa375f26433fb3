"""The runner's side of its worker processes: starting one (its argv, a small
environment, its greeting and isolation report), speaking frames to it over a
non-blocking socket in the event loop (``AsyncFrames``), and killing and reaping
it, with what it started, in bounded time.

A worker (``dtwz.node.code.worker``) confines itself before it says it is ready;
one that cannot, and is not allowed to run unconfined, exits with status 5 and
says why, and ``WorkerProcess.start`` fails with a ``CodeError`` that says so.
What a worker prints outside calls is drained from its stderr, and the tail kept
to explain its death. Invariant: every worker started is reaped before it is
forgotten (``WorkerProcess.kill``).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import site
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import dtwz
from dtwz.errors import CodeError
from dtwz.node.code.frames import FRAME_PREFIX, decode_frame, frame_length

__all__ = [
    "EXIT_GRACE",
    "REAP_TIMEOUT",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "AsyncFrames",
    "Isolation",
    "WorkerGone",
    "WorkerProcess",
    "drain_pipe",
    "killpg",
    "settle",
    "status_text",
    "worker_argv",
]

log = logging.getLogger("dtwz.node.code.runner")  # the runner's log

START_TIMEOUT = 30.0  # importing dtwz in a fresh interpreter; generous for slow hosts
STOP_TIMEOUT = 5.0
REAP_TIMEOUT = 10.0  # after SIGKILL the kernel reaps quickly; never wait forever
_OUTPUT_TAIL = 8192
EXIT_GRACE = 2.0  # for a worker that closed its socket to finish exiting by itself


@dataclass(frozen=True)
class Isolation:
    """How workers confine themselves (docs/SECURITY.md §11)."""

    uid: int = 61000  # a root node's workers run as uid (and gid) uid + slot
    protect: tuple[Path, ...] = ()  # paths a worker must not be able to open
    probe: tuple[str, int] | None = None  # the node's HTTP address: must be unreachable
    allow_unisolated: bool = False  # run code even where a worker cannot be confined
    unprivileged: bool = False  # tests: confine as an unprivileged node would


def worker_argv(isolation: Isolation, uid: int | None) -> list[str]:
    """The command line of a worker confined by ``isolation`` (as ``uid``: a root node's)."""
    iso = isolation
    argv = [sys.executable, "-P", "-m", "dtwz.node.code.worker", "--parent", str(os.getpid())]
    if uid is not None:
        argv += ["--uid", str(uid)]
    for path in iso.protect:
        if os.path.lexists(path):
            argv += ["--protect", str(path)]
    if iso.probe is not None:
        argv += ["--probe", f"{iso.probe[0]}:{iso.probe[1]}"]
    if iso.allow_unisolated:
        argv.append("--allow-unisolated")
    if iso.unprivileged:
        argv.append("--unprivileged")
    return argv


class WorkerGone(Exception):
    """The worker's socket closed; ``accepted``: after it had taken the request."""

    def __init__(self, accepted: bool) -> None:
        super().__init__("the code worker went away")
        self.accepted = accepted


class AsyncFrames:
    """Frames (and descriptors) over a non-blocking socket, in the event loop."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def send(self, frame: bytes, fds: Sequence[int] = ()) -> None:
        view = memoryview(frame)
        if fds:
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            while True:
                try:
                    sent = self.sock.sendmsg([view], rights)
                    break
                except (BlockingIOError, InterruptedError):
                    await self._writable()
            view = view[sent:]
        if view:
            await self.loop.sock_sendall(self.sock, view)

    async def receive(self) -> dict[str, Any] | None:
        """The next frame; None at end of file between frames (``ConnectionError``
        within one, ``CodeError`` for one that is not a JSON object)."""
        prefix = await self._exactly(FRAME_PREFIX.size, eof_ok=True)
        if prefix is None:
            return None
        body = await self._exactly(frame_length(prefix), eof_ok=False)
        assert body is not None
        return decode_frame(body)

    async def _exactly(self, n: int, *, eof_ok: bool) -> bytes | None:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            read = await self.loop.sock_recv_into(self.sock, view[got:])
            if not read:
                if got == 0 and eof_ok:
                    return None
                raise ConnectionResetError(f"the frame ended after {got} of {n} bytes")
            got += read
        return bytes(buf)

    async def _writable(self) -> None:
        done = self.loop.create_future()
        fd = self.sock.fileno()

        def ready() -> None:
            if not done.done():
                done.set_result(None)

        self.loop.add_writer(fd, ready)
        try:
            await done
        finally:
            self.loop.remove_writer(fd)

    def close(self) -> None:
        self.sock.close()


class WorkerProcess:
    """One worker process: its control socket, its isolation report and the task
    draining its own stderr (what it says before and outside calls)."""

    def __init__(self, proc: asyncio.subprocess.Process, control: AsyncFrames) -> None:
        self.proc = proc
        self.control = control
        self.tail = bytearray()
        self.isolation: dict[str, Any] = {}
        assert proc.stderr is not None
        self._drain = asyncio.create_task(_drain(proc.stderr, self.tail, f"worker {proc.pid}"))
        self.dead = False
        self.ending: asyncio.Future[None] | None = None  # the last call's process ending

    @classmethod
    async def start(cls, argv: list[str], timeout: float) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        argv = [*argv, "--fd", str(theirs.fileno())]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,  # the worker sends prints to stderr
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # its own group: killed with what it started
                env=_worker_env(),
                cwd="/",
            )
        except BaseException as exc:  # cancelled too: asyncio kills a half-started child
            ours.close()
            if isinstance(exc, OSError):
                raise CodeError(f"cannot start a code worker: {exc}") from exc
            raise
        finally:
            theirs.close()  # the worker's copy is its own: its death must end our reads
        worker = cls(proc, AsyncFrames(ours))
        try:
            async with asyncio.timeout(timeout):
                hello = await worker.receive()
            if hello.get("ready") is not True:
                raise CodeError(f"the code worker greeted with {hello!r}")
        except (WorkerGone, TimeoutError, CodeError) as exc:
            await worker.kill(grace=EXIT_GRACE if isinstance(exc, WorkerGone) else 0.0)
            if isinstance(exc, TimeoutError):
                why = f"it was not ready within {timeout:g}s"
            elif isinstance(exc, WorkerGone) and worker.proc.returncode == 5:
                why = worker.tail_text(plain=True)  # it could not be confined, and says why
            elif isinstance(exc, WorkerGone):
                why = f"it exited ({worker.exit_text()}){worker.tail_text()}"
            else:
                why = str(exc)
            raise CodeError(f"the code worker did not start: {why}") from None
        except BaseException:
            await worker.kill()
            raise
        worker.isolation = dict(hello.get("isolation") or {})
        for problem in worker.isolation.get("unisolated") or ():
            log.warning("code worker %d runs UNISOLATED: %s", proc.pid, problem)
        return worker

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.returncode is None

    async def send(self, frame: bytes, fds: Sequence[int] = ()) -> None:
        try:
            await self.control.send(frame, fds)
        except OSError as exc:
            self.dead = True
            raise WorkerGone(accepted=False) from exc

    async def receive(self, *, accepted: bool = False) -> dict[str, Any]:
        try:
            doc = await self.control.receive()
        except OSError as exc:
            doc = None
            log.debug("code worker %d: %s", self.proc.pid, exc)
        if doc is None:
            self.dead = True
            raise WorkerGone(accepted)
        return doc

    async def kill(self, *, grace: float = 0.0) -> None:
        """SIGKILL the worker's process group (after ``grace`` seconds to exit by
        itself: a worker that closed its socket is exiting, and its status says why)
        and reap the worker, in bounded time."""
        self.dead = True
        if self.ending is not None:
            self.ending.cancel()
        self.control.close()
        if grace > 0:
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                pass
        killpg(self.proc.pid)
        await _reap(self.proc)
        try:
            async with asyncio.timeout(1.0):  # a grandchild may still hold the pipe
                await self._drain
        except TimeoutError:
            self._drain.cancel()

    def exit_text(self) -> str:
        return status_text(self.proc.returncode)

    def tail_text(self, *, plain: bool = False) -> str:
        text = self.tail.decode("utf-8", "replace").strip()
        if plain:
            return text.removeprefix("dtwz code worker: ")[-2000:]
        return f"; its stderr ends with:\n{text[-2000:]}" if text else ""


def killpg(pgid: int) -> None:
    # the group outlives its leader while anything it started runs; once nothing
    # does, the ID is gone and this is a harmless ProcessLookupError
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(REAP_TIMEOUT):
            await proc.wait()
    except TimeoutError:
        log.error("code worker %d did not exit after SIGKILL", proc.pid)


async def _drain(stream: asyncio.StreamReader, tail: bytearray, who: str) -> None:
    while chunk := await stream.read(4096):
        tail += chunk
        del tail[:-_OUTPUT_TAIL]
        log.debug("code %s: %s", who, chunk.decode("utf-8", "replace").rstrip())


async def drain_pipe(pipe: BinaryIO, tail: bytearray, who: str) -> None:
    """Keep the tail of what a call prints (its own pipe, read until every writer
    closed it); the call must never block on a full pipe."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        await _drain(reader, tail, who)
    finally:
        transport.close()


async def settle(task: asyncio.Task[None]) -> None:
    try:
        async with asyncio.timeout(1.0):  # a process the call started may hold the pipe
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
    except Exception:  # the output is a courtesy
        pass


def status_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def _worker_env() -> dict[str, str]:
    """A small environment (nothing of the node's own: no keys' paths, no tokens),
    with the folder dtwz was imported from first on the path when that is a checkout
    rather than a site directory (putting site-packages first could shadow the
    standard library): the worker runs the node's dtwz."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("LANG", "LC_ALL", "PYTHONHASHSEED", "PYTHONPATH", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    root = str(Path(dtwz.__file__).resolve().parent.parent)
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    if root not in {str(Path(p).resolve()) for p in sites}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
