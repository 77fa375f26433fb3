"""Object files mapped without holding a descriptor each.

Python's ``mmap`` keeps a duplicate of the descriptor for as long as the mapping
lives, so a process could map only as many objects as it may open files. Here
mmap(2) is called directly through ctypes: the mapping is a ctypes array,
unmapped when the array is collected, which no view of it can outlive (a
memoryview keeps its exporter alive). Where libc cannot be called, Python's
``mmap`` it is, and ``WITHOUT_DESCRIPTORS`` says so. The store maps its objects
read-write; a code worker maps what its node hands it read-only.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import weakref

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    _libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
except (OSError, AttributeError):  # not Linux/glibc
    _libc = None
_MAP_FAILED = ctypes.c_void_p(-1).value

WITHOUT_DESCRIPTORS = _libc is not None


def map_file(fd: int, size: int, *, writable: bool) -> ctypes.Array[ctypes.c_char] | mmap.mmap:
    """A shared mapping of the first ``size`` bytes of ``fd``, read-only unless
    ``writable``; it keeps no descriptor (the caller may close ``fd`` at once)."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    if _libc is None:
        return mmap.mmap(fd, size, prot=prot)
    addr = _libc.mmap(None, size, prot, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mmap: {os.strerror(errno)}")
    array = _mapping_type(size).from_address(addr)
    weakref.finalize(array, _libc.munmap, addr, size)
    return array


@functools.cache
def _mapping_type(size: int) -> type[ctypes.Array[ctypes.c_char]]:
    # a subclass: plain ctypes arrays cannot be weakly referenced (the finalizer)
    return type(f"Mapping{size}", (ctypes.c_char * size,), {})
