"""Running code objects' functions in a warm worker process next to the store.

``CodeRunner`` lives in a node's event loop. It starts one worker
(``dtwz.node.code.worker``) the first time it is needed and keeps it for later
calls, one call at a time. The worker talks over its own socket pair (frames
described in ``dtwz.node.code.worker``); its stderr, where user code's prints also
go, is drained continuously so it never blocks, and its tail explains a death.

Invariants: every worker started is reaped before the runner forgets it; a call
that runs past its timeout or is cancelled kills its worker (with any process
it started: the worker leads its own process group), and the next call starts
a fresh one; nothing user code returns is unpickled, answers are JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import site
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dtwz
from dtwz.errors import CodeError, CodeTimeout, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.graph.code import CodeBody, RunOutcome
from dtwz.node.code.worker import FRAME_PREFIX, decode_frame, encode_frame, frame_length

__all__ = ["CodeRunner", "RunOutcome"]

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # importing dtwz in a fresh interpreter; generous for slow hosts
STOP_TIMEOUT = 5.0
_REAP_TIMEOUT = 10.0  # after SIGKILL the kernel reaps quickly; never wait forever
_STDERR_TAIL = 8192
_EXIT_GRACE = 2.0  # for a worker that closed its socket to finish exiting by itself


class _WorkerGone(Exception):
    """The worker's socket closed; ``accepted``: after it had taken the request."""

    def __init__(self, accepted: bool) -> None:
        super().__init__("the code worker went away")
        self.accepted = accepted


