"""The node image and the compose file, checked without starting a cluster: the image
runs as a non-root user with a health check and no build tools; the compose file
is valid for compose and, with the override of ``cluster/scale.sh``, for Swarm."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.compose.cluster import COMPOSE_FILE, REPO, SCALE_SCRIPT, compose_command, run

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]


def test_the_image_runs_as_a_non_root_user_with_a_health_check_and_no_build_tools(
    docker_image: str,
) -> None:
    config = json.loads(run(["docker", "image", "inspect", docker_image]).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert "/ready" in " ".join(config["Healthcheck"]["Test"])
    assert config["Env"] and "DTWZ_BIND_HOST=0.0.0.0" in config["Env"]
    probe = (
        "id -u; for t in gcc cc make pip pip3 apt-get; do command -v $t; done; "
        "python3 -m pip --version 2>/dev/null; python3 -m setuptools 2>/dev/null; "
        "python3 -c 'import dtwz.node.server, zmq, aiohttp; print(\"imports ok\")'"
    )
    done = run(["docker", "run", "--rm", "--entrypoint", "/bin/sh", docker_image, "-c", probe])
    lines = done.stdout.split("\n")
    assert lines[0] != "0", "the node runs as root"
    found = [line for line in lines[1:] if line.strip() and line != "imports ok"]
    # apt-get comes with any Debian base; a node needs no compiler, make or pip
    assert [line for line in found if not line.endswith("/apt-get")] == []
    assert "imports ok" in lines


def test_the_node_starts_in_a_container_with_only_defaults(docker_image: str) -> None:
    """No flag, no variable: the image's defaults make a one-node cluster that is ready."""
    cid = run(["docker", "run", "-d", "--rm", docker_image]).stdout.strip()
    try:
        script = (
            "import time, urllib.request as u\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        print(u.urlopen('http://127.0.0.1:7000/ready', timeout=1).read().decode())\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.2)\n"
        )
        done = run(["docker", "exec", cid, "python3", "-c", script], timeout=60)
        ready = json.loads(done.stdout)
        assert ready["ready"] is True and ready["node_id"] == cid[:12]  # the host name
    finally:
        run(["docker", "rm", "-f", "-v", cid], check=False)


# keys a Swarm stack rejects or cannot honour; the equivalent check where the docker CLI
# has no `docker stack config` looks for them in what compose makes of the files
_NOT_FOR_SWARM = (
    "build:",
    "container_name:",
    "links:",
    "network_mode:",
    "extends:",
    "external_links:",
    "profiles:",
)


def _stack_config(*files: Path) -> str | None:
    """``docker stack config`` of the files (it needs no swarm: it loads and validates
    them as ``docker stack deploy`` does), or None after the equivalent check where
    the docker CLI lacks that command: compose accepts them, every service names its
    image, and none uses a key that a stack rejects or ignores."""
    argv = ["docker", "stack", "config"] + [a for f in files for a in ("-c", str(f))]
    done = run(argv, check=False)
    if done.returncode == 0:
        return done.stdout
    if "unknown command" not in done.stderr and "is not a docker command" not in done.stderr:
        raise AssertionError(f"docker stack config refused the files: {done.stderr}")
    compose = compose_command()
    assert compose is not None
    config = run([*compose, *(a for f in files for a in ("-f", str(f))), "config"]).stdout
    has_image: dict[str, bool] = {}  # service -> names its image (compose's output form)
    section = ""
    for line in config.splitlines():
        if not line.startswith(" "):
            section = line
        elif section == "services:" and re.fullmatch(r"  \S+:", line):
            has_image[line.strip(" :")] = False
        elif section == "services:" and line.startswith("    image:") and has_image:
            has_image[list(has_image)[-1]] = True
    assert has_image and all(has_image.values()), config
    assert not [key for key in _NOT_FOR_SWARM if key in config], config
    return None


def test_the_compose_file_is_a_valid_swarm_stack(docker_engine: None, tmp_path: Path) -> None:
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(run([str(SCALE_SCRIPT), "5"]).stdout)
    stack = _stack_config(COMPOSE_FILE)
    scaled = _stack_config(COMPOSE_FILE, override)
    pinned = _stack_config(COMPOSE_FILE, REPO / "cluster" / "swarm.yml")
    if stack is None or scaled is None or pinned is None:
        return  # checked the equivalent way (this docker CLI has no `stack config`)
    for node in ("n1", "n2", "n3"):
        assert f"  {node}:\n" in stack and f"source: {node}-data" in stack
        assert f"node.labels.dtwz.{node} == yes" in pinned
    assert "replicas: 1" in stack and not [key for key in _NOT_FOR_SWARM if key in stack]
    assert "  n5:\n" in scaled and "source: n5-data" in scaled and "published: 7005" in scaled


def test_the_compose_file_is_valid_for_compose(docker_engine: None, tmp_path: Path) -> None:
    compose = compose_command()
    assert compose is not None
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(run([str(SCALE_SCRIPT), "4"]).stdout)
    for files in ([COMPOSE_FILE], [COMPOSE_FILE, override]):
        argv = [*compose, "-p", "dtwzcheck"] + [a for f in files for a in ("-f", str(f))]
        services = run([*argv, "config", "--services"]).stdout.split()
        assert sorted(services) == [f"n{i}" for i in range(1, len(files) + 3)]
        volumes = run([*argv, "config", "--volumes"]).stdout.split()
        # one store per node, and the keys volume they share
        assert sorted(volumes) == ["keys", *(f"n{i}-data" for i in range(1, len(files) + 3))]


def test_scale_refuses_a_bad_count() -> None:
    for bad in ("3", "x", "100"):
        done = subprocess.run([str(SCALE_SCRIPT), bad], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and "usage" in done.stderr
