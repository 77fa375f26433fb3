"""Confining a code worker at the OS level (docs/SECURITY.md §11), with what the
kernel offers, then checking that it holds.

A worker calls ``confine`` once, before it runs anything a caller sent. What it
does depends on who the node runs as:

- **root**: a network namespace of its own (``unshare(CLONE_NEWNET)``: no
  interface but a loopback that is down), then an unprivileged uid and gid of its
  own with no supplementary groups;
- **unprivileged**: a user and network namespace when the kernel lets an
  unprivileged process make them (best effort);

and then, in both cases, where the kernel has them: ``no_new_privs``, not
dumpable, **Landlock** (the file system read-only beneath the Python installation
and the system's program folders, nothing else: no store, no keys; no TCP; on
ABI 6 no signals to and no abstract sockets of processes outside the sandbox;
no ptrace of them on any ABI) and a **seccomp** filter that refuses ``socket(2)``
(so no network at all, whatever the namespace), io_uring, bpf, perf events,
userfaultfd, the kernel keyring and ptrace.

Then it **checks**: every path it must not read (the node's store, keys and data
folders) must refuse to open, a TCP connection to the node's own HTTP port must
fail, and a root node's worker must not be uid 0. A failed check is refused
(``IsolationError``, the worker does not start) unless the node's admin opted out
(``allow_unisolated``); then the report lists what does not hold.

Linux only; everything is reached through ``ctypes`` (Python 3.11 has no
``os.unshare``). Nothing here is imported by the node itself, only by workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import resource
import socket
import struct
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtwz.errors import CodeError

__all__ = [
    "Confinement",
    "IsolationError",
    "Report",
    "confine",
    "landlock_abi",
    "set_run_limits",
]

# <sched.h>, <linux/prctl.h>
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# Landlock (<linux/landlock.h>); the system calls are numbered alike on every arch
_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_ADD_RULE = 445
_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute ... make_sym
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_TCP = 0b11  # bind, connect (ABI 4)
_SCOPE_ALL = 0b11  # abstract unix sockets, signals (ABI 6)
_READ_ONLY = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR

# seccomp: (audit arch, syscalls refused) per machine
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000
_REFUSED_CALLS = {
    # socket, ptrace, process_vm_readv/writev, bpf, perf_event_open, userfaultfd,
    # keyctl, add_key, request_key, io_uring_setup/enter/register
    "x86_64": (0xC000003E, (41, 101, 310, 311, 321, 298, 323, 250, 248, 249, 425, 426, 427)),
    "aarch64": (0xC00000B7, (198, 117, 270, 271, 280, 241, 282, 219, 217, 218, 425, 426, 427)),
}
_SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class IsolationError(CodeError):
    """The worker could not be confined, and the node does not allow unconfined code."""


@dataclass(frozen=True)
class Confinement:
    """What a worker is asked to do to itself."""

    uid: int | None = None  # root: the uid (and gid) to become
    protect: Sequence[str] = ()  # paths that must refuse to open afterwards
    probe: tuple[str, int] | None = None  # the node's HTTP address: must be unreachable
    allow_unisolated: bool = False  # run even if a check fails (the admin said so)
    parent: int | None = None  # the node's PID: signals to it should be refused


@dataclass
class Report:
    """What was done, and which checks failed (``unisolated``: none must, normally)."""

    mode: str  # "root" or "unprivileged"
    uid: int = -1
    netns: bool = False
    userns: bool = False
    landlock_abi: int = 0
    seccomp: bool = False
    signals_scoped: bool = False
    unisolated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "uid": self.uid,
            "netns": self.netns,
            "userns": self.userns,
            "landlock_abi": self.landlock_abi,
            "seccomp": self.seccomp,
            "signals_scoped": self.signals_scoped,
            "unisolated": list(self.unisolated),
            "notes": list(self.notes),
        }


# -- the system calls -------------------------------------------------------------------


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.restype = ctypes.c_int
        libc.unshare.restype = ctypes.c_int
    except (OSError, AttributeError):  # not Linux with a C library we can call
        return None
    return libc


_libc = _load_libc()


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _prctl(option: int, arg: int | ctypes.c_void_p = 0) -> None:
    if _libc is None:
        raise OSError(errno.ENOSYS, "prctl: no C library")
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _unshare(flags: int) -> None:
    if _libc is None:
        raise OSError(errno.ENOSYS, "unshare: no C library")
    _check(_libc.unshare(flags), "unshare")


def die_with_parent(parent: int | None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux); exit now if
    the parent is already gone."""
    import signal

    with contextlib.suppress(OSError):
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if parent is not None and os.getppid() != parent:
        os._exit(1)


