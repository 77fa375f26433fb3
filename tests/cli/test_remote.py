"""``dtwz remote ...`` (``dtwz.cli.remote``): the object commands against a real 3-node
cluster, through any node; errors and an absent node as one error line."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dtwz.cli import cli
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster
from tests.cli.helpers import error_line
from tests.helpers import free_port

MISSING_ID = "00" * 16


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
        (["create", "--home", "nowhere"], 2, "no member"),  # a usage error (400)
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
    port = free_port()
    result = CliRunner().invoke(cli, ["remote", "--node", f"http://127.0.0.1:{port}", "status"])
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in error_line(result.stderr)
