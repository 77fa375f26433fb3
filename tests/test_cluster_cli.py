"""The cluster half of the command line: ``dtwz cluster up/status/down`` and
``dtwz node run`` through the installed console script, and ``dtwz remote ...``
against a real 3-node cluster."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dtwz.cli import cli
from dtwz.client.api import Client, identity_from_env
from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster, down, free_ports, up

MISSING_ID = "00" * 16


def _console_script() -> str:
    beside = Path(sys.executable).parent / "dtwz"
    found = str(beside) if beside.exists() else shutil.which("dtwz")
    if found is None:
        pytest.skip("the dtwz console script is not installed")
    return found


def run(*args: str, timeout: float = 120.0, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_console_script(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


# -- dtwz cluster up / status / down ------------------------------------------------------


@pytest.mark.timeout(240)
def test_cluster_up_status_down_through_the_console_script(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    try:
        up = run("cluster", "up", "--nodes", "2", "--data", str(data), "--json")
        assert up.returncode == 0, up.stderr
        nodes = json.loads(up.stdout)["nodes"]
        assert [n["node_id"] for n in nodes] == ["n1", "n2"]
        assert all((data / n["node_id"] / "node.log").is_file() for n in nodes)
        saved = json.loads((data / "cluster.json").read_text())
        assert [n["pid"] for n in saved["nodes"]] == [n["pid"] for n in nodes]

        status = run("cluster", "status", "--data", str(data), "--json")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)["nodes"]
        assert [(r["node_id"], r["up"], r["ready"], r["members"]) for r in rows] == [
            ("n1", True, True, 2),
            ("n2", True, True, 2),
        ]
        table = run("cluster", "status", "--data", str(data))
        assert "n2" in table.stdout and "ready" in table.stdout and "MEMBERS" in table.stdout

        again = run("cluster", "up", "--data", str(data))
        assert again.returncode == 1 and "already running" in error_line(again.stderr)

        url = nodes[0]["url"]
        made = run("remote", "create", "--home", "n2", "--data", "kept", "--json", DTWZ_NODE=url)
        assert made.returncode == 0, made.stderr
        oid = json.loads(made.stdout)["object_id"]

        down = run("cluster", "down", "--data", str(data))
        assert (down.returncode, down.stdout.strip()) == (0, "stopped n1, n2")
        assert run("cluster", "down", "--data", str(data)).stdout.strip() == "no node was running"
        after = run("cluster", "status", "--data", str(data))
        assert after.returncode == 1 and "not running" in error_line(after.stderr)

        restarted = run("cluster", "up", "--data", str(data), "--json")  # same ports, stores
        assert restarted.returncode == 0, restarted.stderr
        assert [n["url"] for n in json.loads(restarted.stdout)["nodes"]] == [
            n["url"] for n in nodes
        ]
        got = run("remote", "--node", url, "get", oid)
        assert (got.returncode, got.stdout) == (0, "kept")
    finally:
        run("cluster", "down", "--data", str(data), timeout=60)
        if (data / "cluster.json").exists():  # belt and braces: nothing may outlive the test
            LocalCluster.load(data).stop(sig=signal.SIGKILL)


def test_cluster_layout_from_a_base_port_or_free_ports(tmp_path: Path) -> None:
    planned = LocalCluster.plan(3, tmp_path / "c", base_port=27000)
    assert [(n.node_id, n.url, n.peer_addr) for n in planned.nodes] == [
        (f"n{i}", f"http://127.0.0.1:{26999 + i}", f"tcp://127.0.0.1:{27099 + i}")
        for i in (1, 2, 3)
    ]
    assert planned.seeds == ["tcp://127.0.0.1:27100"]
    assert planned.nodes[1].data_dir == (tmp_path / "c" / "n2").absolute()
    free = LocalCluster.plan(2, tmp_path / "d")
    ports = [p for n in free.nodes for p in (n.http_port, n.peer_port)]
    assert len(set(ports)) == 4
    planned.save()
    again = LocalCluster.load(tmp_path / "c")
    assert [n.to_json() for n in again.nodes] == [n.to_json() for n in planned.nodes]
    assert again.running() == [] and down(tmp_path / "c") == []
    with pytest.raises(InvalidArgument, match="3 nodes, not 2"):  # a folder keeps its size
        up(2, tmp_path / "c")
    with pytest.raises(InvalidArgument):
        LocalCluster.plan(0, tmp_path / "e")
    with pytest.raises(InvalidArgument):
        LocalCluster.plan(3, tmp_path / "e", base_port=65500)


def test_cluster_commands_on_a_folder_without_a_cluster(tmp_path: Path) -> None:
    runner = CliRunner()
    status = runner.invoke(cli, ["cluster", "status", "--data", str(tmp_path)])
    assert status.exit_code == 1 and "no local cluster" in error_line(status.stderr)
    down = runner.invoke(cli, ["cluster", "down", "--data", str(tmp_path)])
    assert (down.exit_code, down.stdout.strip()) == (0, "no node was running")
    bad = runner.invoke(cli, ["cluster", "up", "--nodes", "0", "--data", str(tmp_path)])
    assert bad.exit_code == 2 and "--nodes" in error_line(bad.stderr)


# -- dtwz node run --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_node_run_takes_file_env_and_flags_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    http_port, peer_port = free_ports(2)
    config = tmp_path / "node.toml"
    config.write_text(f'node_id = "from-file"\nhttp_port = {http_port}\npeer_port = 1\n')
    env = {**os.environ, "DTWZ_PEER_PORT": str(peer_port), "DTWZ_DIRECTORY_COPIES": "1"}
    argv = [
        _console_script(),
        "node",
        "run",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "node"),
        "--node-id",
        "solo",
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # a node on its own makes its keys and admin; any identity may sign (its key
        # object is stored on first use) and owns what it creates
        identity = identity_from_env()
        with Client(f"http://127.0.0.1:{http_port}", timeout=1.0, identity=identity) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.ready():
                        break
                except DtwzError:
                    pass
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "node did not become ready"
                time.sleep(0.05)
            assert client.health()["node_id"] == "solo"  # the flag beats the file
            oid = client.create(8192, b"solo data")
            assert client.read(oid) == b"solo data"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert f"peer tcp://127.0.0.1:{peer_port}".encode() in err  # DTWZ_PEER_PORT beat the file
    assert b"node solo stopped" in err


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--peer-port", "0"], 2, "port 0 out of range"),
        (["--heartbeat-interval", "5"], 2, "heartbeat_interval"),
        (["--config", "/does/not/exist.toml"], 2, "--config"),
        (["--http-port", "many"], 2, "--http-port"),
        (["--bogus"], 2, "No such option"),
    ],
)
def test_node_run_bad_configuration_is_one_error_line(
    args: list[str], code: int, needle: str
) -> None:
    result = CliRunner().invoke(cli, ["node", "run", *args])
    assert result.exit_code == code, result.output
    assert needle in error_line(result.stderr)


def test_node_run_config_file_with_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('node_id = "x"\ncolour = "blue"\n')
    result = CliRunner().invoke(cli, ["node", "run", "--config", str(config)])
    assert result.exit_code == 2 and "colour" in error_line(result.stderr)


@pytest.mark.timeout(60)
def test_node_run_on_a_busy_port_is_one_error_line(tmp_path: Path) -> None:
    import socket

    http_port, peer_port = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken_port = str(busy.getsockname()[1])
        for taken in (
            ["--peer-port", taken_port, "--http-port", str(http_port)],
            ["--http-port", taken_port, "--peer-port", str(peer_port)],
        ):
            result = run(
                "node",
                "run",
                "--node-id",
                "busy",
                "--data-dir",
                str(tmp_path / "n"),
                *taken,
                timeout=30,
            )
            assert result.returncode == 1
            assert "in use" in error_line(result.stderr)


# -- dtwz remote ... against a running cluster ------------------------------------------------


def remote(cluster: LocalCluster, node_id: str, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(
        cli, ["remote", "--node", cluster.node(node_id).url, *args], input=input
    )


def ok(cluster: LocalCluster, node_id: str, *args: str, input: bytes | None = None) -> Result:
    result = remote(cluster, node_id, *args, input=input)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def ok_json(cluster: LocalCluster, node_id: str, *args: str) -> Any:
    return json.loads(ok(cluster, node_id, *args, "--json").stdout)


def test_remote_create_put_get_show_across_nodes(cluster3: LocalCluster) -> None:
    made = ok(cluster3, "n1", "create", "--size", "64K", "--data", "hello", "--home", "n2")
    oid, where = made.stdout.splitlines()
    assert where == "data at 0x1000, 5 bytes (home n2)"
    put = ok_json(cluster3, "n3", "put", oid, " world")
    assert (put["offset"], put["length"], put["version"]) == (DATA_START + 8, 6, 2)
    ok(cluster3, "n1", "put", oid, "--offset", "0x1000", input=b"H")
    assert ok(cluster3, "n1", "get", oid, "--latest").stdout_bytes == b"Hello\0\0\0 world"
    part = ok_json(cluster3, "n3", "get", oid, "--offset", "0x1008", "--length", "6")
    assert base64.b64decode(part["data"]) == b" world"

    shown = ok_json(cluster3, "n3", "show", oid)
    assert (shown["home"], shown["size"], shown["data_len"], shown["version"]) == (
        "n2",
        64 << 10,
        14,
        3,
    )
    text = ok(cluster3, "n1", "show", oid).stdout
    assert "home       n2" in text and "version    3" in text

    located = ok_json(cluster3, "n2", "locate", oid)
    assert located["home"] == "n2" and "n1" in located["copies"]
    assert f"{oid}  home n2" in ok(cluster3, "n3", "locate", oid).stdout


def test_remote_link_and_deref_follow_a_pointer_between_nodes(cluster3: LocalCluster) -> None:
    source = ok_json(cluster3, "n1", "create", "--data", "src")["object_id"]
    target = ok_json(cluster3, "n1", "create", "--data", "dst", "--home", "n3")["object_id"]
    link = ok_json(cluster3, "n2", "link", source, target, "--target-offset", "0x1002")
    assert link["pointer"] == "1:0x1002" and link["at"] == DATA_START + 8
    deref = ok_json(cluster3, "n2", "deref", source, "--at", hex(link["at"]))
    assert (deref["target"], deref["offset"], deref["home"]) == (target, 0x1002, "n3")
    shown = ok_json(cluster3, "n3", "show", source)
    assert shown["fot"] == [
        {"index": 1, "flags": ["VALID", "READ", "WRITE"], "kind": "ID", "target": target}
    ]


def test_remote_status_shows_every_member(cluster3: LocalCluster) -> None:
    doc = ok_json(cluster3, "n2", "status")
    assert doc["node_id"] == "n2"
    rows = {r["node_id"]: r for r in doc["nodes"]}
    assert sorted(rows) == ["n1", "n2", "n3"]
    assert all(r["up"] and r["members"] == 3 and r["objects"] is not None for r in rows.values())
    table = ok(cluster3, "n1", "status").stdout
    assert all(n in table for n in ("n1", "n2", "n3", "OBJECTS", "HITS"))


def test_remote_node_from_the_environment(cluster3: LocalCluster) -> None:
    runner = CliRunner(env={"DTWZ_NODE": cluster3.node("n3").url})
    result = runner.invoke(cli, ["remote", "create", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["home"] == "n3"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["get", MISSING_ID], 1, "no node of the cluster holds"),
        (["show", MISSING_ID], 1, "no node of the cluster holds"),
        (["put", MISSING_ID, "x"], 1, MISSING_ID),
        (["get", "not-an-id"], 2, "32 hex digits"),
        (["put", "{oid}", "--offset", "0x10", "x"], 2, "--offset"),
        (["put", "{oid}"], 2, "empty"),
        (["create", "--size", "5000"], 2, "--size"),
        (["create", "--home", "nowhere"], 1, "nowhere"),
        (["deref", "{oid}", "--at", "0x1000"], 1, "NULL"),
        (["bogus"], 2, "No such command"),
    ],
)
def test_remote_errors_are_one_line(
    cluster3: LocalCluster, args: list[str], code: int, needle: str
) -> None:
    oid = ok_json(cluster3, "n1", "create", "--size", "8K", "--data", "\0" * 8)["object_id"]
    result = remote(cluster3, "n2", *(a.format(oid=oid) for a in args), input=b"")
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert needle in error_line(result.stderr)


def test_remote_against_a_node_that_is_not_there() -> None:
    port = free_ports(1)[0]
    result = CliRunner().invoke(cli, ["remote", "--node", f"http://127.0.0.1:{port}", "status"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in error_line(result.stderr)