# -- Landlock ----------------------------------------------------------------------------


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0: none, or refused by seccomp)."""
    if _libc is None:
        return 0
    abi = int(_libc.syscall(_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION))
    return max(abi, 0)


def _landlock(abi: int, readable: Iterable[str]) -> bool:
    """Restrict this process (and what it starts) to reading beneath ``readable``, no
    TCP (ABI 4), no signals out nor abstract sockets (ABI 6). True if signals are scoped."""
    assert _libc is not None
    fs = _FS_ABI1
    if abi >= 2:
        fs |= _FS_REFER
    if abi >= 3:
        fs |= _FS_TRUNCATE
    if abi >= 5:
        fs |= _FS_IOCTL_DEV
    attr = _RulesetAttr(fs, _NET_TCP if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(
        int(_libc.syscall(_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)),
        "landlock_create_ruleset",
    )
    try:
        for path in readable:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # missing here, or not ours to read: then it stays closed
            try:
                is_dir = os.path.isdir(path)
                allowed = _READ_ONLY if is_dir else _FS_READ_FILE | _FS_WRITE_FILE
                rule = _PathBeneath(allowed & fs, fd)
                added = _libc.syscall(
                    _LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0
                )
                _check(int(added), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        _check(int(_libc.syscall(_LANDLOCK_RESTRICT_SELF, ruleset, 0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi >= 6


def readable_roots(protect: Sequence[str]) -> list[str]:
    """The folders a confined worker may read: the Python installation and its path
    (the dtwz package itself rather than a checkout holding it) and the system's
    program and library folders, less any that holds (or lies in) a protected path;
    and a few harmless devices."""
    import dtwz

    guarded = [os.path.realpath(p) for p in protect]
    try:
        candidates: list[str] = [*sysconfig.get_paths().values(), *sys.path]
    except ImportError:  # its configuration no longer readable (a uid changed): the path
        candidates = list(sys.path)
    candidates += [os.path.dirname(os.path.realpath(sys.executable)), sys.prefix, sys.base_prefix]
    candidates += [os.path.dirname(os.path.realpath(dtwz.__file__)), *_SYSTEM_FOLDERS]
    roots: list[str] = []
    for raw in candidates:
        if not raw or not os.path.isabs(raw):
            continue
        path = os.path.realpath(raw)
        if not os.path.exists(path) or path in roots:
            continue
        if any(_within(g, path) or _within(path, g) for g in guarded):
            continue  # e.g. a checkout that also holds data/: its package folder instead
        roots.append(path)
    return roots + [d for d in _DEVICES if os.path.exists(d)]


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# -- seccomp -----------------------------------------------------------------------------


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def _seccomp() -> None:
    """Refuse (EPERM) the system calls of ``_REFUSED_CALLS`` and every call made
    through another ABI (i386, x32) than this process's own."""
    machine = platform.machine()
    if machine not in _REFUSED_CALLS:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, calls = _REFUSED_CALLS[machine]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    deny = _SECCOMP_RET_ERRNO | errno.EPERM
    n = len(calls)
    prog = [_bpf(ld_abs, 0, 0, 4)]  # seccomp_data.arch
    prog.append(_bpf(jeq, 1, 0, arch))  # ours: skip the next
    prog.append(_bpf(ret, 0, 0, deny))
    prog.append(_bpf(ld_abs, 0, 0, 0))  # seccomp_data.nr
    if machine == "x86_64":
        prog.append(_bpf(jge, n + 1, 0, _X32_BIT))  # x32 calls: to the refusal
    for i, nr in enumerate(calls):
        prog.append(_bpf(jeq, n - i, 0, nr))  # to the refusal at the end
    prog.append(_bpf(ret, 0, 0, _SECCOMP_RET_ALLOW))
    prog.append(_bpf(ret, 0, 0, deny))
    raw = b"".join(prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    assert _libc is not None
    _check(
        _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
        "prctl(PR_SET_SECCOMP)",
    )


# -- putting it together -----------------------------------------------------------------


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _user_namespace() -> None:
    """A user namespace mapping only this uid and gid, with a network namespace."""
    uid, gid = os.getuid(), os.getgid()
    _prctl(PR_SET_DUMPABLE, 1)  # a change of uid made /proc/self root's: ours again
    _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


def confine(c: Confinement) -> Report:
    """Confine this process as the module says; ``IsolationError`` if a check fails
    and ``c.allow_unisolated`` is false. Call it before any thread is started."""
    root = os.geteuid() == 0
    report = Report("root" if root else "unprivileged")
    readable = readable_roots(c.protect)  # while the Python installation is readable
    if _libc is None or sys.platform != "linux":
        report.unisolated.append(f"no isolation on {sys.platform}: it needs Linux")
        return _verdict(report, c)
    if root:
        try:
            _unshare(CLONE_NEWNET)
            report.netns = True
        except OSError as exc:
            report.notes.append(f"no network namespace: {exc.strerror}")
        if c.uid is None or c.uid <= 0:
            report.unisolated.append("the node runs as root and no worker uid was given")
        else:
            try:
                _become(c.uid)
            except OSError as exc:
                report.unisolated.append(f"cannot become uid {c.uid}: {exc.strerror}")
    else:
        try:
            _user_namespace()
            report.userns = report.netns = True
        except OSError as exc:
            report.notes.append(f"no user namespace: {exc.strerror or exc}")
    report.uid = os.getuid()
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_DUMPABLE, 0)
    except OSError as exc:
        report.notes.append(f"prctl: {exc.strerror}")
    abi = landlock_abi()
    if abi:
        try:
            report.signals_scoped = _landlock(abi, readable)
            report.landlock_abi = abi
        except OSError as exc:
            report.notes.append(f"Landlock ABI {abi} did not apply: {exc.strerror or exc}")
    else:
        report.notes.append("no Landlock in this kernel (or refused by a seccomp profile)")
    try:
        _seccomp()
        report.seccomp = True
    except OSError as exc:
        report.notes.append(f"no seccomp filter: {exc.strerror or exc}")
    _check_confined(report, c, root)
    return _verdict(report, c)


