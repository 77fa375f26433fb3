"""``dtwz node run`` (``dtwz.cli.node``): configuration from a file, the environment and
flags; a clean exit on SIGTERM; bad configurations and busy ports as one error line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dtwz.cli import cli
from dtwz.client.api import Client, identity_from_env
from dtwz.errors import DtwzError
from dtwz.node.launcher import free_ports
from dtwz.node.peer import curve_keypair
from dtwz.security.keyfiles import ensure_keys
from tests.cli.helpers import error_line, run_script
from tests.helpers import console_script, wait_until

# -- dtwz node run --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_node_run_takes_file_env_and_flags_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    http_port, peer_port = free_ports(2)
    config = tmp_path / "node.toml"
    config.write_text(f'node_id = "from-file"\nhttp_port = {http_port}\npeer_port = 1\n')
    env = {**os.environ, "DTWZ_PEER_PORT": str(peer_port), "DTWZ_DIRECTORY_COPIES": "1"}
    argv = [
        console_script(),
        "node",
        "run",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path / "node"),
        "--node-id",
        "solo",
    ]
    ensure_keys(tmp_path / "node" / "keys", [], curve_keypair, identity_from_env())
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # a node on its own makes what is missing of its keys; its admin here is the
        # identity the test signs with (as `dtwz cluster up` does with $DTWZ_IDENTITY),
        # made before the node starts: other keys would need enrolling
        identity = identity_from_env()
        with Client(f"http://127.0.0.1:{http_port}", timeout=1.0, identity=identity) as client:

            def ready() -> bool:
                assert proc.poll() is None, proc.communicate()
                return client.ready()

            wait_until(ready, 60, "the node is ready", ignore=(DtwzError,))
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
    http_port, peer_port = free_ports(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken_port = str(busy.getsockname()[1])
        for taken in (
            ["--peer-port", taken_port, "--http-port", str(http_port)],
            ["--http-port", taken_port, "--peer-port", str(peer_port)],
        ):
            result = run_script(
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
