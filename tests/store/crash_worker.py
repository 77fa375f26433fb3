"""Child programs for the crash and concurrency tests (run as a script, never collected).

    python crash_worker.py MODE '<json arguments>'

Modes:

``crash``
    Runs random multi-object transactions against a store until it is killed. Before
    each commit it appends an *intent* line to its journal (a file outside the store)
    describing every effect the transaction will have, with checksums; after commit
    returns it appends a *done* line. The parent, after a kill -9, replays the journal
    into its model and checks the recovered store against it. With several children,
    child ``c`` writes only the slots it owns (see ``slot_owner``), so the effects of
    different children commute and the model stays exact.
``recover``
    Opens the store (recovery runs) and exits; the parent kills it at random moments.
``counter``
    Increments counters in shared objects (read-modify-write transactions).
``transfer``
    Moves money between random accounts in several objects.
``reader``
    Reads an object zero-copy through its own mapping while another process commits.
``lockpair``
    Locks object B, then A, against a parent that locks A, then B.

The layout helpers at the top are imported by the tests too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dtwz.errors import TransactionConflict
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.store.store import Store
from dtwz.store.transaction import Transaction

# -- object layout of the crash tests -------------------------------------------

OBJECT_SIZE = 1 << 20
POINTER_SLOTS = 4
DATA_SLOT_SIZES = (16, 100, 512, 4000, 9000, 48, 2500, 8)
MAX_OWN_OBJECTS = 10


def _slot_table() -> list[tuple[int, int, bool]]:
    slots: list[tuple[int, int, bool]] = []
    at = DATA_START
    for _ in range(POINTER_SLOTS):
        slots.append((at, 8, True))
        at += 8
    for size in DATA_SLOT_SIZES:
        slots.append((at, size, False))
        at += -(-size // 8) * 8
    return slots


SLOTS = _slot_table()  # (offset, length, is_pointer_slot), pointer slots first
SLOT_AREA = SLOTS[-1][0] + SLOTS[-1][1] - DATA_START  # data_len of a fresh object


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def zero_digest(length: int) -> str:
    return digest(bytes(length))


def fresh_object(owner: int) -> dict[str, Any]:
    """Model of an object as created (before the creating transaction bumps version)."""
    return {
        "owner": owner,
        "version": 0,
        "data_len": 0,
        "fot": 0,
        "ranges": {str(off): [size, zero_digest(size)] for off, size, _ in SLOTS},
        "fotents": {},
        "ptrs": {},
    }


def slot_owner(obj: dict[str, Any], slot: int, children: int) -> int:
    """Which child may write ``slot`` of ``obj``: all of its own objects, a share of roots."""
    return int(obj["owner"]) if obj["owner"] >= 0 else slot % children


def apply_effects(model: dict[str, dict[str, Any]], intent: dict[str, Any]) -> None:
    """Advance the model by one committed transaction (its intent line)."""
    for hexid, eff in intent["objs"].items():
        if eff["new"]:
            model[hexid] = fresh_object(intent["c"])
        obj = model[hexid]
        obj["version"] += 1
        obj["data_len"] = max(obj["data_len"], eff["data_len"])
        obj["fot"] = max(obj["fot"], eff["fot"])
        for off, size, sha in eff["ranges"]:
            obj["ranges"][str(off)] = [size, sha]
        for index, target in eff["fotents"]:
            obj["fotents"][str(index)] = target
        for slot, target, offset in eff["ptrs"]:
            obj["ptrs"][str(slot)] = None if target is None else [target, offset]
    for hexid in intent["deleted"]:
        del model[hexid]


# -- crash mode -------------------------------------------------------------------


class _Journal:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, record: dict[str, Any]) -> None:
        # one write() per line: a kill -9 keeps whatever reached the page cache
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


def _referenced(model: dict[str, dict[str, Any]], hexid: str) -> bool:
    return any(
        ptr is not None and ptr[0] == hexid
        for obj in model.values()
        for ptr in obj["ptrs"].values()
    )


def _one_transaction(
    store: Store,
    model: dict[str, dict[str, Any]],
    me: int,
    children: int,
    rng: random.Random,
    seq: int,
) -> dict[str, Any]:
    """Run one random transaction up to (not including) commit; its open tx and intent."""
    tx = store.transaction()
    try:
        return {"tx": tx, "intent": _fill(tx, model, me, children, rng, seq)}
    except BaseException:
        tx.abort()
        raise


def _fill(
    tx: Transaction,
    model: dict[str, dict[str, Any]],
    me: int,
    children: int,
    rng: random.Random,
    seq: int,
) -> dict[str, Any]:
    writable = sorted(h for h, o in model.items() if o["owner"] in (-1, me))
    own = [h for h in writable if model[h]["owner"] == me]
    chosen = rng.sample(writable, rng.randint(1, min(4, len(writable))))
    effects: dict[str, dict[str, Any]] = {}

    def eff(hexid: str, new: bool = False) -> dict[str, Any]:
        return effects.setdefault(
            hexid, {"new": new, "ranges": [], "fotents": [], "ptrs": [], "data_len": 0, "fot": 0}
        )

    def my_slots(hexid: str, pointer: bool) -> list[tuple[int, int, int]]:
        obj = model.get(hexid) or fresh_object(me)
        return [
            (i, off, size)
            for i, (off, size, is_ptr) in enumerate(SLOTS)
            if is_ptr == pointer and slot_owner(obj, i, children) == me
        ]

    def write_slots(hexid: str, count: int) -> None:
        oid = ObjectId.parse(hexid)
        slots = my_slots(hexid, pointer=False)
        for _, off, size in rng.sample(slots, min(count, len(slots))):
            buf = bytearray(rng.randbytes(size))
            tx.write(oid, off, buf)
            if rng.random() < 0.3 and size > 2:  # overwrite part of it again
                lo = rng.randrange(size - 1)
                hi = rng.randrange(lo + 1, size + 1)
                part = rng.randbytes(hi - lo)
                tx.write(oid, off + lo, part)
                buf[lo:hi] = part
            if tx.read(oid, off, size) != buf:
                raise AssertionError("a transaction does not read its own writes")
            eff(hexid)["ranges"].append([off, size, digest(buf)])

    def set_pointer(src: str, target: str | None, offset: int) -> None:
        slots = my_slots(src, pointer=True)
        if not slots:
            return
        slot, at, _ = rng.choice(slots)
        oid = ObjectId.parse(src)
        before = tx.header(oid).fot_count
        word = tx.write_pointer(oid, at, None if target is None else ObjectId.parse(target), offset)
        after = tx.header(oid).fot_count
        e = eff(src)
        e["ranges"].append([at, 8, digest(struct.pack("<Q", word))])
        e["ptrs"].append([slot, target, offset])
        if after > before:
            assert target is not None and after == before + 1
            e["fotents"].append([after, target])

    for hexid in chosen:
        write_slots(hexid, rng.randint(1, 3))
    if rng.random() < 0.35:  # allocate and fill a new chunk
        hexid = rng.choice(chosen)
        oid = ObjectId.parse(hexid)
        size = rng.randint(1, 3000)
        if tx.header(oid).free_bytes > size + 4096:
            data = rng.randbytes(size)
            at = tx.append(oid, data, align=rng.choice((1, 8, 64)))
            eff(hexid)["ranges"].append([at, size, digest(data)])
    roll = rng.random()
    if roll < 0.2 and len(own) < MAX_OWN_OBJECTS:  # a new object, linked from a chosen one
        new = tx.create(OBJECT_SIZE)
        hexid = new.hex()
        if tx.alloc(new, SLOT_AREA) != DATA_START:
            raise AssertionError("a new object's first allocation is not at DATA_START")
        eff(hexid, new=True)
        write_slots(hexid, rng.randint(0, 3))
        set_pointer(rng.choice(chosen), hexid, rng.choice(SLOTS)[0])
    elif roll < 0.45:  # point at an existing object (reuses an FOT entry when it can)
        targets = [h for h in writable if model[h]["owner"] == -1 or h in own]
        set_pointer(rng.choice(chosen), rng.choice(targets), rng.choice(SLOTS)[0])
    elif roll < 0.5:
        set_pointer(rng.choice(chosen), None, 0)
    deleted: list[str] = []
    if rng.random() < 0.1:
        pointed_now = {t for e in effects.values() for _, t, _ in e["ptrs"] if t is not None}
        free = [
            h
            for h in own
            if h not in effects and h not in pointed_now and not _referenced(model, h)
        ]
        if free:
            victim = rng.choice(free)
            tx.delete(ObjectId.parse(victim))
            deleted.append(victim)
    for hexid, e in effects.items():
        header = tx.header(ObjectId.parse(hexid))
        e["data_len"] = header.data_len
        e["fot"] = header.fot_count
    return {"t": "i", "n": seq, "c": me, "objs": effects, "deleted": deleted}


def crash(args: dict[str, Any]) -> None:
    me, children = args["child"], args["children"]
    model: dict[str, dict[str, Any]] = json.loads(Path(args["state"]).read_text())
    rng = random.Random(args["seed"])
    journal = _Journal(args["journal"])
    store = Store.open(
        args["store"],
        checkpoint_bytes=args["checkpoint_bytes"],
        durable=args["durable"],
        lock_timeout=0.05,
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    seq = 0
    while True:  # until killed
        seq += 1
        try:
            pending = _one_transaction(store, model, me, children, rng, seq)
        except TransactionConflict:
            continue  # the failed transaction released its locks; try another
        tx, intent = pending["tx"], pending["intent"]
        journal.line(intent)
        tx.commit()
        journal.line({"t": "d", "n": seq})
        apply_effects(model, intent)


def recover(args: dict[str, Any]) -> None:
    sys.stdout.write("opening\n")
    sys.stdout.flush()
    Store.open(args["store"]).close()


# -- concurrency modes ------------------------------------------------------------


def _retry(store: Store, body: Any, backoff: random.Random) -> int:
    """Run ``body(tx)`` in a transaction until it commits; the number of conflicts."""
    conflicts = 0
    while True:
        try:
            with store.transaction() as tx:
                body(tx)
            return conflicts
        except TransactionConflict:
            conflicts += 1
            time.sleep(backoff.uniform(0, 0.002 * min(conflicts, 10)))


def counter(args: dict[str, Any]) -> None:
    """Increment two random counters per transaction; print how often each was bumped."""
    rng = random.Random(args["seed"])
    oids = [ObjectId.parse(h) for h in args["objects"]]
    per_object = args["counters"]
    done: dict[str, int] = {}
    conflicts = 0
    with Store.open(
        args["store"], checkpoint_bytes=args["checkpoint_bytes"], lock_timeout=0.1
    ) as store:
        for _ in range(args["increments"]):
            picks = [(rng.randrange(len(oids)), rng.randrange(per_object)) for _ in range(2)]
            if picks[0] == picks[1]:
                picks.pop()

            def bump(tx: Any, picks: list[tuple[int, int]] = picks) -> None:
                for o, k in picks:
                    at = DATA_START + 8 * k
                    tx.write_u64(oids[o], at, tx.read_u64(oids[o], at) + 1)

            conflicts += _retry(store, bump, rng)
            for o, k in picks:
                done[f"{o}:{k}"] = done.get(f"{o}:{k}", 0) + 1
    print(json.dumps({"done": done, "conflicts": conflicts}))


def transfer(args: dict[str, Any]) -> None:
    rng = random.Random(args["seed"])
    accounts = [(ObjectId.parse(h), DATA_START + 8 * k) for h, k in args["accounts"]]
    conflicts = 0
    with Store.open(args["store"], lock_timeout=0.1) as store:
        for _ in range(args["transfers"]):
            a, b = rng.sample(accounts, 2)
            amount = rng.randint(1, 50)

            def move(tx: Any, a: Any = a, b: Any = b, amount: int = amount) -> None:
                have = tx.read_u64(*a)
                if have >= amount:
                    tx.write_u64(*a, have - amount)
                    tx.write_u64(*b, tx.read_u64(*b) + amount)

            conflicts += _retry(store, move, rng)
    print(json.dumps({"conflicts": conflicts}))


def reader(args: dict[str, Any]) -> None:
    """Answer ``check`` with the value seen through a view taken once, before any commit."""
    with Store.open(args["store"]) as store:
        oid = ObjectId.parse(args["object"])
        view = store.read(oid, DATA_START, 8)  # taken once, read again after every commit
        if isinstance(view.obj, bytes | bytearray) or not view.readonly:
            raise AssertionError(f"store.read gave a copy, not a view of the mapping: {view.obj}")
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[0] == "check":
                value = struct.unpack("<Q", view)[0]
                print(f"{value} {store.header(oid).version}", flush=True)
            elif words[0] == "new":  # an object created after this process opened the store
                print(bytes(store.read(ObjectId.parse(words[1]), DATA_START, 8)).hex(), flush=True)
            else:
                return


def lockpair(args: dict[str, Any]) -> None:
    """Lock B, wait for the parent to lock A, then lock A: a deadlock the timeout must break."""
    a, b = ObjectId.parse(args["a"]), ObjectId.parse(args["b"])
    rng = random.Random(args["seed"])
    conflicts = 0
    with Store.open(args["store"], lock_timeout=args["lock_timeout"]) as store:
        first = True
        while True:
            tx = store.transaction()
            try:
                tx.write_u64(b, DATA_START, tx.read_u64(b, DATA_START) + 1)
                if first:
                    print("locked", flush=True)
                    sys.stdin.readline()  # the parent holds A now
                    first = False
                tx.write_u64(a, DATA_START, tx.read_u64(a, DATA_START) + 1)
                tx.commit()
                break
            except TransactionConflict:
                tx.abort()
                conflicts += 1
                time.sleep(rng.uniform(0, 0.05))
    print(json.dumps({"conflicts": conflicts}), flush=True)


MODES = {
    "crash": crash,
    "recover": recover,
    "counter": counter,
    "transfer": transfer,
    "reader": reader,
    "lockpair": lockpair,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))
