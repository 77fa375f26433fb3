"""A compose project of dtwz node containers, driven as a user drives it.

``ComposeCluster`` runs the repository's ``docker-compose.yml`` (plus, for more than
three nodes, the override that ``cluster/scale.sh`` prints) under a project name of
its own, on free host ports, with the image ``cluster/build.sh`` made for the
current sources. Invariants:

- every docker or compose call is bounded by a timeout, and so is every wait;
- ``down()`` removes containers, network and volumes (``down -v``), then sweeps
  whatever carries the project's label, so nothing outlives a test even when
  compose itself failed half-way;
- a project is named ``dtwzt<pid>x<random>``: ``sweep_orphans`` removes projects
  whose test process is gone (a run killed before its teardown).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtwz.client.api import Client
from dtwz.errors import DtwzError
from dtwz.security.keys import Identity
from tests import helpers
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
BUILD_SCRIPT = REPO / "cluster" / "build.sh"
SCALE_SCRIPT = REPO / "cluster" / "scale.sh"
PROJECT_PREFIX = "dtwzt"
PROJECT_LABEL = "com.docker.compose.project"
NETWORK = "dtwz"  # the network's name in docker-compose.yml
BUILD_TIMEOUT = 900.0  # a first build includes debootstrap: minutes on a slow mirror
CALL_TIMEOUT = 120.0


class DockerError(AssertionError):
    """A docker or compose command failed or did not finish in time."""


def run(
    argv: Sequence[str],
    *,
    timeout: float = CALL_TIMEOUT,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, bounded; ``DockerError`` with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"{' '.join(argv)}: no end within {timeout:g}s") from exc
    except FileNotFoundError as exc:
        raise DockerError(f"{argv[0]}: not found") from exc
    if check and done.returncode != 0:
        raise DockerError(
            f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def compose_command() -> list[str] | None:
    """``DTWZ_COMPOSE`` (e.g. "docker-compose"), else ``docker compose`` (v2) if the
    docker CLI has it, else Debian's ``docker-compose`` (v1); None if neither."""
    if os.environ.get("DTWZ_COMPOSE"):
        return os.environ["DTWZ_COMPOSE"].split()
    if shutil.which("docker"):
        try:
            if run(["docker", "compose", "version"], timeout=20, check=False).returncode == 0:
                return ["docker", "compose"]
        except DockerError:
            pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def docker_problem() -> str | None:
    """Why these tests cannot run here, or None when an engine and compose answer."""
    if shutil.which("docker") is None:
        return "no docker command on the PATH"
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False)
    except DockerError as exc:
        return f"the Docker engine does not answer: {exc}"
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker engine reachable: {(info.stderr or info.stdout).strip()[:300]}"
    if compose_command() is None:
        return "neither `docker compose` nor `docker-compose` is installed"
    return None


def build_image() -> str:
    """The image for the current sources (built unless it exists): its tag."""
    done = run([str(BUILD_SCRIPT), "--tag", ""], timeout=BUILD_TIMEOUT)
    lines = done.stdout.split()
    if not lines or not lines[-1].startswith("dtwz:src-"):
        raise DockerError(f"cluster/build.sh printed no image tag:\n{done.stdout}{done.stderr}")
    return lines[-1]


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    diagnose: Callable[[], str] | None = None,
) -> float:
    """``tests.helpers.wait_until`` paced for containers: a check every 0.2 s, and a
    ``DtwzError`` (a node that does not answer yet) counts as "not yet"."""
    return helpers.wait_until(
        check, timeout, what, every=0.2, ignore=(DtwzError,), diagnose=diagnose
    )


