"""Shared fixtures: real local clusters of node processes on loopback (plain helpers
are in tests/helpers.py).

Every cluster runs on free ports in a pytest tmp folder and is always stopped in
teardown (SIGTERM, then SIGKILL); a session finalizer kills any node process a
failing test left behind, so no test run leaks processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dtwz.node import launcher as local_cluster
from dtwz.node.launcher import LocalCluster
from dtwz.security.keys import Identity
from tests.helpers import ClusterFactory, running_cluster

if TYPE_CHECKING:
    from dtwz.client.api import Client


@pytest.fixture(scope="module")
def cluster1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 1-node cluster shared by a test module (tests must not stop its node)."""
    with running_cluster(1, tmp_path_factory.mktemp("cluster1")) as started:
        yield started


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node cluster shared by a test module (tests must not stop its nodes)."""
    with running_cluster(3, tmp_path_factory.mktemp("cluster3")) as started:
        yield started


@pytest.fixture(scope="module")
def clients(cluster3: LocalCluster) -> Iterator[dict[str, Client]]:
    """A client of each node of ``cluster3``, by node ID, closed after the module."""
    made = {node_id: cluster3.client(node_id) for node_id in cluster3.node_ids}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """A factory for clusters a test may disrupt (kill, restart); all stopped at teardown."""
    stack = contextlib.ExitStack()

    def make(n: int, *node_args: str, name: str = "cluster") -> LocalCluster:
        return stack.enter_context(running_cluster(n, tmp_path / name, *node_args))

    with stack:
        yield make


@pytest.fixture(scope="session", autouse=True)
def _admin_identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Identity]:
    """One identity for the session: every cluster a test starts makes it its admin
    (``DTWZ_IDENTITY``), so clients and CLI commands sign as admin wherever they go."""
    path = tmp_path_factory.mktemp("identity") / "admin.id"
    admin = Identity.generate("test admin")
    admin.save(path)
    before = os.environ.get("DTWZ_IDENTITY")
    os.environ["DTWZ_IDENTITY"] = str(path)
    yield admin
    if before is None:
        os.environ.pop("DTWZ_IDENTITY", None)
    else:
        os.environ["DTWZ_IDENTITY"] = before


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_nodes() -> Iterator[None]:
    yield
    for proc in list(local_cluster._children.values()):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
