"""Helpers of the command-line tests: run the installed ``dtwz`` console script, and
read the one ``error: ...`` line a failing command ends with."""

from __future__ import annotations

import os
import subprocess

from tests.helpers import console_script


def run_script(*args: str, timeout: float = 120.0, **env: str) -> subprocess.CompletedProcess[str]:
    """``dtwz ARGS`` in a subprocess, with ``env`` added to this environment."""
    return subprocess.run(
        [console_script(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )


def error_line(stderr: str) -> str:
    """The last line of ``stderr``, which must be one ``error: ...`` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last