@dataclass
class ComposeCluster:
    image: str
    workdir: Path
    nodes: int = 3
    compose: list[str] = field(default_factory=lambda: compose_command() or ["docker-compose"])
    project: str = field(
        default_factory=lambda: f"{PROJECT_PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
    )
    ports: dict[str, int] = field(default_factory=dict)
    _admin: Identity | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.ports = self.ports or {node: free_port() for node in self.node_ids}
        self.files = [COMPOSE_FILE]
        if self.nodes > 3:
            override = self.workdir / "docker-compose.override.yml"
            override.write_text(run([str(SCALE_SCRIPT), str(self.nodes)]).stdout)
            self.files.append(override)

    @property
    def node_ids(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]

    @property
    def network(self) -> str:
        return f"{self.project}_{NETWORK}"

    def env(self) -> dict[str, str]:
        env = dict(
            os.environ,
            DTWZ_IMAGE=self.image,
            DTWZ_PUBLISH_ADDR="127.0.0.1",
            DTWZ_PUBLIC_HOST="127.0.0.1",
        )
        env.pop("DTWZ_CLUSTER_ID", None)
        env |= {f"DTWZ_{node.upper()}_PORT": str(port) for node, port in self.ports.items()}
        return env

    def run_compose(
        self, *args: str, timeout: float = CALL_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for f in self.files for arg in ("-f", str(f))]
        argv = [*self.compose, "-p", self.project, *files, *args]
        return run(argv, timeout=timeout, check=check, env=self.env())

    # -- life cycle ------------------------------------------------------------------

    def up(self, *services: str, timeout: float = 90.0) -> None:
        """Start the nodes and wait until every one is healthy and sees all alive."""
        self.run_compose("up", "-d", *services, timeout=timeout)
        self.wait_healthy(timeout=timeout)

    def down(self) -> None:
        """Remove everything of the project, volumes too; never raises."""
        with contextlib.suppress(DockerError):
            self.run_compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
        sweep_project(self.project)

    # -- containers --------------------------------------------------------------------

    def container(self, node: str) -> str:
        """The container ID of a node (stopped ones too)."""
        ids = self.run_compose("ps", "-a", "-q", node).stdout.split()
        if len(ids) != 1:
            raise DockerError(f"{node}: expected one container, found {ids}")
        return ids[0]

    def inspect(self, node: str) -> dict[str, Any]:
        doc = json.loads(run(["docker", "inspect", self.container(node)]).stdout)
        return dict(doc[0])

    def health(self, node: str) -> str:
        state = self.inspect(node)["State"]
        return str(state.get("Health", {}).get("Status") or state["Status"])

    def kill(self, node: str) -> None:
        run(["docker", "kill", self.container(node)])

    def start(self, node: str) -> None:
        run(["docker", "start", self.container(node)])

    def disconnect(self, node: str) -> None:
        run(["docker", "network", "disconnect", self.network, self.container(node)])

    def connect(self, node: str) -> None:
        # the alias is the service name peers use: say it, as compose did
        run(["docker", "network", "connect", "--alias", node, self.network, self.container(node)])

    def exec_python(self, node: str, source: str, *, timeout: float = 60.0) -> Any:
        """Run Python inside a node's container; the JSON it prints last."""
        done = run(
            ["docker", "exec", self.container(node), "python3", "-c", source], timeout=timeout
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    def logs(self, tail: int = 40) -> str:
        try:
            done = self.run_compose("logs", "--no-color", "--tail", str(tail), check=False)
        except DockerError as exc:
            return f"(no logs: {exc})"
        return done.stdout + done.stderr

    # -- nodes -------------------------------------------------------------------------

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def admin(self) -> Identity:
        """The cluster's admin identity, which the first node made in the keys volume."""
        if self._admin is None:
            source = (
                "import base64, json; print(json.dumps(base64.b64encode("
                "open('/keys/admin.id', 'rb').read()).decode()))"
            )
            raw = base64.b64decode(self.exec_python(self.node_ids[0], source))
            self._admin = Identity.decode_secret(raw)
        return self._admin

    def client(self, node: str, timeout: float = 5.0) -> Client:
        return Client(self.url(node), timeout=timeout, identity=self.admin())

    def members(self, node: str) -> dict[str, str]:
        """Node ID -> state, as ``node`` sees the cluster."""
        with self.client(node, timeout=3.0) as client:
            doc = client.cluster_status()
        return {str(m["node_id"]): str(m["state"]) for m in doc["members"]}

    def sees(self, node: str, alive: set[str]) -> bool:
        members = self.members(node)
        return {n for n, state in members.items() if state == "alive"} == alive

    def wait_healthy(self, nodes: Sequence[str] | None = None, *, timeout: float = 90.0) -> float:
        """Until each node's container is healthy and it sees exactly ``nodes`` alive."""
        expected = set(nodes or self.node_ids)

        def ready() -> bool:
            return all(self.health(n) == "healthy" and self.sees(n, expected) for n in expected)

        return wait_until(
            ready, timeout, f"{sorted(expected)} healthy and joined", diagnose=self.logs
        )


# -- clean-up ----------------------------------------------------------------------------


def sweep_project(project: str) -> None:
    """Remove containers, volumes and networks labelled with ``project``."""
    label = f"label={PROJECT_LABEL}={project}"
    for kind, remove in (
        ("container", ["docker", "rm", "-f", "-v"]),
        ("volume", ["docker", "volume", "rm", "-f"]),
        ("network", ["docker", "network", "rm"]),
    ):
        listing = ["docker", kind, "ls", "-q", "--filter", label]
        with contextlib.suppress(DockerError):
            ids = run(listing + (["-a"] if kind == "container" else []), check=False).stdout
            if ids.split():
                run([*remove, *ids.split()], check=False)


def sweep_orphans() -> None:
    """Remove the projects of test runs whose process is gone."""
    form = f'{{{{.Label "{PROJECT_LABEL}"}}}}'
    projects: set[str] = set()
    for kind in ("container", "volume", "network"):
        try:
            every = ["-a"] if kind == "container" else []
            projects.update(run(["docker", kind, "ls", "--format", form, *every]).stdout.split())
        except DockerError:
            return
    for project in projects:
        if not project.startswith(PROJECT_PREFIX) or "x" not in project:
            continue
        pid = project[len(PROJECT_PREFIX) :].split("x", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            sweep_project(project)
