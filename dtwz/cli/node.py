"""``dtwz node run``: one node of a cluster in the foreground.

Its flags map one to one onto the fields of ``NodeConfig`` (generated from the
dataclass, so they cannot drift); ``--config FILE`` and ``DTWZ_*`` variables fill
the rest, flags win. Logs go to stderr; SIGTERM or Ctrl-C ends it cleanly with
status 0. ``dtwz cluster up`` starts its nodes with this command
(``python -m dtwz node run ...``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dtwz.errors import ClusterError, DtwzError
from dtwz.node.config import NodeConfig

log = logging.getLogger("dtwz.node")


_NODE_HELP = {
    "node_id": "This node's ID, unique in the cluster.  [default: the host name]",
    "data_dir": "The node's folder (its store is DIR/store).",
    "bind_host": "Address to listen on.",
    "advertise_host": "Host name peers and clients use.  [default: the bind host]",
    "advertise_url": "HTTP URL clients use, when not http://HOST:HTTP_PORT (a published "
    "container port, a proxy).  [default: from the host and port]",
    "peer_port": "Port of the peer endpoint (ZeroMQ).",
    "http_port": "Port of the HTTP API.",
    "seeds": "Peer address to join through, tcp://HOST:PORT (repeat, or comma-separate).",
    "heartbeat_interval": "Seconds between heartbeats.",
    "suspect_after": "Seconds of silence before a member is suspect.",
    "dead_after": "Seconds of silence before a member is dead.",
    "request_timeout": "Seconds a peer request may take.",
    "directory_copies": "Directory records kept per object.",
    "durable": "Make commits durable with fsync.",
    "cluster_id": "The cluster's identity (every node the same): it fixes the root directory.",
    "prefetch_neighbours": "After fetching a copy on demand, fetch what its pointers lead to, "
    "up to this many bytes, in the background (0: off).",
    "security": "Signed requests, access checks and CurveZMQ between nodes.",
    "keys_dir": "The cluster's keys folder, shared by its nodes; made on first start."
    "  [default: DATA_DIR/keys]",
    "open_enrollment": "Let any key register itself, without the admin's consent (set it on "
    "every node alike).",
    "quota_objects": "Objects one identity may own across the cluster (0: no limit).",
    "quota_bytes": "Allocated bytes one identity may own across the cluster (0: no limit).",
    "max_keys": "Keys the cluster may enroll (0: no limit).",
    "code_workers": "Calls of code at the data run at once (confined worker processes).",
    "code_per_caller": "Of those, the most one caller may have running.",
    "code_max_timeout": "The longest time limit (seconds) a caller may ask for a run.",
    "code_cpu": "CPU seconds a call may use (0: a second more than its time limit).",
    "code_memory": "Bytes of memory (heap and private mappings) a call may use (0: no limit).",
    "code_uid": "As root: workers run as this uid (and gid) plus their number; pick a "
    "range no user or service has.",
    "allow_unisolated_code": "Run code even where a worker cannot be isolated (it can then "
    "read what the node may, keys included); otherwise such a node refuses code.",
}


def _node_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per NodeConfig field, all defaulting to None (= not given)."""
    for f in reversed(dataclasses.fields(NodeConfig)):
        flag = "--" + f.name.replace("_", "-")
        if f.default_factory is not dataclasses.MISSING:
            default: Any = f.default_factory()
        else:
            default = f.default
        shown = (
            ""
            if f.name in ("node_id", "advertise_host", "advertise_url", "seeds")
            else f"  [default: {default}]"
        )
        text = _NODE_HELP.get(f.name, f.name.replace("_", " ")) + shown
        if isinstance(default, bool):
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=text)
        elif isinstance(default, list):
            option = click.option(flag, f.name, multiple=True, metavar="ADDR", help=text)
        elif isinstance(default, Path):
            path = click.Path(file_okay=False, path_type=Path)
            option = click.option(flag, f.name, type=path, default=None, help=text)
        else:
            kind = {int: click.INT, float: click.FLOAT}.get(type(default), click.STRING)
            option = click.option(flag, f.name, type=kind, default=None, help=text)
        command = option(command)
    return command


@click.group()
def node() -> None:
    """Run a node of a dtwz cluster."""


@node.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help='A TOML file with NodeConfig keys (node_id = "n1", ...).',
)
@_node_options
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="DTWZ_LOG_LEVEL",
    show_envvar=True,
    help="How much the node logs (to stderr).",
)
def node_run(config_file: Path | None, log_level: str, **flags: Any) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C.

    Every flag is a NodeConfig field; DTWZ_<FIELD> variables (DTWZ_PEER_PORT,
    DTWZ_SEEDS=tcp://a:7100,tcp://b:7100, ...) and --config fill what the flags
    do not say.
    """
    seeds = flags.pop("seeds", ())
    if seeds:
        flags["seeds"] = [s.strip() for item in seeds for s in item.split(",") if s.strip()]
    config = NodeConfig.load(config_file, **flags)
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format=f"%(asctime)s {config.node_id} %(levelname)s %(name)s: %(message)s",
    )
    from dtwz.node.server import run_node  # the node's imports are heavy: only here

    try:
        asyncio.run(run_node(config))
    except (DtwzError, OSError, KeyboardInterrupt):
        raise  # the group turns these into one error line
    except Exception as exc:  # a third-party error the node did not translate
        log.debug("node %s stopped by an untranslated error", config.node_id, exc_info=True)
        raise ClusterError(f"node {config.node_id} stopped: {exc}") from exc
    log.info("node %s stopped", config.node_id)
