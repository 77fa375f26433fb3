"""Recovery after kill -9: time ``Store.open`` on a big store whose writer died mid-run.

    python -m bench.bench_recovery [--quick] [--objects N] [--kill-at-mb M] [--json PATH] ...

Builds a store of ``--objects`` small objects (8 KiB: the header page and one 4 KiB
data page, only the header written), then, once per repetition, starts a writer
process (``--writers`` threads committing durable transactions that each write
``--write-bytes`` into ``--objects-per-tx`` random objects), SIGKILLs it when the
redo log reaches ``--kill-at-mb`` and times ``Store.open`` in a fresh process: the
recovery. The baseline is ``Store.open`` of the same store when it is clean.
Target: recovery under 5 s. The log is never bigger than the store's checkpoint
threshold (64 MiB by default), so the default kill point, half of it, is the
expected log size at a random crash.

The page cache stays warm across the kill (a process crash, not a power loss).
``_write`` and ``_open`` are this module's child roles, not for direct use.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rich.console import Console

from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row, Target
from bench.timing import measure
from dtwz import ObjectId, Store
from dtwz.errors import TransactionConflict
from dtwz.format.layout import DATA_START
from dtwz.store.redo import WriteOp, decode_log

_LOG = Console(stderr=True)
_BUILD_BATCH = 1000
_KILL_TIMEOUT_S = 900.0
_COLLECT_EVERY = 64  # transactions per writer thread between garbage collections
_CTL_SALT = 40  # the store's log salt in store.ctl (docs/FORMAT.md)
_CHECKPOINT_BYTES: int = inspect.signature(Store).parameters["checkpoint_bytes"].default


@dataclass(frozen=True, slots=True)
class Workload:
    writers: int
    objects_per_tx: int
    write_bytes: int

    def __str__(self) -> str:
        return f"{self.writers} threads x {self.objects_per_tx} objects x {self.write_bytes} B"

    def args(self) -> list[str]:
        return [str(self.writers), str(self.objects_per_tx), str(self.write_bytes)]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _CHILD_ROLES:
        _CHILD_ROLES[argv[0]](*argv[1:])
        return
    args = _parser().parse_args(argv)
    objects = args.objects or (10_000 if args.quick else 1_000_000)
    kill_at = int((args.kill_at_mb or (1 if args.quick else 32)) * (1 << 20))
    repeat = args.repeat or 3
    if kill_at >= _CHECKPOINT_BYTES:
        sys.exit(
            f"--kill-at-mb must stay below the checkpoint threshold ({_CHECKPOINT_BYTES >> 20} MiB)"
        )
    workload = Workload(args.writers, args.objects_per_tx, args.write_bytes)
    settings: dict[str, object] = {"quick": args.quick, "objects": objects, "repeat": repeat}
    settings.update(kill_at_mb=kill_at / (1 << 20), workload=str(workload), dir=str(args.dir))
    settings["filesystem"] = check_dir(args.dir)
    report = Report("dtwz recovery after SIGKILL (same run)", settings)
    with scratch_dir(args.dir, "recovery") as root:
        store, ids = root / "store", root / "ids"
        _LOG.log(f"building a store of {objects:,} objects ...")
        build = measure(partial(build_store, store, ids, objects), ops=objects, repeat=1, warmup=0)
        crashes = _Crashes(store, ids, workload, kill_at)
        _LOG.log(f"{repeat} x (write, SIGKILL at {kill_at >> 20} MiB of log, recover) ...")
        recovery = measure(crashes.crash_and_recover, ops=1, repeat=repeat, warmup=0)
        clean = measure(partial(open_in_fresh_process, store), ops=1, repeat=repeat)
    report.add(
        Row(
            f"Store.open after SIGKILL, {objects:,} objects",
            recovery,
            "Store.open, clean store",
            clean,
            target=Target("max_seconds", 5),
        ),
        Row(f"  (build: create {objects:,} objects)", build, rate=True, unit="obj"),
    )
    report.notes.update(crashes.summary())
    report.print()
    if args.json:
        report.write_json(args.json)


def _parser() -> argparse.ArgumentParser:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, help="objects in the store (default 1,000,000)")
    p.add_argument("--kill-at-mb", type=float, help="log size at the kill (default 32)")
    p.add_argument("--writers", type=int, default=4, help="writer threads in the child")
    p.add_argument("--objects-per-tx", type=int, default=8)
    p.add_argument("--write-bytes", type=int, default=256)
    return p


# -- building the store -------------------------------------------------------------


def build_store(path: Path, ids_path: Path, count: int) -> None:
    """A store of ``count`` empty 8 KiB objects; their IDs go to ``ids_path``."""
    with Store.init(path) as store, open(ids_path, "wb") as ids:
        for first in range(0, count, _BUILD_BATCH):
            with store.transaction() as tx:
                batch = [tx.create(8192) for _ in range(min(_BUILD_BATCH, count - first))]
            ids.write(b"".join(batch))
        store.checkpoint()  # start every repetition from an empty log


def _load_ids(path: Path) -> list[ObjectId]:
    raw = path.read_bytes()
    return [ObjectId(raw[at : at + 16]) for at in range(0, len(raw), 16)]


# -- crash and recovery ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crash:
    """What one crash left behind and what recovery did about it."""

    writer_ran_ms: int
    log_bytes: int
    log_records: int
    torn_tail_bytes: int
    distinct_objects: int
    replayed_records: int

    def __str__(self) -> str:
        return (
            f"writer ran {self.writer_ran_ms:,} ms; log {self.log_bytes / (1 << 20):.1f} MiB,"
            f" {self.log_records:,} records ({self.torn_tail_bytes:,} B torn tail) writing"
            f" {self.distinct_objects:,} objects; replayed {self.replayed_records:,} records"
        )


class _Crashes:
    """Each call: run a writer, kill it mid-run, time the recovery; keeps what it saw."""

    def __init__(self, store: Path, ids: Path, workload: Workload, kill_at: int) -> None:
        self.store, self.ids, self.workload, self.kill_at = store, ids, workload, kill_at
        self.seen: list[Crash] = []

    def crash_and_recover(self) -> int:
        """The nanoseconds ``Store.open`` took to recover (the writer's run is not timed)."""
        log_bytes, ran_s = kill_writer_mid_run(self.store, self.ids, self.workload, self.kill_at)
        records, torn, objects = _describe_log(self.store)
        open_ns, stats = _open_child(self.store)
        replayed = stats["replayed_records"]
        self.seen.append(Crash(int(ran_s * 1000), log_bytes, records, torn, objects, replayed))
        return open_ns

    def summary(self) -> dict[str, object]:
        return {f"crash {i + 1}": str(crash) for i, crash in enumerate(self.seen)}


def kill_writer_mid_run(
    store: Path, ids: Path, workload: Workload, kill_at: int
) -> tuple[int, float]:
    """Start a writer process, SIGKILL it once the log holds ``kill_at`` bytes.

    Returns the log's size at the kill and how long the writer wrote.
    """
    child = [sys.executable, "-m", "bench.bench_recovery", "_write", str(store), str(ids)]
    proc = subprocess.Popen([*child, *workload.args()], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "writing":
            raise RuntimeError("the writer process failed to start")
        started = time.monotonic()
        log = store / "wal.log"
        while log.stat().st_size < kill_at:
            if proc.poll() is not None or time.monotonic() - started > _KILL_TIMEOUT_S:
                raise RuntimeError(f"the writer stopped or stalled (exit code {proc.poll()})")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return log.stat().st_size, time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _describe_log(store: Path) -> tuple[int, int, int]:
    """Records, torn tail bytes and objects written, as recovery will find them."""
    ctl = (store / "store.ctl").read_bytes()
    (salt,) = struct.unpack_from("<Q", ctl, _CTL_SALT)
    data = (store / "wal.log").read_bytes()
    records, intact = decode_log(data, salt=salt)
    objects = {op.object_id for ops in records for op in ops if isinstance(op, WriteOp)}
    return len(records), len(data) - intact, len(objects)


def open_in_fresh_process(store: Path) -> int:
    return _open_child(store)[0]


def _open_child(store: Path) -> tuple[int, dict[str, int]]:
    """``Store.open`` in a new process: nanoseconds it took, and the store's stats after."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_recovery", "_open", str(store)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    result = json.loads(out)
    return int(result["open_ns"]), result["stats"]


# -- child roles ------------------------------------------------------------------------


def _child_open(store: str) -> None:
    start = time.perf_counter_ns()
    with Store.open(store) as opened:
        elapsed = time.perf_counter_ns() - start
        print(json.dumps({"open_ns": elapsed, "stats": opened.stats}))


def _child_write(store: str, ids: str, writers: str, per_tx: str, size: str) -> None:
    """Commit transactions from ``writers`` threads until killed."""
    oids = _load_ids(Path(ids))
    gc.freeze()  # a million IDs that live forever: keep them out of full collections
    opened = Store.open(store)
    payload = os.urandom(int(size))
    for i in range(int(writers)):
        rng = random.Random(i)
        work = partial(_write_forever, opened, oids, int(per_tx), payload, rng)
        threading.Thread(target=work, daemon=True).start()
    print("writing", flush=True)
    threading.Event().wait()


def _write_forever(
    store: Store, oids: list[ObjectId], per_tx: int, payload: bytes, rng: random.Random
) -> None:
    try:
        _write_transactions(store, oids, per_tx, payload, rng)
    except BaseException as exc:  # a dead writer thread must not leave the parent waiting
        print(f"writer failed: {exc!r}", file=sys.stderr, flush=True)
        os._exit(1)


def _write_transactions(
    store: Store, oids: list[ObjectId], per_tx: int, payload: bytes, rng: random.Random
) -> None:
    for count in itertools.count(1):
        if not count % _COLLECT_EVERY:
            # Workaround: a StoredObject the store's mapping cache evicts is part of a
            # reference cycle, so its mapping and descriptor live until a full GC runs;
            # writing to random objects among a million otherwise hits EMFILE.
            gc.collect()
        picks = sorted({oids[rng.randrange(len(oids))] for _ in range(per_tx)})  # no lock cycles
        try:
            with store.transaction() as tx:
                for oid in picks:
                    tx.write(oid, DATA_START, payload)
        except TransactionConflict:
            continue


_CHILD_ROLES: dict[str, Callable[..., None]] = {"_open": _child_open, "_write": _child_write}

if __name__ == "__main__":
    main()
