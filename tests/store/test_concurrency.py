"""Concurrency of the store with real threads and real processes.

Counters and money transfers check isolation (two-phase locking, no lost update),
opposite lock orders check that a deadlock always breaks with ``TransactionConflict``
and a retry succeeds, the group-commit test checks that concurrent commits share log
fsyncs, and a reader process checks that commits show through its own mapping with no
copy and no reopening. No assertion depends on timing.
"""

from __future__ import annotations

import importlib.util
import json
import random
import select
import struct
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dtwz.errors import TransactionConflict
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.store.store import Store
from dtwz.store.transaction import Transaction

WORKER_PATH = Path(__file__).with_name("crash_worker.py")
_spec = importlib.util.spec_from_file_location("dtwz_concurrency_worker", WORKER_PATH)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

WAIT = 120.0  # seconds: bound on every join and every wait for a child
SIZE = 1 << 16
# Deadlocks break by timeout, and both sides of a cycle usually time out together:
# retries back off at random over a few timeouts, or cycles form again and again.
LOCK_TIMEOUT = 0.05


def slot(k: int) -> int:
    return DATA_START + 8 * k


def make_objects(store: Store, count: int, words: int, value: int = 0) -> list[ObjectId]:
    with store.transaction() as tx:
        oids = [tx.create(SIZE) for _ in range(count)]
        for oid in oids:
            tx.alloc(oid, 8 * words)
            for k in range(words):
                tx.write_u64(oid, slot(k), value)
    return oids


def run_threads(count: int, body: Callable[[int], None]) -> None:
    """Run ``body(i)`` in ``count`` threads; re-raise the first error; never hang."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            body(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(t.is_alive() for t in threads), f"threads still running after {WAIT}s"
    if errors:
        raise errors[0]


def retry(store: Store, body: Callable[[Transaction], None], rng: random.Random) -> int:
    """Run ``body`` in a transaction until it commits; how many conflicts it took."""
    conflicts = 0
    while True:
        try:
            with store.transaction() as tx:
                body(tx)
            return conflicts
        except TransactionConflict:
            conflicts += 1
            backoff(rng, conflicts)


def backoff(rng: random.Random, conflicts: int) -> None:
    threading.Event().wait(rng.uniform(0, LOCK_TIMEOUT * min(conflicts, 4)))


class Children:
    """Worker processes, killed on the way out whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, mode: str, args: dict[str, Any], **popen: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER_PATH), mode, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
        self.procs.append(proc)
        return proc

    def result(self, proc: subprocess.Popen[str]) -> Any:
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err}"
        return json.loads(out.strip().splitlines()[-1])

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=WAIT)


