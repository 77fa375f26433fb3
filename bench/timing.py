"""The one timing helper every benchmark uses, and a start-together runner.

``measure`` runs a batch of operations a few times after warm-up runs and keeps
the time per operation of each run; figures are compared by their medians, since
the machines these run on are shared and noisy. Times come from
``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, so it is comparable across
processes, which ``run_concurrently`` relies on).
"""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

Batch = Callable[[], int | None]
"""Does ``ops`` operations. Returns None to be timed from outside, or the elapsed
nanoseconds it measured itself when its own setup must not count."""

Prepare = Callable[[int], Callable[[], None]]
"""Called in worker ``i`` before the start line; returns the work to time."""

_START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Timing:
    """Nanoseconds per operation, one sample per repetition."""

    ns_per_op: tuple[float, ...]

    @property
    def median_ns(self) -> float:
        return statistics.median(self.ns_per_op)

    @property
    def ops_per_s(self) -> float:
        return 1e9 / self.median_ns

    @property
    def spread(self) -> float:
        """Half the range of the samples, relative to the median."""
        return (max(self.ns_per_op) - min(self.ns_per_op)) / 2 / self.median_ns

    def as_dict(self) -> dict[str, object]:
        return {
            "median_ns_per_op": self.median_ns,
            "ops_per_s": self.ops_per_s,
            "samples_ns_per_op": list(self.ns_per_op),
        }


def measure(batch: Batch, *, ops: int, repeat: int, warmup: int = 1) -> Timing:
    """Run ``batch`` ``warmup`` times untimed, then ``repeat`` times timed."""
    return measure_interleaved({"": batch}, ops=ops, repeat=repeat, warmup=warmup)[""]


def measure_interleaved(
    batches: dict[str, Batch], *, ops: int, repeat: int, warmup: int = 1
) -> dict[str, Timing]:
    """``measure`` for several batches at once, taking turns within each repetition,
    so a slow spell of a shared machine falls on all of them, not on one."""
    for _ in range(warmup):
        for batch in batches.values():
            batch()
    samples: dict[str, list[float]] = {name: [] for name in batches}
    for _ in range(repeat):
        for name, batch in batches.items():
            start = time.perf_counter_ns()
            measured = batch()
            elapsed = time.perf_counter_ns() - start if measured is None else measured
            samples[name].append(elapsed / ops)
    return {name: Timing(tuple(runs)) for name, runs in samples.items()}


def run_concurrently(prepare: Prepare, workers: int, *, processes: bool = False) -> int:
    """Run ``workers`` workers (threads, or forked processes) that start together.

    Returns the nanoseconds from the earliest start to the latest end; each worker's
    preparation (opening a store, say) happens before the start line and is not timed.
    """
    spans = (_run_processes if processes else _run_threads)(prepare, workers)
    return max(end for _, end in spans) - min(start for start, _ in spans)


def _timed_after(start_line: Callable[[], object], work: Callable[[], None]) -> tuple[int, int]:
    start_line()
    start = time.perf_counter_ns()
    work()
    return start, time.perf_counter_ns()


def _run_threads(prepare: Prepare, workers: int) -> list[tuple[int, int]]:
    barrier = threading.Barrier(workers, timeout=_START_TIMEOUT_S)
    spans: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            work = prepare(i)
            spans.append(_timed_after(barrier.wait, work))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return spans


def _run_processes(prepare: Prepare, workers: int) -> list[tuple[int, int]]:
    # fork: the children inherit ``prepare`` as it is, closures included
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(workers, timeout=_START_TIMEOUT_S)  # a failed worker frees the rest
    results = ctx.SimpleQueue()

    def worker(i: int) -> None:
        results.put(_timed_after(barrier.wait, prepare(i)))

    procs = [ctx.Process(target=worker, args=(i,)) for i in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()  # before reading: the results are a few bytes, they fit in the pipe
    failed = [proc.exitcode for proc in procs if proc.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker processes failed (exit codes {failed})")
    return [results.get() for _ in procs]
