"""Crash consistency with real processes and kill -9.

Child processes (``crash_worker.py crash``) run random multi-object transactions:
slot overwrites in several objects, allocations, new objects linked by persistent
pointers (new FOT entries), pointer rewrites and deletes. Before each commit a child
appends an *intent* line with the checksums of everything the transaction writes to
a journal outside the store, and a *done* line once commit returns. The parent kills
the child with SIGKILL at a random moment, opens the store (recovery runs) and checks
every object against a model it keeps from the journals:

* every done transaction is fully present (exact bytes, versions, data lengths, FOT
  entries, pointers that follow to the right place, and no object too many or few);
* the one transaction per child that may be in doubt (an intent without done) is
  either fully present or fully absent, never partly.

The store lives on across all kills, so damage would pile up and be caught later.
Some runs use a tiny ``checkpoint_bytes`` so kills also land in checkpoints, and some
kill a process that is itself in the middle of recovering the log.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dtwz.errors import DtwzError
from dtwz.format.ids import ObjectId
from dtwz.store.store import Store

WORKER_PATH = Path(__file__).with_name("crash_worker.py")
_spec = importlib.util.spec_from_file_location("dtwz_crash_worker", WORKER_PATH)
assert _spec is not None and _spec.loader is not None
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

ROOTS = 4
WAIT = 20.0  # seconds: bound on every wait for a child (generous for slow CI machines)
SMALL_CHECKPOINTS = (4096, 16384, 65536)

Model = dict[str, dict[str, Any]]


# -- children -----------------------------------------------------------------------


def spawn(mode: str, args: dict[str, Any], errors: Path, **popen: Any) -> subprocess.Popen[bytes]:
    with errors.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, str(WORKER_PATH), mode, json.dumps(args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            **popen,
        )


def wait_line(proc: subprocess.Popen[bytes], errors: Path) -> str:
    """The child's next stdout line, within WAIT seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline() if ready else b""
    if not line:
        proc.kill()
        proc.wait(WAIT)
        said = errors.read_text()
        pytest.fail(f"child said nothing within {WAIT}s (exit {proc.returncode}):\n{said}")
    return line.decode().strip()


def reap(proc: subprocess.Popen[bytes], errors: Path, *, may_finish: bool = False) -> None:
    """Wait for a killed child; anything but death by SIGKILL is a failure."""
    try:
        code = proc.wait(WAIT)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if code != -signal.SIGKILL and not (may_finish and code == 0):
        pytest.fail(f"child exited with {code} instead of being killed:\n{errors.read_text()}")


@contextlib.contextmanager
def no_child_left_behind() -> Any:
    children: list[subprocess.Popen[bytes]] = []
    try:
        yield children
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(WAIT)
            if proc.stdout is not None:
                proc.stdout.close()


# -- the model and the checks ---------------------------------------------------------


def create_roots(path: Path) -> Model:
    model: Model = {}
    with Store.open(path, create=True) as store, store.transaction() as tx:
        for _ in range(ROOTS):
            oid = tx.create(worker.OBJECT_SIZE)
            tx.alloc(oid, worker.SLOT_AREA)
            obj = worker.fresh_object(-1)
            obj.update(version=1, data_len=worker.SLOT_AREA)
            model[oid.hex()] = obj
    return model


