"""One call, on the node's side: hand it to a warm worker, serve its call channel
until its answer, and learn how its process ended.

The worker forks a process for the call with the call's limits (CPU seconds,
memory) and hands its pid back; the runner then serves that process's *call
channel* (``dtwz.node.code.frames``): ``open`` asks for the object files it may
map (read-only descriptors, only for objects homed here that the caller may read
whole, in batches that grow while it keeps asking) and ``connect`` for an HTTP
connection to the node's API that acts as the caller, for that call only
(``CodeHost``). A call that runs past its time limit, or breaks the protocol, is
killed with everything it started (its process group) and the worker lives on;
after an answer, what the call left behind is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections.abc import Callable, Set
from typing import Any, Protocol

from dtwz.errors import CodeError, CodeTimeout, DtwzError
from dtwz.format.ids import ObjectId
from dtwz.graph.agent import Caller
from dtwz.node.code.frames import MAX_CONNECTIONS, MAX_FDS, encode_frame
from dtwz.node.code.processes import (
    AsyncFrames,
    WorkerGone,
    WorkerProcess,
    drain_pipe,
    killpg,
    settle,
    status_text,
)

__all__ = ["FIRST_BATCH", "CallService", "CodeHost"]

log = logging.getLogger("dtwz.node.code.runner")  # the runner's log

_EXIT_WAIT = 5.0  # for the worker to report how a call's process ended
FIRST_BATCH = 4  # objects handed over for a call's first open; doubled on each next one


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


class CallService:
    """Runs one call at a time on a worker it is given and serves the call's channel
    from ``host``, within ``cpu`` seconds of CPU time (0: a second more than the
    call's time limit) and ``memory`` bytes (0: no limit)."""

    def __init__(self, host: CodeHost, *, cpu: float, memory: int) -> None:
        self.host = host
        self.cpu = cpu
        self.memory = memory

    async def exchange(
        self,
        worker: WorkerProcess,
        entry: str,
        call_id: int,
        frame: bytes,
        timeout: float,
        caller: Caller,
    ) -> dict[str, Any]:
        # CPU seconds: --code-cpu, else a second more than the wall time (which stops a
        # call that computes on one thread first: its error says which limit it was)
        cpu = math.ceil(min(timeout, self.cpu)) if self.cpu else math.ceil(timeout) + 1
        cpu = max(1, cpu)
        limits = {"cpu": cpu, "memory": self.memory}
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
        drain = asyncio.create_task(drain_pipe(pipe, output, f"call {call_id}"))
        call = AsyncFrames(ours)
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
                killpg(child)
                with contextlib.suppress(WorkerGone):
                    await self._exited(worker, call_id)
                raise CodeTimeout(
                    f"{entry} ran past its time limit of {timeout:g}s and was stopped"
                ) from None
            except (CodeError, OSError) as exc:  # the call's process broke the protocol
                killpg(child)
                with contextlib.suppress(WorkerGone):
                    await self._exited(worker, call_id)
                raise CodeError(f"the process running {entry} broke the protocol: {exc}") from None
            if answer is not None:
                # the process ends meanwhile: its worker's report is read before the
                # worker's next call (the caller need not wait for the teardown)
                worker.ending = asyncio.ensure_future(self._ended(worker, call_id, child))
                return answer
            exited = await self._exited(worker, call_id)
            killpg(child)  # whatever the call started and left behind
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
            status = status_text(code if isinstance(code, int) else None)
            memory = self.memory
            hint = (
                f" (its memory limit is {memory >> 20} MiB)"
                if memory and code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, 1)
                else ""
            )
            await settle(drain)
            text = output.decode("utf-8", "replace").strip()
            said = f"; its output ends with:\n{text[-2000:]}" if text else ""
            raise CodeError(f"the process running {entry} died ({status}){hint}{said}")
        except WorkerGone as gone:
            if child is not None:
                killpg(child)
            raise WorkerGone(accepted=gone.accepted or child is not None) from None
        except asyncio.CancelledError:
            if child is not None:
                killpg(child)
            raise
        finally:
            for close in closers:
                close()
            call.close()
            if not drain.done():
                await settle(drain)

    async def _serve(
        self, call: AsyncFrames, caller: Caller, closers: list[Callable[[], None]], call_id: int
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
        self, call: AsyncFrames, caller: Caller, raw: Any, handed: set[ObjectId], limit: int
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

    async def _ended(self, worker: WorkerProcess, call_id: int, child: int) -> None:
        """After an answer: the worker's report that the call's process ended; then
        whatever the call started and left behind is killed."""
        try:
            await self._exited(worker, call_id)
        except WorkerGone:
            pass  # the worker is dead: the next call starts another
        finally:
            killpg(child)

    async def _exited(self, worker: WorkerProcess, call_id: int) -> dict[str, Any]:
        """The worker's report of how the call's process ended (``WorkerGone`` if it
        does not come)."""
        try:
            async with asyncio.timeout(_EXIT_WAIT):
                doc = await worker.receive(accepted=True)
        except TimeoutError:
            worker.dead = True
            raise WorkerGone(accepted=True) from None
        if doc.get("exited") != call_id:
            worker.dead = True
            raise WorkerGone(accepted=True)
        return doc
