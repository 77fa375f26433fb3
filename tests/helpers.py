"""Plain helpers shared by the tests (``from tests.helpers import ...``); the shared
fixtures are in tests/conftest.py.

- ``running_cluster``: a local cluster of node processes, always stopped on exit;
- ``wait_until``: poll a condition, bounded, with a clear message when it never holds;
- ``free_port``: a loopback TCP port nobody listens on;
- ``console_script``: the installed ``dtwz`` command, or the test is skipped.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dtwz.node import launcher as local_cluster
from dtwz.node.launcher import HOST, LocalCluster, free_ports

START_TIMEOUT = 60.0  # generous: CI machines start Python processes slowly

ClusterFactory = Callable[..., LocalCluster]
"""What the ``make_cluster`` fixture gives: ``make(n, *node_args, name=...)``."""


@contextlib.contextmanager
def running_cluster(n: int, data_dir: Path, *node_args: str) -> Iterator[LocalCluster]:
    """A started cluster of ``n`` nodes in ``data_dir``, stopped on exit whatever happens."""
    started = local_cluster.up(n, data_dir, node_args=node_args, timeout=START_TIMEOUT)
    try:
        yield started
    finally:
        started.stop(timeout=10.0)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    every: float = 0.05,
    ignore: tuple[type[Exception], ...] = (),
    diagnose: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` every ``every`` seconds until it is true; the seconds it took.

    An exception of a class in ``ignore`` raised by ``check`` counts as "not yet".
    After ``timeout`` seconds: ``AssertionError`` naming ``what`` (and, with
    ``diagnose``, what it returns)."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except ignore:
            pass
        if time.monotonic() - start > timeout:
            note = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"not within {timeout:g}s: {what}{note}")
        time.sleep(every)


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    return free_ports(1, host)[0]


def console_script() -> str:
    """The ``dtwz`` console script of this environment; skips the test without one."""
    beside = Path(sys.executable).parent / "dtwz"
    found = str(beside) if beside.exists() else shutil.which("dtwz")
    if found is None:
        pytest.skip("the dtwz console script is not installed")
    return found