def read_line(proc: subprocess.Popen[str]) -> str:
    """The child's next line of output, within WAIT seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    assert ready, f"no answer from the child within {WAIT}s"
    return proc.stdout.readline().strip()


@pytest.fixture
def children() -> Iterator[Children]:
    group = Children()
    try:
        yield group
    finally:
        group.kill_all()


# -- (a) and (b): counters ---------------------------------------------------------------

COUNTER_OBJECTS, COUNTERS = 6, 4


def bump_two(oids: list[ObjectId], rng: random.Random) -> tuple[list[tuple[int, int]], Any]:
    """Two distinct random counters (maybe in one object) and a body that increments both."""
    picks = [(rng.randrange(len(oids)), rng.randrange(COUNTERS)) for _ in range(2)]
    if picks[0] == picks[1]:
        picks.pop()

    def body(tx: Transaction) -> None:
        for o, k in picks:
            tx.write_u64(oids[o], slot(k), tx.read_u64(oids[o], slot(k)) + 1)

    return picks, body


def counts_in(store: Store, oids: list[ObjectId]) -> Counter[str]:
    return Counter(
        {
            f"{o}:{k}": store.get(oid).read_u64(slot(k))
            for o, oid in enumerate(oids)
            for k in range(COUNTERS)
        }
    )


@pytest.mark.parametrize("checkpoint_bytes", [64 << 20, 8192], ids=["log", "checkpoints"])
def test_threads_increment_counters_exactly(tmp_path: Path, checkpoint_bytes: int) -> None:
    """8 threads, read-modify-write of two random counters per transaction; with tiny
    ``checkpoint_bytes`` checkpoints run all the time under the transactions."""
    path = tmp_path / "store"
    done: Counter[str] = Counter()
    guard = threading.Lock()
    with Store.open(
        path, create=True, checkpoint_bytes=checkpoint_bytes, lock_timeout=LOCK_TIMEOUT
    ) as store:
        oids = make_objects(store, COUNTER_OBJECTS, COUNTERS)

        def work(i: int) -> None:
            rng = random.Random(i)
            mine: Counter[str] = Counter()
            for _ in range(150):
                picks, body = bump_two(oids, rng)
                retry(store, body, rng)
                mine.update(f"{o}:{k}" for o, k in picks)
            with guard:
                done.update(mine)

        run_threads(8, work)
        assert counts_in(store, oids) == done
        if checkpoint_bytes < 64 << 20:
            assert store.stats["checkpoints"] > 1
    with Store.open(path) as store:  # and durably so
        assert counts_in(store, oids) == done


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint_bytes", [64 << 20, 8192], ids=["log", "checkpoints"])
def test_processes_increment_counters_exactly(
    tmp_path: Path, children: Children, checkpoint_bytes: int
) -> None:
    """4 processes increment shared counters while this one keeps opening the store:
    each open runs recovery (a checkpoint) under their transactions."""
    path = tmp_path / "store"
    with Store.open(path, create=True) as store:
        oids = make_objects(store, COUNTER_OBJECTS, COUNTERS)
    args = {
        "store": str(path),
        "objects": [o.hex() for o in oids],
        "counters": COUNTERS,
        "increments": 150,
        "checkpoint_bytes": checkpoint_bytes,
        "lock_timeout": LOCK_TIMEOUT,
    }
    procs = [children.start("counter", {**args, "seed": i}) for i in range(4)]
    opens = 0
    while any(p.poll() is None for p in procs) and opens < 2000:
        Store.open(path).close()
        opens += 1
    done: Counter[str] = Counter()
    for proc in procs:
        done.update(children.result(proc)["done"])
    assert sum(done.values()) >= 4 * 150
    with Store.open(path) as store:
        assert counts_in(store, oids) == done


# -- (c): money transfers ------------------------------------------------------------------


@pytest.mark.slow
def test_transfers_keep_the_total(tmp_path: Path, children: Children) -> None:
    """Threads and processes move money between random accounts in several objects;
    auditors sum all accounts in transactions meanwhile, and once more at the end."""
    path = tmp_path / "store"
    objects, per_object, start = 6, 8, 1000
    total = objects * per_object * start
    with Store.open(path, create=True, lock_timeout=LOCK_TIMEOUT) as store:
        oids = make_objects(store, objects, per_object, start)
        accounts = [(oid, slot(k)) for oid in oids for k in range(per_object)]
        procs = [
            children.start(
                "transfer",
                {
                    "store": str(path),
                    "accounts": [[oid.hex(), k] for oid in oids for k in range(per_object)],
                    "transfers": 150,
                    "seed": 100 + i,
                    "lock_timeout": LOCK_TIMEOUT,
                },
            )
            for i in range(2)
        ]
        audits: list[int] = []
        stop = threading.Event()

        def audit(_: int) -> None:
            rng = random.Random(-1)

            def body(tx: Transaction) -> None:
                audits.append(sum(tx.read_u64(oid, at) for oid, at in accounts))

            while not stop.is_set():
                retry(store, body, rng)
            retry(store, body, rng)  # and once more after everything

        def work(i: int) -> None:
            rng = random.Random(i)
            for _ in range(150):
                (a, at_a), (b, at_b) = rng.sample(accounts, 2)
                amount = rng.randint(1, 50)

                def move(
                    tx: Transaction,
                    a: ObjectId = a,
                    at_a: int = at_a,
                    b: ObjectId = b,
                    at_b: int = at_b,
                    amount: int = amount,
                ) -> None:
                    have = tx.read_u64(a, at_a)
                    if have >= amount:
                        tx.write_u64(a, at_a, have - amount)
                        tx.write_u64(b, at_b, tx.read_u64(b, at_b) + amount)

                retry(store, move, rng)

        def audit_until_all_done(i: int) -> None:
            if i == 0:
                audit(i)
                return
            try:
                run_threads(5, work)
                for proc in procs:
                    children.result(proc)
            finally:
                stop.set()

        run_threads(2, audit_until_all_done)
        assert audits and all(seen == total for seen in audits), set(audits)
    with Store.open(path) as store:  # a reader afterwards, no transaction
        balances = [store.get(oid).read_u64(at) for oid, at in accounts]
        assert sum(balances) == total
        assert balances != [start] * len(balances)  # money did move


# -- (d): deadlocks break ----------------------------------------------------------------


def test_opposite_lock_orders_conflict_and_retry(tmp_path: Path) -> None:
    """Two transactions lock A then B and B then A: the timeout breaks the cycle with
    TransactionConflict, and retried, both commit exactly once."""
    with Store.open(tmp_path / "store", create=True, lock_timeout=0.2) as store:
        a, b = make_objects(store, 2, 1)
        both_hold_one = threading.Barrier(2, timeout=WAIT)
        conflicts = [0, 0]

        def work(i: int) -> None:
            first, second = (a, b) if i == 0 else (b, a)
            rng = random.Random(i)
            meet = True
            while True:
                tx = store.transaction()
                try:
                    tx.write_u64(first, slot(0), tx.read_u64(first, slot(0)) + 1)
                    if meet:
                        meet = False
                        both_hold_one.wait()  # now each waits for the other's lock
                    tx.write_u64(second, slot(0), tx.read_u64(second, slot(0)) + 1)
                    tx.commit()
                    return
                except TransactionConflict:
                    tx.abort()
                    conflicts[i] += 1
                    backoff(rng, conflicts[i])

        run_threads(2, work)
        assert sum(conflicts) >= 1
        assert [store.get(o).read_u64(slot(0)) for o in (a, b)] == [2, 2]


def test_opposite_lock_orders_across_processes(tmp_path: Path, children: Children) -> None:
    """The same cycle between this process and another one (OFD locks, polled)."""
    path = tmp_path / "store"
    with Store.open(path, create=True, lock_timeout=0.2) as store:
        a, b = make_objects(store, 2, 1)
        args = {"store": str(path), "a": a.hex(), "b": b.hex(), "lock_timeout": 0.2, "seed": 1}
        proc = children.start("lockpair", args, stdin=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        rng = random.Random(2)
        conflicts = 0
        tx = store.transaction()
        tx.write_u64(a, slot(0), tx.read_u64(a, slot(0)) + 1)
        assert read_line(proc) == "locked"  # it holds B, we hold A
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while True:
            try:
                tx.write_u64(b, slot(0), tx.read_u64(b, slot(0)) + 1)
                tx.commit()
                break
            except TransactionConflict:
                tx.abort()
                conflicts += 1
                backoff(rng, conflicts)
                tx = store.transaction()
                tx.write_u64(a, slot(0), tx.read_u64(a, slot(0)) + 1)
        theirs = children.result(proc)["conflicts"]
        assert conflicts + theirs >= 1
        assert [store.get(o).read_u64(slot(0)) for o in (a, b)] == [2, 2]


# -- (e): group commit ---------------------------------------------------------------------


def test_concurrent_commits_share_log_fsyncs(tmp_path: Path) -> None:
    """8 threads committing at once: fewer log fsyncs than commits, and every commit
    durable (all there after reopening)."""
    path = tmp_path / "store"
    with Store.open(path, create=True) as store:
        oids = make_objects(store, 8, 1)
        before = dict(store.stats)

        def work(i: int) -> None:
            for n in range(1, 41):
                with store.transaction() as tx:
                    tx.write_u64(oids[i], slot(0), n)

        run_threads(8, work)
        commits = store.stats["commits"] - before["commits"]
        fsyncs = store.stats["fsyncs"] - before["fsyncs"]
        assert commits == 8 * 40
        assert 1 <= fsyncs < commits
    with Store.open(path) as store:
        assert [store.get(o).read_u64(slot(0)) for o in oids] == [40] * 8


# -- (f): zero-copy readers in other processes --------------------------------------------


def test_reader_process_sees_commits_through_its_mapping(
    tmp_path: Path, children: Children
) -> None:
    """A process that opened the store before the commits reads them through the same
    memoryview it took once (no copy, no reopen), including objects created later."""
    path = tmp_path / "store"
    with Store.open(path, create=True) as store:
        (oid,) = make_objects(store, 1, 1)
        args = {"store": str(path), "object": oid.hex()}
        proc = children.start("reader", args, stdin=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None

        def ask(line: str) -> str:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            return read_line(proc)

        assert read_line(proc) == "ready"
        version = store.header(oid).version
        for value in (1, 2, 0xDEADBEEF, 2**64 - 1):
            with store.transaction() as tx:
                tx.write_u64(oid, slot(0), value)
            version += 1
            assert ask("check") == f"{value} {version}"
        with store.transaction() as tx:
            later = tx.create(SIZE)
            tx.append(later, struct.pack("<Q", 4242))
        assert ask(f"new {later.hex()}") == struct.pack("<Q", 4242).hex()
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err


# -- checkpoints never show older bytes ----------------------------------------------------


def test_checkpoint_never_puts_older_bytes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint (here: another process opening the store) takes no object locks, so
    every intermediate state it writes is visible to transactions that hold them. Watch
    the object after every single write of the replay: it must never go back in time."""
    path = tmp_path / "store"
    with Store.open(path, create=True) as store:
        (oid,) = make_objects(store, 1, 2)
        for n in range(1, 6):
            with store.transaction() as tx:
                tx.write_u64(oid, slot(0), n)
                tx.write(oid, slot(1), bytes([n]) * 8)
        final = bytes(store.get(oid).view[: DATA_START + 16])
        seen: list[bytes] = []
        real = Store._pwrite

        def watched(self: Store, target: bytes, offset: int, data: bytes) -> bool:
            done = real(self, ObjectId(target), offset, data)
            seen.append(bytes(store.get(oid).view[: DATA_START + 16]))
            return done

        monkeypatch.setattr(Store, "_pwrite", watched)
        Store.open(path).close()  # recovery replays the five records
        monkeypatch.undo()
        assert seen, "the replay wrote nothing"
        assert all(state == final for state in seen), "the checkpoint showed older bytes"
        assert store.header(oid).version == 6
