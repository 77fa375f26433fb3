"""Finding a node without being told: ``dtwz.connect()`` and the local cluster folder.

``dtwz cluster up`` (``dtwz.node.launcher``, the process launcher in the node
layer above) writes a cluster folder::

    <folder>/cluster.json    node IDs, ports, URLs and pids
    <folder>/keys/           the cluster's keys; the admin identity among them

This module reads it, and only reads it: a client picks the first node of the
folder that answers and signs as the folder's admin, unless ``$DTWZ_NODE`` and
``$DTWZ_IDENTITY`` say otherwise. The launcher takes the folder's names and its
reader from here, so the two sides cannot disagree about the layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dtwz.client.api import Client
from dtwz.client.auth import identity_from_env
from dtwz.errors import ClusterError, DtwzError
from dtwz.security import keyfiles
from dtwz.security.keys import Identity

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_DATA_DIR",
    "KEYS_DIR",
    "cluster_folder",
    "connect",
    "default_identity",
    "read_cluster_file",
]

CLUSTER_FILE = "cluster.json"
KEYS_DIR = "keys"
DEFAULT_DATA_DIR = "data/cluster"
PROBE_TIMEOUT = 1.0  # seconds a node of the folder has to answer ``connect``


def connect(url: str | None = None, **options: Any) -> Client:
    """A client of a node of a cluster: ``url``; else ``DTWZ_NODE``; else the first
    node that answers of the local cluster in ``DTWZ_CLUSTER`` or ./data/cluster
    (the folder of ``dtwz cluster up``). Options go to ``Client``."""
    folder = cluster_folder()
    if url is None:
        url = os.environ.get("DTWZ_NODE") or _answering_node(folder)
    if "identity" not in options:
        options["identity"] = default_identity(folder)
    return Client(url, **options)


def default_identity(folder: Path | None = None) -> Identity | None:
    """Who a client signs as without being told: ``$DTWZ_IDENTITY``, else the admin of
    the local cluster in ``folder`` (``$DTWZ_CLUSTER`` or ./data/cluster), else nobody."""
    identity = identity_from_env()
    if identity is not None:
        return identity
    folder = folder or cluster_folder()
    admin = keyfiles.admin_identity_file(folder / KEYS_DIR)
    return Identity.load(admin) if admin.exists() else None


def cluster_folder() -> Path:
    """The local cluster folder: ``$DTWZ_CLUSTER``, else ./data/cluster."""
    return Path(os.environ.get("DTWZ_CLUSTER", DEFAULT_DATA_DIR))


def read_cluster_file(folder: Path) -> dict[str, Any]:
    """The description in ``folder/cluster.json``, with at least one node;
    ``ClusterError`` when there is none or it does not parse."""
    path = folder / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ClusterError(f"no local cluster in {folder} (no {CLUSTER_FILE})") from exc
    except (OSError, ValueError) as exc:
        raise ClusterError(f"{path} is not a cluster description: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise ClusterError(f"{path} is not a cluster description: no list of nodes")
    if not doc["nodes"]:
        raise ClusterError(f"{path} lists no nodes")
    return doc


def _node_urls(folder: Path) -> list[str]:
    try:
        return [str(node["url"]) for node in read_cluster_file(folder)["nodes"]]
    except (KeyError, TypeError) as exc:
        raise ClusterError(f"{folder / CLUSTER_FILE} is not a cluster description: {exc}") from exc


def _answering_node(folder: Path) -> str:
    if not (folder / CLUSTER_FILE).exists():
        raise ClusterError(
            "no node to connect to: pass a URL, set DTWZ_NODE or start a local cluster "
            f"with `dtwz cluster up` (there is none in {folder})"
        )
    urls = _node_urls(folder)
    for url in urls:
        with Client(url, timeout=PROBE_TIMEOUT) as probe:
            try:
                probe.health()
            except DtwzError:
                continue
        return url
    raise ClusterError(
        f"no node of the local cluster in {folder} answers ({', '.join(urls)}); "
        "start it with `dtwz cluster up`"
    )
