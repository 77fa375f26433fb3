"""Run code where the data is (docs/GRAPH.md, "Where code runs"), as one node coordinates it.

A code object holds a function (``dtwz.graph.code``). To run it against a root
the node asked counts the bytes the root reaches on each node (a summary walk:
holders send back counts, not objects), weighs the bytes each
choice would move (``placement.choose_site``: the data to this node, or the code
to the node homing most of the reachable bytes), and runs the function there in
that node's worker process (``dtwz.node.code.runner``), which reads local objects
zero-copy and everything else through its node like any client. The answer
reports the choice, the estimates and what the worker actually fetched.

A run acts as its caller (``Caller``: the kuid that asked and the capabilities it
brought), wherever it runs: the node that runs it checks everything the function
asks for against them (docs/SECURITY.md §11), and a run sent to another node
carries them in ``RunCode``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

from dtwz.errors import ClusterError, CodeError, DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph.agent import NOBODY, Caller, GraphAgent, image_bytes
from dtwz.graph.code import CodeBody, RunOutcome, decode_code
from dtwz.graph.placement import choose_site
from dtwz.security.capabilities import Capability
from dtwz.service.objects import ObjectService
from dtwz.wire.messages import CodeResult, Message, RunCode

RESULT_MAX = 64 << 20  # bytes of JSON a function may return
# the decision weighs at most this many reachable bytes: where the first 64 MiB a
# function could read live is a good guess of where the rest does, and the walk
# stays a small part of the run
DECISION_BUDGET = 64 << 20
MAX_CAPABILITIES = 16  # a caller's, carried with a run: as many as one request may bring


def caller_of(kuid: ObjectId, capabilities: Sequence[bytes]) -> Caller:
    """The caller a ``RunCode`` names (``InvalidArgument`` for a bad capability)."""
    if len(capabilities) > MAX_CAPABILITIES:
        raise InvalidArgument(f"at most {MAX_CAPABILITIES} capabilities per run")
    try:
        return Caller(ObjectId(kuid), tuple(Capability.decode(bytes(c)) for c in capabilities))
    except DtwzError as exc:
        raise InvalidArgument(f"a run's capability does not decode: {exc}") from exc


class CodeCluster(Protocol):
    node_id: str

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message: ...

    def is_alive(self, node_id: str) -> bool: ...


class CodeRunner(Protocol):
    """Runs a function in a worker process of this node (``dtwz.node.code.runner``)."""

    async def run(
        self,
        body: CodeBody,
        root: ObjectId,
        args: Sequence[Any] = (),
        *,
        timeout: float,
        caller: Caller,
    ) -> RunOutcome: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """Counters, and how the workers are confined."""


class CodeExecutor:
    def __init__(
        self,
        cluster: CodeCluster,
        service: ObjectService,
        agent: GraphAgent,
        runner: CodeRunner,
        *,
        max_timeout: float = 300.0,
    ) -> None:
        self.cluster = cluster
        self.service = service
        self.agent = agent
        self.runner = runner
        self.max_timeout = max_timeout  # seconds a caller may ask for (this node's)
        self.stats = {"runs_here": 0, "runs_sent": 0, "code_to_data": 0, "data_to_code": 0}

    async def close(self) -> None:
        await self.runner.close()

    def status(self) -> dict[str, Any]:
        """Where runs went, and the runner's own figures (``/cluster``'s "code")."""
        return {**self.stats, **self.runner.status()}

    async def _load(self, code_id: ObjectId) -> tuple[CodeBody, int, str]:
        obj, _, home = await self.service.open_whole(code_id)
        header = obj.header()
        body = decode_code(obj.read(DATA_START, header.data_len))
        return body, image_bytes(header.data_len, header.fot_count), home

    async def run(
        self,
        code_id: ObjectId,
        root: ObjectId,
        args: list[Any],
        *,
        where: str = "auto",
        timeout: float = 60.0,
        caller: Caller = NOBODY,
    ) -> dict[str, Any]:
        """Run code object ``code_id`` against ``root``; the result and the choice made.
        The choice weighs only what ``caller`` may read (a summary walk as ``caller``),
        and the function acts as ``caller`` wherever it runs."""
        self.check_timeout(timeout)
        start = time.perf_counter()
        me = self.cluster.node_id
        try:
            raw_args = json.dumps(args, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"args must be JSON: {exc}") from exc
        body, code_bytes, code_home = await self._load(code_id)
        report: dict[str, Any] = {"code": code_id.hex(), "root": root.hex()}
        if where == "auto":
            by_home, objects, cut = await self.agent.summarize(
                root, budget=DECISION_BUDGET, caller=caller
            )
            choice = choose_site(by_home, me, code_bytes=code_bytes, code_home=code_home)
            site = choice.site
            report |= {
                "choice": choice.choice,
                "estimates": choice.estimates,
                "bytes_moved_estimate": choice.bytes_moved,
                "reachable_objects": objects,
                "reachable_bytes": sum(by_home.values()),
                "estimate_cut_short": cut,
            }
        else:
            site = me if where in ("here", "caller", me) else where
            report["choice"] = "asked"
        if site == me:
            result, stats = await self._run_here(body, root, args, timeout, caller)
        else:
            if not self.cluster.is_alive(site):
                raise ClusterError(f"node {site} is not a live member of the cluster")
            message = RunCode(
                code_id, root, raw_args, int(timeout * 1000), caller.kuid, caller.encoded()
            )
            # the other node may queue the run behind others' for up to its time limit
            reply = await self.cluster.request(site, message, 2 * timeout + 10)
            if not isinstance(reply, CodeResult):
                raise ClusterError(f"node {site} answered a run with {reply!r}")
            result, stats = json.loads(reply.result), json.loads(reply.stats)
            self.stats["runs_sent"] += 1
        key = "data_to_code" if site == me else "code_to_data"
        self.stats[key] += 1
        report |= {
            "ran_at": site,
            "result": result,
            "worker": stats,
            "elapsed": round(time.perf_counter() - start, 6),
        }
        return report

    def check_timeout(self, timeout: float) -> None:
        """``InvalidArgument`` unless ``timeout`` is within what this node allows."""
        if not 0 < timeout <= self.max_timeout:
            raise InvalidArgument(
                f"timeout must be a number of seconds in (0, {self.max_timeout:g}] on node "
                f"{self.cluster.node_id} (its --code-max-timeout), got {timeout!r}"
            )

    async def _run_here(
        self, body: CodeBody, root: ObjectId, args: list[Any], timeout: float, caller: Caller
    ) -> tuple[Any, dict[str, Any]]:
        outcome = await self.runner.run(body, root, args, timeout=timeout, caller=caller)
        self.stats["runs_here"] += 1
        return outcome.result, {**outcome.stats, "elapsed": outcome.elapsed}

    async def on_run_code(self, m: RunCode) -> CodeResult:
        # the peer endpoint runs a handler's first step outside any Task; the runner's
        # timeouts need one, so let a Task carry on from here
        await asyncio.sleep(0)
        try:
            args = json.loads(m.args)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(f"args are not JSON: {exc}") from exc
        if not isinstance(args, list):
            raise InvalidArgument("args must be a JSON list")
        # the node the caller asked checked it (docs/SECURITY.md §9); what the function
        # does here is checked against the caller's identity and capabilities
        caller = caller_of(m.caller, m.capabilities)
        timeout = max(0.001, m.timeout_ms / 1000)
        self.check_timeout(timeout)
        body, _, _ = await self._load(m.code_id)
        start = time.perf_counter()
        result, stats = await self._run_here(body, m.root, args, timeout, caller)
        raw = json.dumps(result, allow_nan=False).encode("utf-8")
        if len(raw) > RESULT_MAX:
            raise CodeError(f"the function returned {len(raw)} bytes of JSON (limit {RESULT_MAX})")
        elapsed = int((time.perf_counter() - start) * 1e6)
        return CodeResult(raw, json.dumps(stats).encode("utf-8"), elapsed)
