"""``dtwz cluster up/status/down``: a local cluster of node processes on loopback, kept
in one folder (``dtwz.node.launcher``), and the status table that ``dtwz remote
status`` prints too.

``up`` starts N ``dtwz node run`` processes and waits until they form a cluster
(run it again on a stopped folder to restart the same nodes with their stores);
``status`` asks each node; ``down`` stops them, keeping their stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dtwz.cli.common import (
    DEFAULT_CLUSTER_DIR,
    EXIT_RUNTIME,
    CliConfig,
    fail,
    json_option,
    pass_config,
)
from dtwz.node import launcher as local_cluster
from dtwz.node.launcher import NodeStatus
from dtwz.security import keyfiles

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CLUSTER_DIR,
    show_default=True,
    envvar="DTWZ_CLUSTER",
    show_envvar=True,
    help="The cluster folder.",
)


@click.group()
def cluster() -> None:
    """Start, inspect and stop a local cluster."""


@cluster.command("up")
@click.option(
    "--nodes",
    "n",
    type=click.IntRange(1, local_cluster.MAX_NODES),
    default=None,
    help="How many nodes.  [default: 3, or what the folder holds]",
)
@data_option
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65535),
    help="HTTP ports from P, peer ports from P+100.  [default: free ports]",
)
@click.option(
    "--node-arg",
    "node_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for every `dtwz node run` (repeat).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=local_cluster.START_TIMEOUT,
    show_default=True,
    help="Seconds to wait until every node is ready.",
)
@json_option
@pass_config
def cluster_up(
    cfg: CliConfig,
    n: int | None,
    data_dir: Path,
    base_port: int | None,
    node_args: tuple[str, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Start N node processes on loopback and wait until they form a cluster.

    Each node keeps its store and node.log under DATA/<node_id>/. Run it again on
    a stopped folder to restart the same nodes with their stores.
    """
    started = local_cluster.up(n, data_dir, base_port, node_args=node_args, timeout=timeout)
    nodes = [spec.to_json() for spec in started.nodes]
    lines = [f"cluster of {len(nodes)} nodes in {started.data_dir}:"]
    lines += [f"  {d['node_id']:8} {d['url']:24} peer {d['peer']:24} pid {d['pid']}" for d in nodes]
    admin = keyfiles.admin_identity_file(started.keys_dir)
    lines.append(f"admin identity: {admin} (clients here use it; DTWZ_IDENTITY picks another)")
    lines.append(f"try: dtwz remote --node {nodes[0]['url']} status")
    doc = {"data_dir": str(started.data_dir), "nodes": nodes, "admin_identity": str(admin)}
    cfg.emit(as_json, doc, "\n".join(lines))


@cluster.command("status")
@data_option
@json_option
@pass_config
def cluster_status(cfg: CliConfig, data_dir: Path, as_json: bool) -> None:
    """Show each node: running, members it sees, objects, copies, cache figures.

    Exits with status 1 when a node is not running.
    """
    rows = local_cluster.status(data_dir)
    emit_status(cfg, as_json, rows, {"data_dir": str(data_dir.absolute())})


@cluster.command("down")
@data_option
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=local_cluster.STOP_TIMEOUT,
    show_default=True,
    help="Seconds before SIGTERM becomes SIGKILL.",
)
@json_option
@pass_config
def cluster_down(cfg: CliConfig, data_dir: Path, timeout: float, as_json: bool) -> None:
    """Stop every node of the cluster (stores are kept)."""
    stopped = local_cluster.down(data_dir, timeout=timeout)
    text = f"stopped {', '.join(stopped)}" if stopped else "no node was running"
    cfg.emit(as_json, {"data_dir": str(data_dir.absolute()), "stopped": stopped}, text)


def emit_status(
    cfg: CliConfig, as_json: bool, rows: list[NodeStatus], extra: dict[str, Any]
) -> None:
    """One row per node (a table, or ``extra`` plus the rows as JSON); exit status 1
    when a node is not answering."""
    if cfg.json or as_json:
        cfg.emit(True, extra | {"nodes": [r.to_json() for r in rows]}, "")
    else:
        table = Table(box=None, header_style="bold")
        with_pids = any(r.pid for r in rows)  # known only for a local cluster folder
        names = [
            "NODE",
            "URL",
            *(["PID"] if with_pids else []),
            "UP",
            "MEMBERS",
            "OBJECTS",
            "COPIES",
            "HITS",
            "MISSES",
        ]
        for name in names:
            table.add_column(name, justify="left" if name in ("NODE", "URL", "UP") else "right")
        for r in rows:
            state = "ready" if r.ready else ("up" if r.up else "DOWN")
            figures = (r.members, r.objects, r.copies, r.cache_hits, r.cache_misses)
            pid = [str(r.pid or "-")] if with_pids else []
            table.add_row(
                r.node_id, r.url, *pid, state, *("-" if v is None else str(v) for v in figures)
            )
        Console(width=120, highlight=False).print(table)
    down = [r for r in rows if not r.up]
    for r in down:
        fail(f"node {r.node_id}: {r.error or 'not answering'}", EXIT_RUNTIME)
    if down:
        click.get_current_context().exit(EXIT_RUNTIME)
