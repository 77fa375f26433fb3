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

This module is the scheduling: the slots, the queues and who goes next. A
worker's process is started, spoken to and reaped in ``dtwz.node.code.processes``;
one call on it, and its call channel, is served in ``dtwz.node.code.channel``.

Invariants: every worker started is reaped before the runner forgets it; a call
that runs past its time limit is killed with everything it started (its process
group) and the worker lives on; a cancelled call kills its worker; nothing user
code returns is unpickled, answers are JSON; no caller sees another's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dtwz.errors import CodeError, CodeTimeout, InvalidArgument
from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.graph.agent import Caller
from dtwz.graph.code import CodeBody, RunOutcome
from dtwz.node.code.channel import CallService, CodeHost
from dtwz.node.code.frames import encode_frame
from dtwz.node.code.processes import (
    EXIT_GRACE,
    REAP_TIMEOUT,
    START_TIMEOUT,
    STOP_TIMEOUT,
    Isolation,
    WorkerGone,
    WorkerProcess,
    worker_argv,
)

__all__ = ["CodeHost", "CodeLimits", "CodeRunner", "Isolation", "RunOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodeLimits:
    """How much code a node runs, and how much one call may use."""

    workers: int = 2  # calls running at once (warm worker processes)
    per_caller: int = 1  # of which one caller's at most
    queue: int = 32  # calls one caller may have waiting
    memory: int = 1 << 30  # bytes of data (heap, private mappings) a call may use; 0: no limit
    cpu: float = 0.0  # CPU seconds a call may use (0: as many as its time limit)


@dataclass
class _Slot:
    index: int
    uid: int | None
    worker: WorkerProcess | None = None
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
        self._calls = CallService(host, cpu=self.limits.cpu, memory=self.limits.memory)
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
                return await self._calls.exchange(worker, entry, call_id, frame, timeout, caller)
            except CodeError:
                if not worker.alive:  # it stopped answering: it serves no more calls
                    await self._discard(slot, worker)
                raise
            except WorkerGone as gone:
                await self._discard(slot, worker, grace=EXIT_GRACE)
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

    # -- workers ---------------------------------------------------------------------------

    async def _warm_worker(self, slot: _Slot) -> WorkerProcess:
        worker = slot.worker
        if worker is not None and worker.ending is not None:
            ending, worker.ending = worker.ending, None
            await ending  # the previous call's process has ended (or the worker died)
        if worker is not None and not worker.alive:
            await self._discard(slot, worker)
            worker = None
        if worker is None:
            worker = await WorkerProcess.start(
                worker_argv(self.isolation, slot.uid), self.start_timeout
            )
            self.stats["workers_started"] += 1
            if self._closed:  # closed while it started
                await worker.kill()
                raise CodeError("the code runner is closed")
            slot.worker = worker
        return worker

    def _forget(self, slot: _Slot, worker: WorkerProcess) -> None:
        if slot.worker is worker:
            slot.worker = None

    async def _discard(self, slot: _Slot, worker: WorkerProcess, *, grace: float = 0.0) -> None:
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
            await asyncio.wait(set(self._dying), timeout=REAP_TIMEOUT + 2)
        await self.host.close()
