"""Fixtures of the compose tests: a Docker engine (or a clear skip), the image for the
current sources, and compose clusters that are always removed with their volumes.

Without a reachable engine and compose, every test here is skipped with the reason;
with ``DTWZ_REQUIRE_DOCKER=1`` (set by ``.ci/run``, whose machine has an engine) that
is a failure instead, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.compose.cluster import ComposeCluster, build_image, docker_problem, sweep_orphans

REQUIRE_DOCKER = "DTWZ_REQUIRE_DOCKER"

ComposeFactory = Callable[..., ComposeCluster]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = docker_problem()
    if problem is None:
        sweep_orphans()  # projects of earlier runs that were killed before their teardown
        return
    if os.environ.get(REQUIRE_DOCKER) == "1":
        pytest.fail(f"{REQUIRE_DOCKER}=1 but {problem}", pytrace=False)
    pytest.skip(
        f"needs a Docker engine and compose ({problem}); "
        f"set {REQUIRE_DOCKER}=1 to make this a failure"
    )


@pytest.fixture(scope="session")
def docker_image(docker_engine: None) -> str:
    """``dtwz:src-<hash>`` for the current sources (cluster/build.sh; cached by hash)."""
    return build_image()


def _started(cluster: ComposeCluster, clusters: list[ComposeCluster]) -> ComposeCluster:
    clusters.append(cluster)  # before up(): a failed start is removed as well
    cluster.up()
    return cluster


@pytest.fixture(scope="module")
def compose3(
    docker_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComposeCluster]:
    """One 3-node compose cluster shared by a module; tests leave it healthy."""
    clusters: list[ComposeCluster] = []
    try:
        yield _started(ComposeCluster(docker_image, tmp_path_factory.mktemp("compose3")), clusters)
    finally:
        for cluster in clusters:
            print(cluster.logs())  # shown when a test of the module failed
            cluster.down()


@pytest.fixture
def make_compose(docker_image: str, tmp_path: Path) -> Iterator[ComposeFactory]:
    """Clusters a test may disrupt (kill, disconnect): all removed, volumes too."""
    clusters: list[ComposeCluster] = []

    def make(nodes: int = 3) -> ComposeCluster:
        workdir = tmp_path / f"compose{len(clusters)}"
        workdir.mkdir()
        return _started(ComposeCluster(docker_image, workdir, nodes=nodes), clusters)

    try:
        yield make
    finally:
        for cluster in clusters:
            print(cluster.logs())
            cluster.down()
