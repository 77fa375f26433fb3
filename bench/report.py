"""Figures beside their baselines: one table for the terminal, one JSON file for the record.

A ``Row`` holds dtwz's timing and the baseline's, both from the same run. Its
ratio is always "how dtwz compares": time over time for latencies (lower is
better), throughput over throughput for rates (higher is better). A target, when
the issue sets one, turns the ratio (or an absolute time) into PASS or MISS.
Nothing here asserts: benchmarks report, tests judge.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.timing import Timing

_PLAIN_WIDTH = 160


@dataclass(frozen=True, slots=True)
class Target:
    """``kind`` is ``max_ratio``, ``min_ratio`` or ``max_seconds``."""

    kind: str
    value: float

    def met(self, row: Row) -> bool:
        if self.kind == "max_seconds":
            return row.ours.median_ns / 1e9 <= self.value
        ratio = row.ratio
        assert ratio is not None
        return ratio <= self.value if self.kind == "max_ratio" else ratio >= self.value

    def __str__(self) -> str:
        if self.kind == "max_seconds":
            return f"< {self.value:g} s"
        return f"{'≤' if self.kind == 'max_ratio' else '≥'} {self.value:g}x"


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    ours: Timing
    baseline_name: str = ""
    baseline: Timing | None = None
    rate: bool = False  # show ops/s (higher is better) instead of time per op
    target: Target | None = None
    unit: str = "op"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None:
            return None
        if self.rate:
            return self.ours.ops_per_s / self.baseline.ops_per_s
        return self.ours.median_ns / self.baseline.median_ns

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "info"
        return "PASS" if self.target.met(self) else "MISS"

    def as_dict(self) -> dict[str, object]:
        return {
            "figure": self.figure.strip(),
            "unit": self.unit,
            "dtwz": self.ours.as_dict(),
            "baseline_name": self.baseline_name or None,
            "baseline": self.baseline.as_dict() if self.baseline else None,
            "ratio": self.ratio,
            "ratio_meaning": "throughput dtwz/baseline" if self.rate else "time dtwz/baseline",
            "target": str(self.target) if self.target else None,
            "verdict": self.verdict,
        }


@dataclass
class Report:
    title: str
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def add(self, *rows: Row) -> None:
        self.rows.extend(rows)

    def print(self, console: Console | None = None) -> None:
        if console is None:
            console = Console()
            if not console.is_terminal:  # a file or a pipe: do not squeeze into 80 columns
                console = Console(width=_PLAIN_WIDTH)
        table = Table(title=self.title, caption=_caption(self.settings), caption_justify="left")
        table.add_column("figure")
        table.add_column("dtwz", justify="right")
        table.add_column("baseline")
        table.add_column("baseline value", justify="right")
        table.add_column("ratio", justify="right")
        table.add_column("target", justify="right")
        table.add_column("")
        for row in self.rows:
            table.add_row(*_cells(row))
        console.print(table)
        for key, value in self.notes.items():
            console.print(f"  {key}: {value}")

    def write_json(self, path: Path) -> None:
        record = {
            "title": self.title,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": self.settings,
            "rows": [row.as_dict() for row in self.rows],
            "notes": self.notes,
        }
        path.write_text(json.dumps(record, indent=2, default=str, ensure_ascii=False) + "\n")


def machine() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }


def _caption(settings: dict[str, object]) -> str:
    m = machine()
    parts = [f"{k}={v}" for k, v in settings.items()]
    parts.append(f"python {m['python']}, {m['cpus']} cpus, load {m['load_avg_1m']:.2f}")
    return "medians; ± is half the range of the repetitions. " + ", ".join(parts)


def _cells(row: Row) -> list[str]:
    verdict = {"PASS": "[green]PASS", "MISS": "[red]MISS", "info": "[dim]info"}[row.verdict]
    ratio = row.ratio
    return [
        row.figure,
        _value(row, row.ours),
        row.baseline_name,
        _value(row, row.baseline) if row.baseline else "",
        f"{ratio:.2f}x" if ratio is not None else "",
        str(row.target) if row.target else "",
        verdict,
    ]


def _value(row: Row, timing: Timing) -> str:
    spread = f" ±{timing.spread:.0%}"
    if row.rate:
        return f"{_si(timing.ops_per_s)} {row.unit}/s{spread}"
    return f"{_duration(timing.median_ns)}{spread}"


def _si(value: float) -> str:
    for scale, suffix in [(1e6, "M"), (1e3, "k")]:
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _duration(ns: float) -> str:
    for scale, suffix in [(1e9, "s"), (1e6, "ms"), (1e3, "µs")]:
        if ns >= scale:
            return f"{ns / scale:.3g} {suffix}"
    return f"{ns:.3g} ns"
