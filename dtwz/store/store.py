"""The node-local persistent object store.

Theory of operation
-------------------
Objects are sparse files under ``objects/xx/<id>``, mapped shared into every
process that opens the store, so reads are zero-copy memoryviews.

Writes happen only in transactions (``dtwz.store.transaction``). A transaction
locks each object it writes (two-phase locking), buffers its writes, and commits
in three steps while holding the checkpoint lock shared:

1. **append** its redo record to ``wal.log`` (one append at a time; ``log_end`` in
   the control file says where the intact log ends, so a torn record left by a
   process killed mid-append is cut off by the next appender);
2. **make it durable** by group commit: after appending, a committer notes how many
   log fsyncs had *started*; if one that started later has *completed* by the time
   it holds the sync lock, its record is already durable and it skips the fsync.
   Concurrent committers, threads or processes, thus share fsyncs;
3. **apply** the writes to the mapped objects. Object locks are held from before
   the append until after the apply, so transactions that touch a common object
   apply in log order.

Because a redo record is durable before any of its bytes reach an object (no
"steal"), a crash at any instant leaves each object as of some prefix of the log
plus nothing of later records. **Checkpoint/recovery** (at open, and when the log
grows past ``checkpoint_bytes``) takes the checkpoint lock exclusively, replays
every intact record (idempotent), fsyncs the touched objects and truncates the log.
Opening therefore costs time in proportion to the log, not to the number of objects.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import json
import mmap
import os
import resource
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from dtwz.errors import CorruptObject, FormatError, ObjectNotFound, StoreError
from dtwz.format import views
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, ObjectHeader
from dtwz.store.locks import (
    APPEND_BYTE,
    CHECKPOINT_BYTE,
    SYNC_BYTE,
    ObjectLocks,
    ProcessByte,
    ProcessMutex,
    ProcessSharedLock,
)
from dtwz.store.mapping import WITHOUT_DESCRIPTORS, map_file
from dtwz.store.objects import NameResolver, StoredObject
from dtwz.store.redo import CreateOp, DeleteOp, RedoOp, WriteOp, decode_log, encode_record
from dtwz.store.transaction import Transaction

STORE_FORMAT = 1
# a store is its node's alone: objects, the redo log and the control files hold data
# other local users may have no right to (docs/SECURITY.md §9)
FILE_MODE = 0o600
FOLDER_MODE = 0o700
_CTL_MAGIC = b"DTWZCTL1"
_CTL_SIZE = 4096
_LOG_END = 16  # u64: end of the intact log
_FSYNC_STARTED = 24  # u64: log fsyncs begun
_FSYNC_DONE = 32  # u64: log fsyncs completed
_SALT = 40  # u64: random, fixed at init; in every redo record
_U64 = struct.Struct("<Q")
# objects mapped at once per process: each holds a descriptor (Python's mmap keeps a
# duplicate) and a VMA (Linux allows 65,530 by default); a walk or a traversal of a
# structure larger than this maps objects again and again
_MAX_OPEN_MAPPINGS = 32768
_OPEN_STORES: weakref.WeakSet[Store] = weakref.WeakSet()
L = TypeVar("L", bound=views.Layout)


class Store:
    """A store folder opened by this process. Safe to share between threads; any
    number of processes may open the same folder at once."""

    def __init__(
        self,
        path: Path,
        *,
        durable: bool = True,
        checkpoint_bytes: int = 64 << 20,
        lock_timeout: float = 5.0,
        name_resolver: NameResolver | None = None,
    ) -> None:
        self.path = path
        self.durable = durable
        self.checkpoint_bytes = checkpoint_bytes
        self.name_resolver = name_resolver
        # Where ``get`` finds an object this store does not hold (None: nowhere, so
        # ObjectNotFound); a worker running code next to the store sets it to a
        # client's remote get, so pointers out of local objects reach remote ones.
        self.fallback: Callable[[ObjectId], StoredObject] | None = None
        self._objects_dir = path / "objects"
        self._objects_dir_str = str(self._objects_dir)  # paths without pathlib: hot
        self._mappings: dict[bytes, StoredObject] = {}
        self._mappings_guard = threading.Lock()
        # the mappings of all the stores of this process together: each is a VMA
        # (65,530 by default on Linux), and with Python's mmap (no libc) a descriptor
        # too, so then they stay under 3/8 of the open-file limit (objects a cached
        # mapping points to stay mapped through it; the rest: sockets, logs, the WAL)
        limit = _raise_open_file_limit()
        self._max_mappings = (
            _MAX_OPEN_MAPPINGS if WITHOUT_DESCRIPTORS else min(_MAX_OPEN_MAPPINGS, limit * 3 // 8)
        )
        _OPEN_STORES.add(self)
        self._closed = False
        try:
            meta = json.loads((path / "STORE").read_text())
        except FileNotFoundError as exc:
            raise StoreError(
                f"{path} is not a dtwz store (no STORE file); run `dtwz init`"
            ) from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}/STORE is unreadable: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{path} holds an unknown store format {meta!r}")
        self.store_id: str = str(meta.get("store_id", ""))
        try:
            self._ctl_fd = os.open(path / "store.ctl", os.O_RDWR)
            self._log_fd = os.open(path / "wal.log", os.O_RDWR | os.O_CREAT, FILE_MODE)
            _owner_only(path, self._ctl_fd, self._log_fd)
        except OSError as exc:
            raise StoreError(f"cannot open the control files of {path}: {exc}") from exc
        try:
            self._ctl = mmap.mmap(self._ctl_fd, _CTL_SIZE)  # ValueError if the file is short
            if self._ctl[:8] != _CTL_MAGIC:
                self._ctl.close()
                raise StoreError(f"{path}/store.ctl is corrupt (bad magic)")
        except (OSError, ValueError, StoreError) as exc:
            os.close(self._ctl_fd)
            os.close(self._log_fd)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"{path}/store.ctl is corrupt: {exc}") from exc
        self._salt = _U64.unpack_from(self._ctl, _SALT)[0]
        self._checkpoint_lock = ProcessSharedLock(self._ctl_fd, CHECKPOINT_BYTE)
        self._sync_lock = ProcessByte(self._ctl_fd, SYNC_BYTE)
        self._sync_cond = threading.Condition()
        self._sync_leader = False
        self._leader_gathering = False
        self._appending = 0  # threads of this process between commit start and append
        self.commit_delay = 0.0002
        self._append_lock = ProcessMutex(self._ctl_fd, APPEND_BYTE)
        self.object_locks = ObjectLocks(self._ctl_fd, lock_timeout)
        self.stats = {"commits": 0, "fsyncs": 0, "checkpoints": 0, "replayed_records": 0}
        self.checkpoint()  # recovery: redo whatever the log holds

    # -- life cycle ------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], **options: object) -> Store:
        """Create a new, empty store folder (it may exist but must not hold a store)."""
        root = Path(path)
        if (root / "STORE").exists():
            raise StoreError(f"{root} already holds a dtwz store")
        objects = root / "objects"
        root.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        os.chmod(root, FOLDER_MODE)  # it may have been there: the node's user only
        objects.mkdir(FOLDER_MODE, exist_ok=True)
        for prefix in range(256):
            (objects / f"{prefix:02x}").mkdir(FOLDER_MODE, exist_ok=True)
        ctl = bytearray(_CTL_SIZE)
        ctl[:8] = _CTL_MAGIC
        ctl[_SALT : _SALT + 8] = os.urandom(8)
        _write_durably(root / "store.ctl", bytes(ctl))
        _write_durably(root / "wal.log", b"")
        meta = {"format": STORE_FORMAT, "store_id": os.urandom(16).hex()}
        _write_durably(root / "STORE", json.dumps(meta).encode() + b"\n")
        return cls(root, **options)  # type: ignore[arg-type]

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, create: bool = False, **options: object
    ) -> Store:
        root = Path(path)
        if create and not (root / "STORE").exists():
            return cls.init(root, **options)
        return cls(root, **options)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mappings.clear()
        _OPEN_STORES.discard(self)
        self._ctl.close()
        os.close(self._ctl_fd)
        os.close(self._log_fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects ---------------------------------------------------------------

    def object_path(self, oid: bytes) -> Path:
        hexid = oid.hex()
        return self._objects_dir / hexid[:2] / hexid

    def get(self, oid: ObjectId) -> StoredObject:
        """The mapped object with this ID (``ObjectNotFound``, ``CorruptObject``); an
        object the store does not hold comes from ``fallback`` when one is set."""
        obj = self._mappings.get(oid)
        if obj is not None:
            return obj
        fallback = self.fallback
        if fallback is None:
            return self._map_object(oid)
        try:
            return self._map_object(oid)
        except ObjectNotFound:
            pass  # outside the handler: the fallback's own errors stand alone
        return fallback(oid)

    def _map_object(self, oid: ObjectId) -> StoredObject:
        hexid = oid.hex()
        path = f"{self._objects_dir_str}/{hexid[:2]}/{hexid}"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {oid.hex()} in store {self.path}") from exc
        except OSError as exc:  # a folder in its place, no permission, ...
            raise StoreError(f"cannot open object {oid.hex()}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_RECORD_SIZE:
                raise CorruptObject(f"object {oid.hex()} is truncated ({size} bytes)")
            header = ObjectHeader.decode(os.pread(fd, HEADER_RECORD_SIZE, 0))
            if header.object_id != oid:
                raise CorruptObject(f"file {hexid} holds object {header.object_id.hex()}")
            if size != header.max_size:
                raise CorruptObject(
                    f"object {oid.hex()} is {size} bytes on disk, its header says {header.max_size}"
                )
            mapping = map_file(fd, size, writable=True)
        except CorruptObject as exc:
            raise CorruptObject(f"{exc} ({path})") from exc
        finally:
            os.close(fd)
        obj = StoredObject(self, ObjectId(oid), mapping)
        self._make_room()
        with self._mappings_guard:
            cached = self._mappings.get(oid)
            if cached is not None:
                return cached
            self._mappings[oid] = obj
        return obj

    def _make_room(self) -> None:
        """Drop the oldest mapping of the fullest store of this process when the
        process is at its budget (views a caller still holds keep theirs alive)."""
        stores = list(_OPEN_STORES)
        if sum(len(s._mappings) for s in stores) < self._max_mappings:
            return
        fullest = max(stores, key=lambda s: len(s._mappings))
        with fullest._mappings_guard:
            if fullest._mappings:
                oldest = fullest._mappings.pop(next(iter(fullest._mappings)))
                oldest.forget_targets()  # else what it points to stays mapped through it

    def metadata(self, oid: ObjectId, head: int = 0) -> tuple[ObjectHeader, bytes, bytes]:
        """An object's header, its FOT bytes and the first ``head`` bytes of its data
        (what a walk needs): from its mapping when it is mapped, else read from the
        file without mapping it, so that a walk over many objects does not push the
        objects in use out of the mapping cache. ``ObjectNotFound`` if absent."""
        obj = self._mappings.get(oid)
        if obj is not None:
            header = obj.header()
            return (
                header,
                bytes(obj.view[header.fot_start : header.max_size]),
                bytes(obj.view[DATA_START : DATA_START + head]),
            )
        hexid = oid.hex()
        path = f"{self._objects_dir_str}/{hexid[:2]}/{hexid}"
        for _ in range(3):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError as exc:
                raise ObjectNotFound(f"no object {hexid} in store {self.path}") from exc
            except OSError as exc:
                raise StoreError(f"cannot open object {hexid}: {exc}") from exc
            try:
                try:
                    header = ObjectHeader.decode(
                        os.pread(fd, HEADER_RECORD_SIZE, 0), check_id=False
                    )
                except CorruptObject:
                    continue  # read while this process applied a commit: read again
                fot = os.pread(fd, header.max_size - header.fot_start, header.fot_start)
                first = os.pread(fd, head, DATA_START) if head else b""
            finally:
                os.close(fd)
            if header.object_id != oid:
                raise CorruptObject(f"file {path} holds object {header.object_id.hex()}")
            return header, fot, first
        raise CorruptObject(f"object {hexid}: header unreadable ({path})")

    def exists(self, oid: ObjectId) -> bool:
        if oid in self._mappings:
            return True
        hexid = oid.hex()
        return os.path.exists(f"{self._objects_dir_str}/{hexid[:2]}/{hexid}")

    def read(self, oid: ObjectId, offset: int, length: int) -> memoryview:
        """Zero-copy, read-only view of committed bytes of an object."""
        obj = self._mappings.get(oid) or self.get(oid)
        return obj.read(offset, length)

    def header(self, oid: ObjectId) -> ObjectHeader:
        return self.get(oid).header()

    def object_ids(self) -> Iterator[ObjectId]:
        """Every object in the store (reads the folder, not the objects)."""
        for prefix in sorted(os.listdir(self._objects_dir)):
            for name in sorted(os.listdir(self._objects_dir / prefix)):
                if len(name) == 32:
                    try:
                        yield ObjectId.parse(name)
                    except FormatError:  # not an object file (FormatError is no ValueError)
                        continue

    def view(self, layout: type[L], oid: ObjectId, offset: int = DATA_START) -> L:
        """A read-only, zero-copy typed view at ``oid + offset``."""
        return views.view(self, layout, oid, offset)  # type: ignore[no-any-return]

    def transaction(self) -> Transaction:
        return Transaction(self)

    # -- commit path -----------------------------------------------------------

    def commit(self, ops: list[RedoOp]) -> None:
        """Append, make durable and apply one transaction's redo record.

        The caller holds the object locks of every object the ops write.
        """
        self._checkpoint_lock.acquire_shared()
        try:
            if self.durable:
                with self._sync_cond:
                    self._appending += 1
                try:
                    self._append(ops)
                finally:
                    with self._sync_cond:
                        self._appending -= 1
                        if self._leader_gathering and not self._appending:
                            self._sync_cond.notify_all()
                self._group_sync()
            else:
                self._append(ops)
            self._apply(ops)
            self.stats["commits"] += 1
            log_end = _U64.unpack_from(self._ctl, _LOG_END)[0]
        finally:
            self._checkpoint_lock.release_shared()
        if log_end > self.checkpoint_bytes:
            self.checkpoint()

    def _append(self, ops: list[RedoOp]) -> None:
        with self._append_lock:
            # Bytes a dead appender left past log_end are simply overwritten: records
            # carry their own offset, so what remains of them never parses as one.
            end = _U64.unpack_from(self._ctl, _LOG_END)[0]
            record = encode_record(ops, lsn=end, salt=self._salt)
            os.pwrite(self._log_fd, record, end)
            _U64.pack_into(self._ctl, _LOG_END, end + len(record))

    def _group_sync(self) -> None:
        """Return once the log is durable up to (at least) our append.

        Threads of this process elect one leader at a time; the others sleep until
        its fsync ends and then check whether it covered them. Across processes the
        shared counters tell whether a log fsync that *started after our append* has
        completed, in which case our record is already durable.
        """
        started_before = _U64.unpack_from(self._ctl, _FSYNC_STARTED)[0]
        with self._sync_cond:
            while _U64.unpack_from(self._ctl, _FSYNC_DONE)[0] <= started_before:
                if not self._sync_leader:
                    self._sync_leader = True
                    break
                self._sync_cond.wait()
            else:
                return
            # Commit delay: threads of ours are about to append; one fsync for all
            # of them is cheaper than one each (PostgreSQL's commit_delay, bounded).
            if self._appending:
                self._leader_gathering = True
                self._sync_cond.wait(self.commit_delay)
                self._leader_gathering = False
        try:
            self._sync_across_processes(started_before)
        finally:
            with self._sync_cond:
                self._sync_leader = False
                self._sync_cond.notify_all()

    def _sync_across_processes(self, started_before: int) -> None:
        # One process at a time holds the sync byte exclusively while it fsyncs;
        # the others wait on it *shared*, so they all wake together when it ends
        # (a chain of exclusive hand-offs would wake them one by one).
        while _U64.unpack_from(self._ctl, _FSYNC_DONE)[0] <= started_before:
            if self._sync_lock.try_exclusive():
                try:
                    if _U64.unpack_from(self._ctl, _FSYNC_DONE)[0] > started_before:
                        return  # another process's fsync covered us
                    ticket = _U64.unpack_from(self._ctl, _FSYNC_STARTED)[0] + 1
                    _U64.pack_into(self._ctl, _FSYNC_STARTED, ticket)
                    os.fdatasync(self._log_fd)
                    _U64.pack_into(self._ctl, _FSYNC_DONE, ticket)
                    self.stats["fsyncs"] += 1
                    return
                finally:
                    self._sync_lock.release()
            done_before = _U64.unpack_from(self._ctl, _FSYNC_DONE)[0]
            self._sync_lock.wait_released()
            if _U64.unpack_from(self._ctl, _FSYNC_DONE)[0] == done_before:
                # no fsync ended: we only met other waiters' brief shared holds
                time.sleep(0.00005)

    def _apply(self, ops: list[RedoOp]) -> None:
        fds: dict[bytes, int] = {}  # unmapped objects (new ones, mostly): one open each
        mapped = {m for op in ops if (m := self._mappings.get(op.object_id)) is not None}
        for obj in mapped:
            obj._seq += 1  # odd: being applied
        try:
            for op in ops:
                if isinstance(op, WriteOp):
                    target = self._mappings.get(op.object_id)
                    if target is not None:
                        target._apply(op.offset, op.data)
                        continue
                    fd = fds.get(op.object_id)
                    if fd is None:
                        fd = fds[op.object_id] = os.open(
                            self.object_path(op.object_id), os.O_WRONLY
                        )
                    os.pwrite(fd, op.data, op.offset)
                elif isinstance(op, CreateOp):
                    self._create_file(op.object_id, 1 << op.size_log2)
                else:
                    fd = fds.pop(op.object_id, None)
                    if fd is not None:
                        os.close(fd)
                    self._delete_file(op.object_id)
        finally:
            for fd in fds.values():
                os.close(fd)
            for obj in mapped:
                obj._seq += 1

    def _pwrite(self, oid: ObjectId, offset: int, data: bytes) -> bool:
        try:
            fd = os.open(self.object_path(oid), os.O_WRONLY)
        except FileNotFoundError:
            return False  # deleted later in the log: replay will delete it again
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        return True

    def _create_file(self, oid: ObjectId, size: int) -> None:
        path = self.object_path(oid)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            # replaying a create that already happened, or one whose process was
            # killed between the open and the ftruncate: finish that one
            fd = os.open(path, os.O_WRONLY)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
            return
        try:
            os.ftruncate(fd, size)  # sparse: only written pages take space
        finally:
            os.close(fd)

    def _delete_file(self, oid: ObjectId) -> None:
        with self._mappings_guard:
            gone = self._mappings.pop(oid, None)
        if gone is not None:
            gone.mark_deleted()  # pointers that cached it must look it up again
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.object_path(oid))

    # -- checkpoint and recovery ----------------------------------------------

    def checkpoint(self) -> int:
        """Redo the log into the objects, make them durable, empty the log.

        Returns the number of records replayed. Safe with other processes using
        the store: it waits until no transaction of any process is committing.
        """
        self._checkpoint_lock.acquire_exclusive()
        try:
            log_end = _U64.unpack_from(self._ctl, _LOG_END)[0]
            size = os.fstat(self._log_fd).st_size
            if size == 0 and log_end == 0:
                return 0
            # after a crash log_end may trail a complete record (killed before it
            # moved log_end): redo every intact record the file holds
            data = os.pread(self._log_fd, size, 0) if size else b""
            records, _ = decode_log(data, salt=self._salt)
            touched = self._redo(records)
            self._sync_objects(touched)
            # log_end first: a process killed between the two must not leave a stale
            # log_end over an empty file, or the next append would land past a hole
            # where recovery, reading from offset 0, never finds it
            _U64.pack_into(self._ctl, _LOG_END, 0)
            os.ftruncate(self._log_fd, 0)
            os.fsync(self._log_fd)
            self.stats["checkpoints"] += 1
            self.stats["replayed_records"] += len(records)
            return len(records)
        finally:
            self._checkpoint_lock.release_exclusive()

    def _redo(self, records: list[list[RedoOp]]) -> set[bytes]:
        """Redo the records so that every byte is written once, with its newest value.

        Checkpoints take no object locks, so transactions of other threads and
        processes keep reading objects meanwhile. Replaying record after record
        would put older bytes back for a moment (a lost update, or a torn header,
        for whoever reads then). The newest bytes of each range are what the object
        already holds unless a crash cut its apply short, so this rewrites nothing
        that anyone can see change. Log order is apply order for any one object
        (its lock is held from before the append until after the apply).
        """
        fate: dict[bytes, CreateOp | DeleteOp] = {}  # the last create or delete of each
        writes: list[WriteOp] = []
        for ops in records:
            for op in ops:
                if isinstance(op, WriteOp):
                    writes.append(op)
                else:
                    fate[op.object_id] = op
        for oid, op in fate.items():
            if isinstance(op, DeleteOp):
                self._delete_file(ObjectId(oid))
            else:
                self._create_file(ObjectId(oid), 1 << op.size_log2)
        covered: dict[bytes, list[tuple[int, int]]] = {}
        for op in reversed(writes):
            if isinstance(fate.get(op.object_id), DeleteOp):
                continue
            spans = covered.setdefault(op.object_id, [])
            start, end = op.offset, op.offset + len(op.data)
            for lo, hi in _uncovered(spans, start, end):
                self._pwrite(op.object_id, lo, op.data[lo - start : hi - start])
        return {op.object_id for op in writes} | set(fate)

    def _sync_objects(self, oids: set[bytes]) -> None:
        """Make the objects' files (and their folder entries) durable.

        Past a few dozen files one ``syncfs`` of the store's file system is far
        cheaper than an fsync per file (recovery touches thousands of objects)."""
        if len(oids) > _SYNCFS_FROM and _syncfs(self._ctl_fd):
            return
        dirs: set[Path] = set()
        for oid in oids:
            path = self.object_path(oid)
            dirs.add(path.parent)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for folder in dirs:  # new and removed files: make the directory entries durable
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


_SYNCFS_FROM = 32
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.syncfs.argtypes = [ctypes.c_int]
except (OSError, AttributeError):  # not Linux/glibc: fall back to fsync per file
    _libc = None


def _syncfs(fd: int) -> bool:
    """syncfs(2) of the file system holding ``fd``; False where it is not available."""
    return _libc is not None and _libc.syncfs(fd) == 0


def _raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (every mapping holds a
    descriptor: Python's mmap keeps a duplicate); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or hard > soft):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _uncovered(spans: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` outside ``spans`` (sorted, disjoint); adds it to them."""
    i = bisect.bisect_right(spans, (start, start))
    if i and spans[i - 1][1] >= start:
        i -= 1
    gaps: list[tuple[int, int]] = []
    at, j = start, i
    lo, hi = start, end
    while j < len(spans) and spans[j][0] <= end:
        s_lo, s_hi = spans[j]
        if s_lo > at:
            gaps.append((at, s_lo))
        at = max(at, s_hi)
        lo, hi = min(lo, s_lo), max(hi, s_hi)
        j += 1
    if at < end:
        gaps.append((at, end))
    spans[i:j] = [(lo, hi)]
    return gaps


def _owner_only(root: Path, *fds: int) -> None:
    """Make an opened store readable by its owner only: the folder 0700, its control
    files and log 0600 (a store made before they were is tightened at open; its
    object files stay as they are, out of reach behind the folder). A store of
    another user is left alone: that user's choice, and not ours to change."""
    try:
        if os.stat(root).st_uid != os.geteuid():
            return
        os.chmod(root, FOLDER_MODE)
        for fd in fds:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        pass  # a read-only file system, say: the modes it was made with stand


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a leftover .tmp keeps its mode through O_CREAT
    with open(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
