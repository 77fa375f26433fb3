"""``dtwz cluster up/status/down`` (``dtwz.cli.cluster``) through the installed console
script, and the folder layout a local cluster keeps."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtwz.cli import cli
from dtwz.errors import InvalidArgument
from dtwz.node.launcher import LocalCluster, down, up
from tests.cli.helpers import error_line, run_script

# -- dtwz cluster up / status / down ------------------------------------------------------


@pytest.mark.timeout(240)
def test_cluster_up_status_down_through_the_console_script(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    try:
        up = run_script("cluster", "up", "--nodes", "2", "--data", str(data), "--json")
        assert up.returncode == 0, up.stderr
        nodes = json.loads(up.stdout)["nodes"]
        assert [n["node_id"] for n in nodes] == ["n1", "n2"]
        assert all((data / n["node_id"] / "node.log").is_file() for n in nodes)
        saved = json.loads((data / "cluster.json").read_text())
        assert [n["pid"] for n in saved["nodes"]] == [n["pid"] for n in nodes]

        status = run_script("cluster", "status", "--data", str(data), "--json")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)["nodes"]
        assert [(r["node_id"], r["up"], r["ready"], r["members"]) for r in rows] == [
            ("n1", True, True, 2),
            ("n2", True, True, 2),
        ]
        table = run_script("cluster", "status", "--data", str(data))
        assert "n2" in table.stdout and "ready" in table.stdout and "MEMBERS" in table.stdout

        again = run_script("cluster", "up", "--data", str(data))
        assert again.returncode == 1 and "already running" in error_line(again.stderr)

        url = nodes[0]["url"]
        made = run_script(
            "remote", "create", "--home", "n2", "--data", "kept", "--json", DTWZ_NODE=url
        )
        assert made.returncode == 0, made.stderr
        oid = json.loads(made.stdout)["object_id"]

        down = run_script("cluster", "down", "--data", str(data))
        assert (down.returncode, down.stdout.strip()) == (0, "stopped n1, n2")
        assert (
            run_script("cluster", "down", "--data", str(data)).stdout.strip()
            == "no node was running"
        )
        after = run_script("cluster", "status", "--data", str(data))
        assert after.returncode == 1 and "not running" in error_line(after.stderr)

        restarted = run_script("cluster", "up", "--data", str(data), "--json")  # same ports, stores
        assert restarted.returncode == 0, restarted.stderr
        assert [n["url"] for n in json.loads(restarted.stdout)["nodes"]] == [
            n["url"] for n in nodes
        ]
        got = run_script("remote", "--node", url, "get", oid)
        assert (got.returncode, got.stdout) == (0, "kept")
    finally:
        run_script("cluster", "down", "--data", str(data), timeout=60)
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
