"""Enrollment from the command line (``dtwz identity enroll`` and ``register``)
against a real 1-node cluster: the admin's consent as a capability, presented by
the newcomer with ``--enrollment`` or ``$DTWZ_ENROLLMENT``; without it, one error
line that says how to get enrolled (docs/SECURITY.md §10)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from dtwz.cli import cli
from dtwz.node.launcher import LocalCluster


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env or {})


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.strip()


def new_identity(path: Path) -> str:
    return str(json.loads(ok(run("identity", "new", str(path), "--json")))["kuid"])


def test_enroll_prints_the_admins_consent_for_one_key(
    cluster1: LocalCluster, tmp_path: Path
) -> None:
    kuid = new_identity(tmp_path / "newcomer.id")
    doc = json.loads(ok(run("identity", "enroll", kuid, "--expires", "120", "--json")))
    assert doc["target"] == doc["accessor"] == kuid
    assert doc["issuer"] == cluster1.admin.kuid.hex()  # the test admin signs (DTWZ_IDENTITY)
    assert doc["rights"] == "WRITE" and 100 < doc["expires_in"] <= 120
    assert run("identity", "enroll", "not-a-kuid").exit_code == 2


def test_an_unenrolled_identity_is_told_how_to_enroll(
    cluster1: LocalCluster, tmp_path: Path
) -> None:
    url = cluster1.node("n1").url
    path = tmp_path / "stranger.id"
    kuid = new_identity(path)
    as_stranger = {"DTWZ_IDENTITY": str(path)}
    refused = run("remote", "--node", url, "create", "--data", "x", env=as_stranger)
    assert refused.exit_code == 1
    assert "not enrolled" in refused.output and f"dtwz identity enroll {kuid}" in refused.output
    refused = run("identity", "register", str(path), "--node", url)
    assert refused.exit_code == 1 and "not enrolled" in refused.output


def test_register_with_the_admins_capability(cluster1: LocalCluster, tmp_path: Path) -> None:
    url = cluster1.node("n1").url
    path = tmp_path / "newcomer.id"
    kuid = new_identity(path)
    cap = ok(run("identity", "enroll", kuid))
    got = ok(run("identity", "register", str(path), "--enrollment", cap, "--node", url))
    assert got == f"{kuid}  enrolled"
    again = ok(run("identity", "register", str(path), "--enrollment", cap, "--node", url))
    assert again == f"{kuid}  enrolled already"
    made = ok(
        run("remote", "--node", url, "create", "--data", "x", env={"DTWZ_IDENTITY": str(path)})
    )
    assert made


def test_the_enrollment_in_the_environment_is_presented_on_first_use(
    cluster1: LocalCluster, tmp_path: Path
) -> None:
    url = cluster1.node("n1").url
    path = tmp_path / "later.id"
    kuid = new_identity(path)
    cap = ok(run("identity", "enroll", kuid))
    env = {"DTWZ_IDENTITY": str(path), "DTWZ_ENROLLMENT": cap}
    created = json.loads(
        ok(run("remote", "--node", url, "create", "--data", "y", "--json", env=env))
    )
    got = run("remote", "--node", url, "get", created["object_id"], env=env)
    assert ok(got) == "y"  # its own object (owner-only by default)
