"""Locks that hold across threads *and* processes sharing one store.

Each lock pairs an in-process lock (threads) with an open-file-description (OFD)
byte-range lock on the store's control file (processes). OFD locks belong to the
file description, not the process, so closing an unrelated descriptor of the file
never drops them, and a process that dies loses them at once.

Byte ranges of the control file used as locks:
  0          checkpoint lock: shared by committers, exclusive for checkpoint/recovery
  1          sync lock: one log fsync at a time (group commit leader)
  2          append lock: one log append at a time
  2**32 + h  object lock for the object whose ID starts with the 8 bytes h (>> 2)
"""

from __future__ import annotations

import errno
import fcntl
import struct
import threading
import time
import weakref

from dtwz.errors import TransactionConflict
from dtwz.format.ids import ObjectId

CHECKPOINT_BYTE = 0
SYNC_BYTE = 1
APPEND_BYTE = 2
_OBJECT_BASE = 1 << 32

# struct flock on Linux/x86-64 and aarch64: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("hhqqi4x")


def _ofd(fd: int, kind: int, start: int, wait: bool) -> bool:
    """Take (or with F_UNLCK release) an OFD lock on one byte; False if busy and not waiting."""
    arg = _FLOCK.pack(kind, 0, start, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK, arg)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES) and not wait:
            return False
        raise
    return True


class ProcessMutex:
    """An exclusive lock across threads and processes."""

    def __init__(self, fd: int, byte: int) -> None:
        self._fd = fd
        self._byte = byte
        self._local = threading.Lock()

    def __enter__(self) -> ProcessMutex:
        self._local.acquire()
        try:
            _ofd(self._fd, fcntl.F_WRLCK, self._byte, wait=True)
        except BaseException:
            self._local.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _ofd(self._fd, fcntl.F_UNLCK, self._byte, wait=False)
        self._local.release()


class ProcessByte:
    """A bare OFD lock byte, for callers that already serialise their own threads."""

    def __init__(self, fd: int, byte: int) -> None:
        self._fd = fd
        self._byte = byte

    def try_exclusive(self) -> bool:
        return _ofd(self._fd, fcntl.F_WRLCK, self._byte, wait=False)

    def release(self) -> None:
        _ofd(self._fd, fcntl.F_UNLCK, self._byte, wait=False)

    def wait_released(self) -> None:
        """Sleep until no process holds the byte exclusively."""
        _ofd(self._fd, fcntl.F_RDLCK, self._byte, wait=True)
        _ofd(self._fd, fcntl.F_UNLCK, self._byte, wait=False)


class ProcessSharedLock:
    """A readers-writer lock across threads and processes (writers preferred in-process).

    The first reader thread of a process takes the OFD read lock and the last one
    releases it, because all threads share one file description.
    """

    def __init__(self, fd: int, byte: int) -> None:
        self._fd = fd
        self._byte = byte
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_shared(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            if self._readers == 0:
                _ofd(self._fd, fcntl.F_RDLCK, self._byte, wait=True)
            self._readers += 1

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                _ofd(self._fd, fcntl.F_UNLCK, self._byte, wait=False)
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
                self._writer = True
            finally:
                self._writers_waiting -= 1
        try:
            _ofd(self._fd, fcntl.F_WRLCK, self._byte, wait=True)
        except BaseException:
            self.release_exclusive(ofd_held=False)
            raise

    def release_exclusive(self, ofd_held: bool = True) -> None:
        if ofd_held:
            _ofd(self._fd, fcntl.F_UNLCK, self._byte, wait=False)
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Latch:
    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class ObjectLocks:
    """Exclusive per-object locks for transactions (two-phase: held until commit or abort).

    Deadlock rule: a transaction that holds no lock may wait as long as it takes
    (it cannot close a cycle); one that already holds locks waits at most
    ``timeout`` seconds and then gets ``TransactionConflict``, so a cycle always
    breaks and the caller retries.
    """

    def __init__(self, fd: int, timeout: float) -> None:
        self._fd = fd
        self._timeout = timeout
        self._latches: weakref.WeakValueDictionary[bytes, _Latch] = weakref.WeakValueDictionary()
        self._guard = threading.Lock()

    @staticmethod
    def _byte(oid: ObjectId) -> int:
        return _OBJECT_BASE + (int.from_bytes(oid[:8], "little") >> 2)

    def acquire(self, oid: ObjectId, holding_others: bool) -> _Latch:
        with self._guard:
            latch = self._latches.get(oid)
            if latch is None:
                latch = _Latch()
                self._latches[bytes(oid)] = latch
        deadline = time.monotonic() + self._timeout
        if holding_others:
            if not latch.lock.acquire(timeout=self._timeout):
                raise TransactionConflict(f"object {oid.hex()} is locked by another transaction")
        else:
            latch.lock.acquire()
        try:
            byte = self._byte(oid)
            if not holding_others:
                _ofd(self._fd, fcntl.F_WRLCK, byte, wait=True)
                return latch
            pause = 0.0005
            while not _ofd(self._fd, fcntl.F_WRLCK, byte, wait=False):
                if time.monotonic() >= deadline:
                    raise TransactionConflict(
                        f"object {oid.hex()} is locked by another process's transaction"
                    )
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
            return latch
        except BaseException:
            latch.lock.release()
            raise

    def release(self, oid: ObjectId, latch: _Latch) -> None:
        _ofd(self._fd, fcntl.F_UNLCK, self._byte(oid), wait=False)
        latch.lock.release()
