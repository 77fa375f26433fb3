"""Running code objects' functions in confined worker processes next to the store.

``CodeRunner`` lives in a node's event loop. It keeps a few warm workers
(``dtwz.node.code.worker``), one per *slot*, started the first time a slot is
needed. A worker confines itself before it says it is ready (its own uid or
namespaces, Landlock, seccomp: ``dtwz.node.code.isolation``); one that cannot, and
is not allowed to run unconfined, does not start, and the call fails with a
``CodeError`` that says why. For each call the worker forks a child with the
call's limits (CPU seconds, memory); the runner serves that child's *call
channel*: the object files it may map (read-only descriptors, only for objects
homed here that the caller may read whole) and HTTP connections to the node's API
that act as the caller, for that call only (``CodeHost``).

Fairness: calls wait in one queue per caller; a free slot goes to the callers in
turn (round robin), and a caller has at most ``per_caller`` calls running at once,
so one caller's long calls cannot hold another's short one. A call waits at most
its own time limit for a slot, and a caller may have at most ``queue`` waiting.

Invariants: every worker started is reaped before the runner forgets it; a call
that runs past its time limit is killed with everything it started (its process
group) and the worker lives on; a cancelled call kills its worker; nothing user
code returns is unpickled, answers are JSON; no caller sees another's output.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import site
import socket
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import dtwz
from dtwz.errors import CodeError, CodeTimeout, DtwzError, InvalidArgument
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.graph.agent import Caller
from dtwz.graph.code import CodeBody, RunOutcome
from dtwz.node.code.worker import (
    FRAME_PREFIX,
    MAX_CONNECTIONS,
    MAX_FDS,
    decode_frame,
    encode_frame,
    frame_length,
)

__all__ = ["CodeHost", "CodeLimits", "CodeRunner", "Isolation", "RunOutcome"]

log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # importing dtwz in a fresh interpreter; generous for slow hosts
STOP_TIMEOUT = 5.0
_REAP_TIMEOUT = 10.0  # after SIGKILL the kernel reaps quickly; never wait forever
_EXIT_WAIT = 5.0  # for the worker to report how a call's process ended
_OUTPUT_TAIL = 8192
_EXIT_GRACE = 2.0  # for a worker that closed its socket to finish exiting by itself
FIRST_BATCH = 4  # objects handed over for a call's first open; doubled on each next one


@dataclass(frozen=True)
class CodeLimits:
    """How much code a node runs, and how much one call may use."""

    workers: int = 2  # calls running at once (warm worker processes)
    per_caller: int = 1  # of which one caller's at most
    queue: int = 32  # calls one caller may have waiting
    memory: int = 1 << 30  # bytes of data (heap, private mappings) a call may use; 0: no limit
    cpu: float = 0.0  # CPU seconds a call may use (0: as many as its time limit)


@dataclass(frozen=True)
class Isolation:
    """How workers confine themselves (docs/SECURITY.md §11)."""

    uid: int = 61000  # a root node's workers run as uid (and gid) uid + slot
    protect: tuple[Path, ...] = ()  # paths a worker must not be able to open
    probe: tuple[str, int] | None = None  # the node's HTTP address: must be unreachable
    allow_unisolated: bool = False  # run code even where a worker cannot be confined
    unprivileged: bool = False  # tests: confine as an unprivileged node would


class CodeHost(Protocol):
    """What a call's process gets from its node, as its caller (``dtwz.node.code.host``)."""

    async def open_objects(
        self, caller: Caller, oid: ObjectId, *, limit: int = 1, skip: Set[ObjectId] = frozenset()
    ) -> list[tuple[ObjectId, int]]:
        """Read-only descriptors of ``oid``'s file, when it is homed here and ``caller``
        may read it whole, and of up to ``limit`` - 1 more objects it leads to, by the
        same rule (none in ``skip``); empty when ``oid`` is not (say nothing more: the
        API will)."""

    async def connect(self, caller: Caller, sock: socket.socket) -> Callable[[], None]:
        """Serve the node's API on ``sock`` as ``caller``; the function that ends it."""

    async def close(self) -> None:
        """Stop serving calls' connections."""


