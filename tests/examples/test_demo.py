"""`make demo` runs: the demo exits 0, says what it did, and its store persists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dtwz import Store

REPO = Path(__file__).resolve().parents[2]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "TERM": "dumb"},
    )


def test_demo_runs_and_reports(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    result = run_demo("--data", str(data))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in (
        f"Creating a new store at {data}",
        "5,200 entries",
        "read-only=True",
        "same buffer: True",
        "the same memoryview reads b\"{'NAME': 'USER 42'",
        "2,001 nodes living in 63 objects",
        "KV index object: header",
        "FOT (one entry per data object)",
        "VALID|READ|WRITE",
        "Reopened in",
        "its tail is 'node 1999'",
        "lookups",
        "Demo finished",
    ):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out}"
    with Store.open(data) as store:
        assert sum(1 for _ in store.object_ids()) > 60

    again = run_demo("--data", str(data))  # a second run starts over, and says so
    assert again.returncode == 0, again.stderr
    assert "Starting fresh: removed the previous demo store" in again.stdout


def test_demo_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    result = run_demo("--data", str(precious))
    assert result.returncode != 0
    assert "is not a dtwz store folder" in result.stderr
    assert (precious / "thesis.txt").read_text() == "do not delete"
    result = run_demo("--data", str(precious / "thesis.txt"))
    assert result.returncode != 0 and "is not a dtwz store folder" in result.stderr
