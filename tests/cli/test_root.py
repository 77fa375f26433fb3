"""The root of the command line (``dtwz.cli``): it adds every group and command of the
submodules, the namespace commands join the ``remote`` group, and ``python -m dtwz``
runs the same command line as the console script."""

from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

from dtwz.cli import cli, main

STORE_COMMANDS = ["init", "create", "put", "get", "show", "ls", "link", "deref", "checkpoint"]
GROUPS = ["node", "cluster", "remote", "graph", "keys", "identity", "cap"]
REMOTE_COMMANDS = ["create", "put", "get", "show", "link", "deref", "locate", "status"]
NAME_COMMANDS = ["resolve", "ls", "mkdir", "bind", "ln", "mv", "rm"]


def test_the_root_group_holds_every_command_and_group() -> None:
    assert sorted(cli.commands) == sorted(STORE_COMMANDS + GROUPS)
    assert all(isinstance(cli.commands[name], click.Group) for name in GROUPS)
    remote = cli.commands["remote"]
    assert isinstance(remote, click.Group)
    assert sorted(remote.commands) == sorted(REMOTE_COMMANDS + NAME_COMMANDS)


def test_every_group_answers_help() -> None:
    for name in GROUPS:
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert f"Usage: dtwz {name}" in result.stdout


def test_main_is_the_root_group() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "dtwz, version" in result.stdout
    assert main.__module__ == "dtwz.cli"


def test_python_dash_m_dtwz_runs_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dtwz", "remote", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: dtwz remote" in done.stdout and "mkdir" in done.stdout