class _WorkerGone(Exception):
    """The worker's socket closed; ``accepted``: after it had taken the request."""

    def __init__(self, accepted: bool) -> None:
        super().__init__("the code worker went away")
        self.accepted = accepted


class _Frames:
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


class _Worker:
    """One worker process: its control socket, its isolation report and the task
    draining its own stderr (what it says before and outside calls)."""

    def __init__(self, proc: asyncio.subprocess.Process, control: _Frames) -> None:
        self.proc = proc
        self.control = control
        self.tail = bytearray()
        self.isolation: dict[str, Any] = {}
        assert proc.stderr is not None
        self._drain = asyncio.create_task(_drain(proc.stderr, self.tail, f"worker {proc.pid}"))
        self.dead = False
        self.ending: asyncio.Future[None] | None = None  # the last call's process ending

    @classmethod
    async def start(cls, argv: list[str], timeout: float) -> _Worker:
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
        worker = cls(proc, _Frames(ours))
        try:
            async with asyncio.timeout(timeout):
                hello = await worker.receive()
            if hello.get("ready") is not True:
                raise CodeError(f"the code worker greeted with {hello!r}")
        except (_WorkerGone, TimeoutError, CodeError) as exc:
            await worker.kill(grace=_EXIT_GRACE if isinstance(exc, _WorkerGone) else 0.0)
            if isinstance(exc, TimeoutError):
                why = f"it was not ready within {timeout:g}s"
            elif isinstance(exc, _WorkerGone) and worker.proc.returncode == 5:
                why = worker.tail_text(plain=True)  # it could not be confined, and says why
            elif isinstance(exc, _WorkerGone):
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
            raise _WorkerGone(accepted=False) from exc

    async def receive(self, *, accepted: bool = False) -> dict[str, Any]:
        try:
            doc = await self.control.receive()
        except OSError as exc:
            doc = None
            log.debug("code worker %d: %s", self.proc.pid, exc)
        if doc is None:
            self.dead = True
            raise _WorkerGone(accepted)
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
        _killpg(self.proc.pid)
        await _reap(self.proc)
        try:
            async with asyncio.timeout(1.0):  # a grandchild may still hold the pipe
                await self._drain
        except TimeoutError:
            self._drain.cancel()

    def exit_text(self) -> str:
        return _status_text(self.proc.returncode)

    def tail_text(self, *, plain: bool = False) -> str:
        text = self.tail.decode("utf-8", "replace").strip()
        if plain:
            return text.removeprefix("dtwz code worker: ")[-2000:]
        return f"; its stderr ends with:\n{text[-2000:]}" if text else ""


@dataclass
class _Slot:
    index: int
    uid: int | None
    worker: _Worker | None = None
    busy: bool = False


@dataclass
class _Waiter:
    kuid: ObjectId
    future: asyncio.Future[_Slot] = field(repr=False)