class _Worker:
    """One worker process, its socket and the task draining its stderr."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.tail = bytearray()
        assert proc.stderr is not None
        self._drain = asyncio.create_task(self._drain_stderr(proc.stderr))

    @classmethod
    async def start(
        cls, store_dir: Path, node_url: str, timeout: float, identity_file: Path | None = None
    ) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dtwz.node.code.worker",
                "--store",
                str(store_dir),
                "--node",
                node_url,
                "--fd",
                str(theirs.fileno()),
                "--parent",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,  # the worker sends prints to stderr
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # its own group: killed with what it started
                env=_worker_env(identity_file),
            )
        except BaseException as exc:  # cancelled too: asyncio kills a half-started child
            ours.close()
            if isinstance(exc, OSError):
                raise CodeError(f"cannot start a code worker: {exc}") from exc
            raise
        finally:
            theirs.close()  # the worker's copy is its own: its death must end our reads
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            _killpg(proc)
            await _reap(proc)
            raise
        worker = cls(proc, reader, writer)
        try:
            async with asyncio.timeout(timeout):
                hello = await worker.receive()
            if hello.get("ready") is not True:
                raise CodeError(f"the code worker greeted with {hello!r}")
        except (_WorkerGone, TimeoutError, CodeError) as exc:
            await worker.kill(grace=_EXIT_GRACE if isinstance(exc, _WorkerGone) else 0.0)
            if isinstance(exc, TimeoutError):
                why = f"it was not ready within {timeout:g}s"
            elif isinstance(exc, _WorkerGone):
                why = f"it exited ({worker.exit_text()})"
            else:
                why = str(exc)
            raise CodeError(f"the code worker did not start: {why}{worker.tail_text()}") from None
        except BaseException:
            await worker.kill()
            raise
        return worker

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.at_eof()

    async def send(self, frame: bytes) -> None:
        try:
            self.writer.write(frame)
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:  # RuntimeError: transport closed
            raise _WorkerGone(accepted=False) from exc

    async def receive(self, *, accepted: bool = False) -> dict[str, Any]:
        try:
            prefix = await self.reader.readexactly(FRAME_PREFIX.size)
            body = await self.reader.readexactly(frame_length(prefix))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise _WorkerGone(accepted) from exc
        return decode_frame(body)

    async def stop(self, timeout: float) -> None:
        """End of file asks the worker to exit; SIGKILL if it has not within ``timeout``."""
        await self.kill(grace=timeout)

    async def kill(self, *, grace: float = 0.0) -> None:
        """SIGKILL the worker's process group (after ``grace`` seconds to exit by
        itself: a worker that closed its socket is exiting, and its status says why)
        and reap the worker, in bounded time."""
        self._close_socket()
        if grace > 0:
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                pass
        _killpg(self.proc)
        await _reap(self.proc)
        try:
            async with asyncio.timeout(1.0):  # a grandchild may still hold the pipe
                await self._drain
        except TimeoutError:
            self._drain.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.wait_closed()

    def _close_socket(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        pid = self.proc.pid
        while chunk := await stream.read(4096):
            self.tail += chunk
            del self.tail[:-_STDERR_TAIL]
            log.debug("code worker %d: %s", pid, chunk.decode("utf-8", "replace").rstrip())

    def exit_text(self) -> str:
        status = self.proc.returncode
        if status is None:
            return "still running"
        if status < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-status).name}"
        return f"exit status {status}"

    def tail_text(self) -> str:
        text = self.tail.decode("utf-8", "replace").strip()
        return f"; its stderr ends with:\n{text[-2000:]}" if text else ""


class CodeRunner:
    """Runs code bodies against a store's objects in one warm worker process.

    ``store_dir`` is the node's store folder, ``node_url`` its HTTP API (where
    the functions' remote reads and all their writes go). Calls are serialised.
    Use ``async with CodeRunner(...)`` or call ``close()``: it stops the worker.
    """

    def __init__(
        self,
        store_dir: Path,
        node_url: str,
        *,
        identity_file: Path | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.node_url = node_url
        self.identity_file = identity_file  # what the worker signs its requests with
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._lock = asyncio.Lock()
        self._worker: _Worker | None = None
        self._dying: set[asyncio.Task[None]] = set()  # workers killed by cancelled calls
        self._call_ids = itertools.count(1)
        self._closed = False
        self.stats = {"calls": 0, "failures": 0, "timeouts": 0, "workers_started": 0}

    @property
    def worker_pid(self) -> int | None:
        """The warm worker's process ID, if one is running."""
        return None if self._worker is None else self._worker.proc.pid

    async def __aenter__(self) -> CodeRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(
        self,
        body: CodeBody,
        root: ObjectId,
        args: Sequence[Any] = (),
        *,
        timeout: float,
        generation: int | None = None,
    ) -> RunOutcome:
        """Call ``body``'s function as ``entry(api, root, *args)`` in the worker.

        ``CodeTimeout`` past ``timeout`` seconds (the worker is killed); ``CodeError``
        if the function raised (its traceback is a note of the error), returned
        something that is not JSON, or its worker died. The timeout bounds the call
        itself, not the wait for earlier calls or for a fresh worker to start
        (``start_timeout``). ``generation`` counts the objects the node deleted: while
        it stays the same, the worker keeps its mappings from one call to the next.
        """
        if not timeout > 0:
            raise InvalidArgument(f"timeout must be positive, got {timeout!r}")
        call_id = next(self._call_ids)
        request = {
            "call_id": call_id,
            "source": body.source,
            "entry": body.entry,
            "root": ObjectId(root).hex(),
            "args": list(args),
            "generation": generation,
        }
        try:
            frame = encode_frame(request)
        except CodeError as exc:
            raise CodeError(f"the arguments of {body.entry} are {exc}") from None
        async with self._lock:
            self.stats["calls"] += 1
            try:
                answer = await self._call(body.entry, call_id, frame, timeout)
            except CodeError as exc:
                key = "timeouts" if isinstance(exc, CodeTimeout) else "failures"
                self.stats[key] += 1
                raise
        if answer.get("ok") is not True:
            self.stats["failures"] += 1
            error = CodeError(str(answer.get("message") or answer.get("error") or "failed"))
            trace = answer.get("traceback")
            if isinstance(trace, str) and trace:
                error.add_note(trace.rstrip())
            raise error
        try:
            stats = {str(k): int(v) for k, v in dict(answer.get("stats") or {}).items()}
            return RunOutcome(answer.get("result"), stats, float(answer.get("elapsed", 0.0)))
        except (TypeError, ValueError) as exc:
            raise CodeError(f"the code worker answered badly: {exc}") from None

    async def _call(self, entry: str, call_id: int, frame: bytes, timeout: float) -> dict[str, Any]:
        # A worker that died while idle (killed, out of memory) fails before it takes
        # the request; then, and only then, the call is safe to run again elsewhere.
        for attempt in (1, 2):
            if self._closed:
                raise CodeError("the code runner is closed")
            worker = await self._warm_worker()
            try:
                async with asyncio.timeout(timeout):
                    return await self._exchange(worker, call_id, frame)
            except _WorkerGone as gone:
                await self._discard(worker, grace=_EXIT_GRACE)
                if self._closed:
                    raise CodeError(f"the code runner was closed while running {entry}") from None
                if gone.accepted or attempt == 2:
                    raise CodeError(
                        f"the code worker died while running {entry} "
                        f"({worker.exit_text()}){worker.tail_text()}"
                    ) from None
                log.info(
                    "code worker %d had died (%s); starting another",
                    worker.proc.pid,
                    worker.exit_text(),
                )
            except TimeoutError:
                await self._discard(worker)
                raise CodeTimeout(
                    f"{entry} ran past its time limit of {timeout:g}s and was stopped"
                ) from None
            except CodeError as exc:  # a frame that breaks the protocol
                await self._discard(worker)
                raise CodeError(f"the code worker broke the protocol: {exc}") from None
            except asyncio.CancelledError:
                # the worker may still be running the call: it cannot serve the next
                self._forget(worker)
                task = asyncio.ensure_future(worker.kill())
                self._dying.add(task)
                task.add_done_callback(self._dying.discard)
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, worker: _Worker, call_id: int, frame: bytes) -> dict[str, Any]:
        await worker.send(frame)
        accepted = await worker.receive()
        if accepted.get("accepted") != call_id:
            # an answer to no request we sent (or one rejected before it was taken)
            raise CodeError(f"expected the acceptance of call {call_id}, got {accepted!r}")
        answer = await worker.receive(accepted=True)
        if answer.get("call_id") != call_id:
            raise CodeError(f"expected the answer to call {call_id}, got {answer!r}")
        return answer

    async def _warm_worker(self) -> _Worker:
        worker = self._worker
        if worker is not None and not worker.alive:
            await self._discard(worker)
            worker = None
        if worker is None:
            worker = await _Worker.start(
                self.store_dir, self.node_url, self.start_timeout, self.identity_file
            )
            self.stats["workers_started"] += 1
            if self._closed:  # closed while it started
                await worker.kill()
                raise CodeError("the code runner is closed")
            self._worker = worker
        return worker

    def _forget(self, worker: _Worker) -> None:
        if self._worker is worker:
            self._worker = None

    async def _discard(self, worker: _Worker, *, grace: float = 0.0) -> None:
        self._forget(worker)
        await worker.kill(grace=grace)

    async def close(self) -> None:
        """Stop the worker: end of file, then SIGKILL after ``stop_timeout``. A call in
        progress fails with ``CodeError``. Idempotent."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop(self.stop_timeout)
        if self._dying:
            await asyncio.wait(set(self._dying), timeout=_REAP_TIMEOUT + 2)


def _killpg(proc: asyncio.subprocess.Process) -> None:
    # the group outlives the worker while anything it started runs; once nothing
    # does, the ID is gone and this is a harmless ProcessLookupError
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(_REAP_TIMEOUT):
            await proc.wait()
    except TimeoutError:
        log.error("code worker %d did not exit after SIGKILL", proc.pid)


def _worker_env(identity_file: Path | None = None) -> dict[str, str]:
    """This environment, with the folder dtwz was imported from first on the path
    when that is a checkout rather than a site directory (putting site-packages
    first could shadow the standard library): the worker runs the node's dtwz.
    ``DTWZ_IDENTITY`` is the node's identity: the worker signs its requests with it."""
    env = dict(os.environ)
    env.pop("DTWZ_IDENTITY", None)
    if identity_file is not None:
        env["DTWZ_IDENTITY"] = str(Path(identity_file).absolute())
    root = str(Path(dtwz.__file__).resolve().parent.parent)
    sites = [*site.getsitepackages(), site.getusersitepackages()]
    if root not in {str(Path(p).resolve()) for p in sites}:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
