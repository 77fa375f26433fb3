"""What every benchmark's command line shares: options, scratch folders, the file system.

Scratch folders are made under ``--dir`` (by default the system's temporary folder)
and removed afterwards, even on error. Durability figures only mean something on
a real disk, so the file system type is part of the record and a RAM-backed one
gets a warning.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="scaled down: a smoke run")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions per figure")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where scratch stores go; use the disk being measured (default: %(default)s)",
    )
    return p


def check_dir(base: Path) -> str:
    """The file system type under ``base`` (warns if it is RAM-backed)."""
    if not base.is_dir():
        sys.exit(f"--dir {base} is not a folder")
    fstype = filesystem_type(base)
    if fstype in _MEMORY_FILESYSTEMS:
        print(f"warning: {base} is on {fstype}: fsync costs nothing there", file=sys.stderr)
    return fstype


@contextlib.contextmanager
def scratch_dir(base: Path, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"dtwz-bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def filesystem_type(path: Path) -> str:
    """The type of the file system mounted deepest above ``path`` (Linux)."""
    target = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1]
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:
        pass
    return fstype