class CodeRunner:
    """Runs code bodies in confined worker processes, as their callers, fairly.

    ``host`` gives a call's process what it may have of the node. Use
    ``async with CodeRunner(...)`` or call ``close()``: it stops the workers.
    """

    def __init__(
        self,
        host: CodeHost,
        *,
        limits: CodeLimits | None = None,
        isolation: Isolation | None = None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.host = host
        self.limits = limits or CodeLimits()
        self.isolation = isolation or Isolation()
        if self.limits.workers < 1 or self.limits.per_caller < 1 or self.limits.queue < 1:
            raise InvalidArgument("code workers, per_caller and queue must be at least 1")
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        root = os.geteuid() == 0 and self.isolation.uid > 0
        self._slots = [
            _Slot(i, self.isolation.uid + i if root else None) for i in range(self.limits.workers)
        ]
        self._queues: OrderedDict[ObjectId, deque[_Waiter]] = OrderedDict()
        self._running: dict[ObjectId, int] = {}
        self._dying: set[asyncio.Task[None]] = set()  # workers killed by cancelled calls
        self._call_ids = itertools.count(1)
        self._closed = False
        self.stats = {
            "calls": 0,
            "failures": 0,
            "timeouts": 0,
            "workers_started": 0,
            "waiting": 0,
            "refused": 0,
        }

    @property
    def worker_pids(self) -> list[int]:
        """The process IDs of the warm workers."""
        return [s.worker.proc.pid for s in self._slots if s.worker is not None]

    @property
    def isolation_report(self) -> dict[str, Any]:
        """How the newest worker is confined (empty before one started)."""
        for slot in self._slots:
            if slot.worker is not None:
                return dict(slot.worker.isolation)
        return {}

    def status(self) -> dict[str, Any]:
        """The counters, the limits and how the newest worker is confined."""
        return {
            **self.stats,
            "workers": len(self._slots),
            "workers_running": len(self.worker_pids),
            "per_caller": self.limits.per_caller,
            "isolation": self.isolation_report,
        }

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
        caller: Caller,
    ) -> RunOutcome:
        """Call ``body``'s function as ``entry(api, root, *args)`` in a worker, as
        ``caller``.

        ``CodeTimeout`` past ``timeout`` seconds of wall time or of CPU time (the call
        is killed), or when no slot freed up within ``timeout`` seconds; ``CodeError``
        if the function raised (its traceback is a note of the error), returned
        something that is not JSON, went past its memory or its process died, or if
        no worker could start (or be confined).
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
        }
        try:
            frame = encode_frame(request)
        except CodeError as exc:
            raise CodeError(f"the arguments of {body.entry} are {exc}") from None
        slot = await self._acquire(caller.kuid, timeout, body.entry)
        try:
            self.stats["calls"] += 1
            answer = await self._call(slot, body.entry, call_id, frame, timeout, caller)
        except CodeError as exc:
            key = "timeouts" if isinstance(exc, CodeTimeout) else "failures"
            self.stats[key] += 1
            raise
        finally:
            self._release(slot, caller.kuid)
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

    # -- fair shares of the slots ----------------------------------------------------------

    def _limit(self, kuid: ObjectId) -> int:
        # security off: nobody is told apart, so no one caller's share applies
        return len(self._slots) if kuid == ZERO_ID else self.limits.per_caller

    async def _acquire(self, kuid: ObjectId, timeout: float, entry: str) -> _Slot:
        if self._closed:
            raise CodeError("the code runner is closed")
        queue = self._queues.get(kuid)
        if queue is not None and len(queue) >= self.limits.queue:
            self.stats["refused"] += 1
            raise CodeError(
                f"{kuid} has {len(queue)} calls waiting for this node's code workers already "
                f"(at most {self.limits.queue}): wait for them to finish"
            )
        waiter = _Waiter(kuid, asyncio.get_running_loop().create_future())
        self._queues.setdefault(kuid, deque()).append(waiter)
        self.stats["waiting"] += 1
        self._dispatch()
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter.future)
        except BaseException as exc:
            done = waiter.future.done() and not waiter.future.cancelled()
            if done and waiter.future.exception() is None:
                self._release(waiter.future.result(), kuid)  # given a slot too late
            else:
                waiter.future.cancel()
                self._forget_waiter(waiter)
            if isinstance(exc, TimeoutError):
                raise CodeTimeout(
                    f"{entry} waited {timeout:g}s for one of this node's "
                    f"{len(self._slots)} code workers, all busy, and was not run"
                ) from None
            raise
        finally:
            self.stats["waiting"] -= 1

    def _forget_waiter(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.kuid)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._queues[waiter.kuid]

    def _dispatch(self) -> None:
        """Give free slots to waiting callers in turn, each within its share."""
        while True:
            free = [s for s in self._slots if not s.busy]
            if not free:
                return
            chosen = None
            for kuid, queue in self._queues.items():
                while queue and queue[0].future.done():  # cancelled meanwhile
                    queue.popleft()
                if queue and self._running.get(kuid, 0) < self._limit(kuid):
                    chosen = kuid
                    break
            for kuid in [k for k, q in self._queues.items() if not q]:
                del self._queues[kuid]
            if chosen is None:
                return
            waiter = self._queues[chosen].popleft()
            if self._queues[chosen]:
                self._queues.move_to_end(chosen)  # the others' turn first
            else:
                del self._queues[chosen]
            # a warm worker first
            slot = next((s for s in free if s.worker is not None and s.worker.alive), free[0])
            slot.busy = True
            self._running[chosen] = self._running.get(chosen, 0) + 1
            waiter.future.set_result(slot)

    def _release(self, slot: _Slot, kuid: ObjectId) -> None:
        slot.busy = False
        left = self._running.get(kuid, 0) - 1
        if left > 0:
            self._running[kuid] = left
        else:
            self._running.pop(kuid, None)
        self._dispatch()

    # -- one call --------------------------------------------------------------------------

    async def _call(
        self, slot: _Slot, entry: str, call_id: int, frame: bytes, timeout: float, caller: Caller
    ) -> dict[str, Any]:
        # A worker that died while idle (killed, out of memory) fails before it takes
        # the request; then, and only then, the call is safe to run again elsewhere.
        for attempt in (1, 2):
            if self._closed:
                raise CodeError("the code runner is closed")
            worker = await self._warm_worker(slot)
            try:
                return await self._exchange(worker, entry, call_id, frame, timeout, caller)
            except CodeError:
                if not worker.alive:  # it stopped answering: it serves no more calls
                    await self._discard(slot, worker)
                raise
            except _WorkerGone as gone:
                await self._discard(slot, worker, grace=_EXIT_GRACE)
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
            except asyncio.CancelledError:
                # the worker may still be running the call: it cannot serve the next
                self._forget(slot, worker)
                task = asyncio.ensure_future(worker.kill())
                self._dying.add(task)
                task.add_done_callback(self._dying.discard)
                raise
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        worker: _Worker,
        entry: str,
        call_id: int,
        frame: bytes,
        timeout: float,
        caller: Caller,
    ) -> dict[str, Any]:
        # CPU seconds: --code-cpu, else a second more than the wall time (which stops a
        # call that computes on one thread first: its error says which limit it was)
        cpu = (
            math.ceil(min(timeout, self.limits.cpu)) if self.limits.cpu else math.ceil(timeout) + 1
        )
        cpu = max(1, cpu)
        limits = {"cpu": cpu, "memory": self.limits.memory}
        ours, theirs = socket.socketpair()
        out_read, out_write = os.pipe()
        try:
            await worker.send(
                encode_frame({"call": call_id, "limits": limits}), [theirs.fileno(), out_write]
            )
        except BaseException:
            ours.close()
            os.close(out_read)
            raise
        finally:
            theirs.close()
            os.close(out_write)
        output = bytearray()
        pipe = os.fdopen(out_read, "rb", buffering=0)
        drain = asyncio.create_task(_drain_pipe(pipe, output, f"call {call_id}"))
        call = _Frames(ours)
        closers: list[Callable[[], None]] = []
        child: int | None = None
        answer: dict[str, Any] | None = None
        try:
            accepted = await worker.receive()
            if accepted.get("accepted") != call_id or not isinstance(accepted.get("pid"), int):
                raise CodeError(f"expected the acceptance of call {call_id}, got {accepted!r}")
            child = int(accepted["pid"])
            try:
                async with asyncio.timeout(timeout):
                    await call.send(frame)
                    answer = await self._serve(call, caller, closers, call_id)
            except TimeoutError:
                _killpg(child)
                with contextlib.suppress(_WorkerGone):
                    await self._exited(worker, call_id)
                raise CodeTimeout(
                    f"{entry} ran past its time limit of {timeout:g}s and was stopped"
                ) from None
            except (CodeError, OSError) as exc:  # the call's process broke the protocol
                _killpg(child)
                with contextlib.suppress(_WorkerGone):
                    await self._exited(worker, call_id)
                raise CodeError(f"the process running {entry} broke the protocol: {exc}") from None
            if answer is not None:
                # the process ends meanwhile: its worker's report is read before the
                # worker's next call (the caller need not wait for the teardown)
                worker.ending = asyncio.ensure_future(self._ended(worker, call_id, child))
                return answer
            exited = await self._exited(worker, call_id)
            _killpg(child)  # whatever the call started and left behind
            code = exited.get("code")
            used = exited.get("cpu")
            if (
                code in (-signal.SIGXCPU, -signal.SIGKILL)
                and isinstance(used, int | float)
                and used >= cpu - 0.5
            ):
                raise CodeTimeout(
                    f"{entry} ran past its CPU time limit of {cpu}s and was stopped"
                ) from None
            status = _status_text(code if isinstance(code, int) else None)
            memory = self.limits.memory
            hint = (
                f" (its memory limit is {memory >> 20} MiB)"
                if memory and code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, 1)
                else ""
            )
            await _settle(drain)
            text = output.decode("utf-8", "replace").strip()
            said = f"; its output ends with:\n{text[-2000:]}" if text else ""
            raise CodeError(f"the process running {entry} died ({status}){hint}{said}")
        except _WorkerGone as gone:
            if child is not None:
                _killpg(child)
            raise _WorkerGone(accepted=gone.accepted or child is not None) from None
        except asyncio.CancelledError:
            if child is not None:
                _killpg(child)
            raise
        finally:
            for close in closers:
                close()
            call.close()
            if not drain.done():
                await _settle(drain)

    async def _serve(
        self, call: _Frames, caller: Caller, closers: list[Callable[[], None]], call_id: int
    ) -> dict[str, Any] | None:
        """Answer the call's requests until its answer (None: it ended without one)."""
        handed: set[ObjectId] = set()  # objects whose descriptors the call has
        batch = FIRST_BATCH
        while True:
            try:
                doc = await call.receive()
            except ConnectionError:
                return None
            if doc is None:
                return None
            op = doc.get("op")
            if op == "answer":
                if doc.get("call_id") != call_id:
                    raise CodeError(f"expected the answer to call {call_id}, got {doc!r}")
                return doc
            if op == "open":
                await self._open(call, caller, doc.get("id"), handed, batch)
                batch = min(2 * batch, MAX_FDS)  # a call that keeps asking gets more at once
            elif op == "connect":
                if len(closers) >= MAX_CONNECTIONS:
                    await call.send(encode_frame({"ok": False, "message": "too many connections"}))
                    continue
                ours, theirs = socket.socketpair()
                try:
                    closers.append(await self.host.connect(caller, ours))
                    await call.send(encode_frame({"ok": True}), [theirs.fileno()])
                finally:
                    theirs.close()
            else:
                await call.send(encode_frame({"ok": False, "message": f"no such request {op!r}"}))

    async def _open(
        self, call: _Frames, caller: Caller, raw: Any, handed: set[ObjectId], limit: int
    ) -> None:
        found: list[tuple[ObjectId, int]] = []
        try:
            oid = ObjectId.parse(str(raw))
            found = await self.host.open_objects(caller, oid, limit=limit, skip=handed)
        except DtwzError:
            found = []
        except Exception:  # a bug: the call is told no, the node lives on
            log.exception("opening object %r for a call", raw)
            found = []
        if not found:
            await call.send(encode_frame({"ok": False}))
            return
        try:
            ids = [oid.hex() for oid, _ in found]
            await call.send(encode_frame({"ok": True, "ids": ids}), [fd for _, fd in found])
            handed.update(oid for oid, _ in found)
        finally:
            for _, fd in found:
                os.close(fd)

    async def _ended(self, worker: _Worker, call_id: int, child: int) -> None:
        """After an answer: the worker's report that the call's process ended; then
        whatever the call started and left behind is killed."""
        try:
            await self._exited(worker, call_id)
        except _WorkerGone:
            pass  # the worker is dead: the next call starts another
        finally:
            _killpg(child)

    async def _exited(self, worker: _Worker, call_id: int) -> dict[str, Any]:
        """The worker's report of how the call's process ended (``_WorkerGone`` if it
        does not come)."""
        try:
            async with asyncio.timeout(_EXIT_WAIT):
                doc = await worker.receive(accepted=True)
        except TimeoutError:
            worker.dead = True
            raise _WorkerGone(accepted=True) from None
        if doc.get("exited") != call_id:
            worker.dead = True
            raise _WorkerGone(accepted=True)
        return doc

    # -- workers ---------------------------------------------------------------------------

    def _argv(self, slot: _Slot) -> list[str]:
        iso = self.isolation
        argv = [sys.executable, "-P", "-m", "dtwz.node.code.worker", "--parent", str(os.getpid())]
        if slot.uid is not None:
            argv += ["--uid", str(slot.uid)]
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

    async def _warm_worker(self, slot: _Slot) -> _Worker:
        worker = slot.worker
        if worker is not None and worker.ending is not None:
            ending, worker.ending = worker.ending, None
            await ending  # the previous call's process has ended (or the worker died)
        if worker is not None and not worker.alive:
            await self._discard(slot, worker)
            worker = None
        if worker is None:
            worker = await _Worker.start(self._argv(slot), self.start_timeout)
            self.stats["workers_started"] += 1
            if self._closed:  # closed while it started
                await worker.kill()
                raise CodeError("the code runner is closed")
            slot.worker = worker
        return worker

    def _forget(self, slot: _Slot, worker: _Worker) -> None:
        if slot.worker is worker:
            slot.worker = None

    async def _discard(self, slot: _Slot, worker: _Worker, *, grace: float = 0.0) -> None:
        self._forget(slot, worker)
        await worker.kill(grace=grace)

    async def close(self) -> None:
        """Stop the workers: end of file, then SIGKILL after ``stop_timeout``. Calls in
        progress fail with ``CodeError``, waiting ones too. Idempotent."""
        self._closed = True
        for queue in self._queues.values():
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(CodeError("the code runner is closed"))
        self._queues.clear()
        workers = [s.worker for s in self._slots if s.worker is not None]
        for slot in self._slots:
            slot.worker = None
        await asyncio.gather(*(w.kill(grace=self.stop_timeout) for w in workers))
        if self._dying:
            await asyncio.wait(set(self._dying), timeout=_REAP_TIMEOUT + 2)
        await self.host.close()


def _killpg(pgid: int) -> None:
    # the group outlives its leader while anything it started runs; once nothing
    # does, the ID is gone and this is a harmless ProcessLookupError
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    try:
        async with asyncio.timeout(_REAP_TIMEOUT):
            await proc.wait()
    except TimeoutError:
        log.error("code worker %d did not exit after SIGKILL", proc.pid)


async def _drain(stream: asyncio.StreamReader, tail: bytearray, who: str) -> None:
    while chunk := await stream.read(4096):
        tail += chunk
        del tail[:-_OUTPUT_TAIL]
        log.debug("code %s: %s", who, chunk.decode("utf-8", "replace").rstrip())


async def _drain_pipe(pipe: BinaryIO, tail: bytearray, who: str) -> None:
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


async def _settle(task: asyncio.Task[None]) -> None:
    try:
        async with asyncio.timeout(1.0):  # a process the call started may hold the pipe
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
    except Exception:  # the output is a courtesy
        pass


def _status_text(status: int | None) -> str:
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