def _check_confined(report: Report, c: Confinement, root: bool) -> None:
    """What must hold, tried for real."""
    if root and os.getuid() == 0:
        report.unisolated.append("the worker still runs as root")
    for path in c.protect:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        os.close(fd)
        report.unisolated.append(f"the worker can open {path}")
    if c.probe is not None and _reachable(*c.probe):
        report.unisolated.append(f"the worker can reach the network ({c.probe[0]}:{c.probe[1]})")
    if c.parent is not None and not report.signals_scoped and not root:
        try:
            os.kill(c.parent, 0)
            report.notes.append("the worker could signal the node (Landlock ABI < 6)")
        except OSError:
            report.signals_scoped = True


def _reachable(host: str, port: int) -> bool:
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError:
        return False  # no sockets at all
    try:
        sock.settimeout(1.0)
        sock.connect((host, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _verdict(report: Report, c: Confinement) -> Report:
    if report.unisolated and not c.allow_unisolated:
        raise IsolationError(
            "cannot isolate the code worker: "
            + "; ".join(report.unisolated + report.notes)
            + ". Run the node as root, or where the kernel offers Landlock (Linux 5.13+)"
            " and seccomp, or let code run without isolation with --allow-unisolated-code"
            " (docs/SECURITY.md §11)"
        )
    return report


def set_run_limits(cpu_seconds: int, memory: int, processes: int | None) -> None:
    """The limits of one call, set in the process that runs it: CPU seconds (SIGXCPU,
    then SIGKILL a second later), bytes of data (heap and private mappings), no core
    files, and (a worker uid of its own) the number of processes."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    if memory > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if processes is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