def read_journal(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Committed intents in commit order, and the one in doubt (intent without done)."""
    if not path.exists():
        return [], None
    lines = path.read_bytes().split(b"\n")[:-1]  # a torn last line was never finished
    intents: list[dict[str, Any]] = []
    done: set[int] = set()
    for raw in lines:
        record = json.loads(raw)
        if record["t"] == "i":
            intents.append(record)
        else:
            done.add(record["n"])
    committed = [i for i in intents if i["n"] in done]
    unfinished = [i for i in intents if i["n"] not in done]
    assert len(unfinished) <= 1 and (not unfinished or unfinished[0] is intents[-1]), (
        f"{path}: more than one transaction in doubt"
    )
    return committed, unfinished[0] if unfinished else None


def in_doubt_applied(store: Store, model: Model, present: set[str], intent: dict[str, Any]) -> bool:
    """Whether the in-doubt transaction is fully present (True) or fully absent (False)."""
    seen: list[tuple[str, str]] = []
    for hexid, eff in intent["objs"].items():
        if eff["new"]:
            seen.append((f"new object {hexid}", "new" if hexid in present else "old"))
            continue
        oid = ObjectId.parse(hexid)
        for off, size, sha in eff["ranges"]:
            now = worker.digest(store.read(oid, off, size))
            before = model[hexid]["ranges"].get(str(off))
            old = before[1] if before and before[0] == size else worker.zero_digest(size)
            state = {(True, True): "both", (True, False): "new", (False, True): "old"}.get(
                (now == sha, now == old), "neither"
            )
            seen.append((f"{hexid}+{off:#x}[{size}]", state))
    for hexid in intent["deleted"]:
        seen.append((f"deleted object {hexid}", "old" if hexid in present else "new"))
    states = {state for _, state in seen} - {"both"}
    if states == {"new"}:
        return True
    if states <= {"old"}:
        return False
    raise AssertionError(f"transaction {intent['n']} is partly visible after recovery: {seen}")


def check_store(store: Store, model: Model) -> int:
    """Compare every object with the model; the number of ranges checked."""
    problems: list[str] = []
    present = {oid.hex() for oid in store.object_ids()}
    if present != set(model):
        missing, unexpected = sorted(set(model) - present), sorted(present - set(model))
        problems.append(f"objects missing {missing}, unexpected {unexpected}")
    checked = 0
    for hexid, want in model.items():
        if hexid not in present:
            continue
        oid = ObjectId.parse(hexid)
        obj = store.get(oid)
        header = obj.header()
        got = (header.version, header.data_len, header.fot_count)
        if got != (want["version"], want["data_len"], want["fot"]):
            problems.append(
                f"{hexid}: header (version, data_len, fot) {got}, "
                f"expected {(want['version'], want['data_len'], want['fot'])}"
            )
        for off, (size, sha) in want["ranges"].items():
            checked += 1
            if worker.digest(store.read(oid, int(off), size)) != sha:
                problems.append(f"{hexid}+{int(off):#x}[{size}]: wrong bytes")
        for index, target in want["fotents"].items():
            entry = obj.fot_entry(int(index))
            if entry.target is None or entry.target.hex() != target:
                problems.append(f"{hexid}: FOT entry {index} is {entry}, expected {target}")
        for slot, pointer in want["ptrs"].items():
            if pointer is None:
                continue
            word = obj.read_u64(worker.SLOTS[int(slot)][0])
            target, offset = obj.follow(word)
            if (target.object_id.hex(), offset) != tuple(pointer):
                problems.append(
                    f"{hexid}: pointer slot {slot} leads to {target.object_id.hex()}+{offset:#x}, "
                    f"expected {pointer}"
                )
    assert not problems, "\n".join(problems[:30])
    return checked


def recover_and_check(
    path: Path, model: Model, journals: list[Path], tally: Counter[str], context: str
) -> None:
    """Open the store (recovery), advance the model from the journals, check everything."""
    doubtful = []
    for journal in journals:
        committed, unfinished = read_journal(journal)
        for intent in committed:
            worker.apply_effects(model, intent)
        tally["transactions committed"] += len(committed)
        if unfinished is not None:
            doubtful.append(unfinished)
    try:
        with Store.open(path) as store:
            tally["replayed records"] += store.stats["replayed_records"]
            present = {oid.hex() for oid in store.object_ids()}
            applied = [in_doubt_applied(store, model, present, i) for i in doubtful]
            for intent, yes in zip(doubtful, applied, strict=True):
                tally["in doubt, applied" if yes else "in doubt, not applied"] += 1
                if yes:
                    worker.apply_effects(model, intent)
            tally["ranges checked"] += check_store(store, model)
    except (AssertionError, DtwzError) as exc:
        raise AssertionError(f"{context}: {type(exc).__name__}: {exc}") from exc


def kill_recovery(path: Path, rng: random.Random, errors: Path, children: list[Any]) -> None:
    """Start a process that recovers the store and kill it somewhere in recovery."""
    proc = spawn("recover", {"store": str(path)}, errors)
    children.append(proc)
    wait_line(proc, errors)
    time.sleep(rng.uniform(0, 0.01))
    proc.kill()
    reap(proc, errors, may_finish=True)


def child_args(path: Path, state: Path, journal: Path, child: int, children: int, **kw: Any) -> Any:
    return {
        "store": str(path),
        "state": str(state),
        "journal": str(journal),
        "child": child,
        "children": children,
        **kw,
    }


def crash_options(rng: random.Random, tally: Counter[str]) -> dict[str, Any]:
    small = rng.random() < 0.3
    tally["runs with small checkpoint_bytes"] += small
    durable = rng.random() < 0.85
    return {
        "seed": rng.randrange(1 << 32),
        "checkpoint_bytes": rng.choice(SMALL_CHECKPOINTS) if small else 64 << 20,
        "durable": durable,
    }


def summary(title: str, tally: Counter[str], started: float) -> str:
    figures = ", ".join(f"{v} {k}" for k, v in sorted(tally.items()))
    return f"{title}: {figures} in {time.monotonic() - started:.1f}s"


# -- the tests --------------------------------------------------------------------------


@pytest.mark.slow
def test_one_writer_killed_200_times(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    path = tmp_path / "store"
    model = create_roots(path)
    state, logs = tmp_path / "state.json", tmp_path / "journals"
    logs.mkdir()
    errors = tmp_path / "stderr.txt"
    tally: Counter[str] = Counter()
    started = time.monotonic()
    with no_child_left_behind() as children:
        for i in range(200):
            state.write_text(json.dumps(model))
            journal = logs / f"{i}.jsonl"
            args = child_args(path, state, journal, 0, 1, **crash_options(rng, tally))
            proc = spawn("crash", args, errors)
            children.append(proc)
            if rng.random() < 0.1:  # anywhere from start-up on: imports, open, first commits
                time.sleep(rng.uniform(0, 0.08))
                tally["early kills"] += 1
            else:
                assert wait_line(proc, errors) == "ready"
                time.sleep(rng.uniform(0, 0.05))
            proc.kill()
            reap(proc, errors)
            tally["kills"] += 1
            if rng.random() < 0.15:
                kill_recovery(path, rng, errors, children)
                tally["kills in recovery"] += 1
            context = f"after kill {i + 1} (seed {seed}, child args {args})"
            recover_and_check(path, model, [journal], tally, context)
            children.clear()
    assert tally["transactions committed"] > 0
    assert tally["in doubt, applied"] + tally["in doubt, not applied"] > 0
    with capsys.disabled():
        print("\n" + summary("one writer", tally, started))


@pytest.mark.slow
def test_concurrent_writers_killed_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    writers = 3
    path = tmp_path / "store"
    model = create_roots(path)
    state, logs = tmp_path / "state.json", tmp_path / "journals"
    logs.mkdir()
    tally: Counter[str] = Counter()
    started = time.monotonic()
    with no_child_left_behind() as children:
        for i in range(40):
            state.write_text(json.dumps(model))
            options = crash_options(rng, tally)  # one checkpoint size for the round
            journals = [logs / f"{i}-{c}.jsonl" for c in range(writers)]
            errors = [tmp_path / f"stderr-{c}.txt" for c in range(writers)]
            group = 0  # the first child leads a new process group; the rest join it
            for c in range(writers):
                options["seed"] = rng.randrange(1 << 32)
                args = child_args(path, state, journals[c], c, writers, **options)
                proc = spawn("crash", args, errors[c], process_group=group)
                children.append(proc)
                group = group or proc.pid
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0, 0.1))
                tally["early kills"] += 1
            else:
                for proc, err in zip(children, errors, strict=True):
                    assert wait_line(proc, err) == "ready"
                time.sleep(rng.uniform(0, 0.06))
            os.killpg(group, signal.SIGKILL)  # all at once: one signal to the group
            for proc, err in zip(children, errors, strict=True):
                reap(proc, err)
            tally["kills"] += writers
            context = f"after round {i + 1} (seed {seed})"
            recover_and_check(path, model, journals, tally, context)
            children.clear()
    assert tally["transactions committed"] > 0
    with capsys.disabled():
        print("\n" + summary(f"{writers} writers", tally, started))


# -- kills at exact points, simulated in-process -------------------------------------
#
# The random kills above find these windows only now and then; these tests stop a
# store at the exact instruction (an exception where the kill would land), drop it
# like a dead process (its OFD locks go with its descriptors), and recover.


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise point runs except ``finally``."""


def kill_on(monkeypatch: pytest.MonkeyPatch, name: str, when: Any) -> None:
    """Make ``os.<name>(*args)`` raise ``Killed`` when ``when(*args)`` is true."""
    real = getattr(os, name)

    def fake(*args: Any) -> Any:
        if when(*args):
            monkeypatch.undo()
            raise Killed(name)
        return real(*args)

    monkeypatch.setattr(os, name, fake)


def test_recovery_finishes_a_create_killed_before_it_sized_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between creating an object's file and giving it its size: redo finishes it."""
    path = tmp_path / "store"
    dying = Store.open(path, create=True)
    kill_on(monkeypatch, "ftruncate", lambda fd, size: size == 1 << 16)
    with pytest.raises(Killed), dying.transaction() as tx:
        oid = tx.create(1 << 16)
        tx.append(oid, b"durable before the kill")
    dying.close()
    with Store.open(path) as store:  # the record is durable: the object must be whole
        assert bytes(store.read(oid, 0x1000, 23)) == b"durable before the kill"
        assert store.header(oid).version == 1


@pytest.mark.parametrize("point", ["ftruncate", "fsync"])
def test_checkpoint_killed_after_emptying_the_log_loses_no_later_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A checkpoint killed while it empties the log, then another process commits and is
    killed half-way through applying: recovery must still find and redo that commit
    (a stale log_end over an emptied log would put it past a hole, out of reach)."""
    path = tmp_path / "store"
    with Store.open(path, create=True) as store, store.transaction() as tx:
        x, y = tx.create(1 << 16), tx.create(1 << 16)
        tx.write_u64(x, 0x1000, 1)
        tx.write_u64(y, 0x1000, 1)
    checkpointer, committer = Store.open(path), Store.open(path)
    with checkpointer.transaction() as tx:  # something in the log to checkpoint
        tx.write_u64(x, 0x1008, 7)
    log_fd = checkpointer._log_fd
    kill_on(monkeypatch, point, lambda fd, *size: fd == log_fd)
    with pytest.raises(Killed):
        checkpointer.checkpoint()
    checkpointer.close()
    applied = 0

    def apply_then_die(obj: Any, offset: int, data: bytes) -> None:
        nonlocal applied
        if applied == 1:
            raise Killed("apply")
        applied += 1
        real_apply(obj, offset, data)

    real_apply = type(committer.get(x))._apply
    monkeypatch.setattr(type(committer.get(x)), "_apply", apply_then_die)
    with pytest.raises(Killed), committer.transaction() as tx:
        tx.write_u64(x, 0x1000, tx.read_u64(x, 0x1000) + 1)
        tx.write_u64(y, 0x1000, tx.read_u64(y, 0x1000) + 1)
    monkeypatch.undo()
    committer.close()
    with Store.open(path) as store:
        got = [store.get(o).read_u64(0x1000) for o in (x, y)]
        assert got == [2, 2], "a durable commit was lost or applied in part"
        assert store.get(x).read_u64(0x1008) == 7
