"""`make demo` runs: the cluster demo exits 0, does every step it announces, and
stops its nodes (real node processes, as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dtwz.node.launcher import LocalCluster

REPO = Path(__file__).resolve().parents[2]


def test_the_cluster_demo_runs_every_step(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "DTWZ_NODE"}
    result = subprocess.run(
        [sys.executable, "-m", "examples.cluster_demo", "--data", str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**env, "COLUMNS": "200", "TERM": "dumb"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for expected in (
        "resolves /demo/list/head",
        "walked 9 items across 3 nodes",
        "after b'renamed at its home'",
        "9 objects, 8 pointers cross nodes",
        "sum_numbers(list) = 36: ran on",
        "co-located: moved",
        "cluster stopped",
    ):
        assert expected in out, f"{expected!r} not in the demo's output:\n{out[-3000:]}"
    assert (data / "demo-graph.html").read_text("utf-8").startswith("<!doctype html>")
    assert LocalCluster.load(data).running() == []  # every node stopped
