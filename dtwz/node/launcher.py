"""A local cluster without containers: N node processes on loopback.

A cluster folder holds everything, so ``up``, ``status`` and ``down`` can run in
different processes::

    <data_dir>/cluster.json        node IDs, ports, URLs and pids
    <data_dir>/<node_id>/store/    the node's object store
    <data_dir>/<node_id>/node.log  the node's stdout and stderr (appended across runs)
    <data_dir>/keys/               the cluster's keys (``dtwz.security.keyfiles``): admin identity,
                                   node identities, CurveZMQ keys, admitted.json

Invariants:
- every node gets the same seed list, the first node's peer address;
- ``up`` returns only once every node answers ``/ready`` and sees all N members
  alive; otherwise it stops what it started and raises ``ClusterError`` with the
  tail of the failing node's log, after a bounded wait;
- ``up`` on a folder whose nodes are stopped starts them again on the same ports,
  stores intact; ``up`` on a running folder refuses;
- ``down`` sends SIGTERM, then SIGKILL after a timeout, clears the pids and keeps
  the stores; calling it twice is harmless.

Processes this process started are reaped through their ``Popen``; others (a
cluster started by an earlier ``dtwz cluster up``) are checked by pid, which is
trusted only while ``/proc`` shows a live ``dtwz`` process with that node ID.

Clients find a node through the same folder: the folder's names, its reader and
``connect`` live in ``dtwz.client.local`` (``connect`` and ``default_identity``
stay importable from here as aliases).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtwz.client import Client, identity_from_env
from dtwz.client.local import (
    CLUSTER_FILE,
    DEFAULT_DATA_DIR,
    KEYS_DIR,
    connect,
    default_identity,
    read_cluster_file,
)
from dtwz.errors import ClusterError, DtwzError, InvalidArgument
from dtwz.security import keyfiles
from dtwz.security.keys import Identity

__all__ = [
    "CLUSTER_FILE",
    "DEFAULT_DATA_DIR",
    "KEYS_DIR",
    "LocalCluster",
    "NodeSpec",
    "NodeStatus",
    "connect",  # an alias: dtwz.client.local.connect
    "default_identity",  # an alias: dtwz.client.local.default_identity
    "down",
    "free_ports",
    "status",
    "survey",
    "up",
]

HOST = "127.0.0.1"
PEER_PORT_OFFSET = 100  # base port P: HTTP on P + i, peer endpoint on P + 100 + i
MAX_NODES = PEER_PORT_OFFSET
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL = 0.05

_children: dict[int, subprocess.Popen[bytes]] = {}  # processes this process started


@dataclass
class NodeSpec:
    """One node's place in a local cluster."""

    node_id: str
    http_port: int
    peer_port: int
    data_dir: Path
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def peer_addr(self) -> str:
        return f"tcp://{HOST}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "pid": self.pid,
            "url": self.url,
            "peer": self.peer_addr,
            "http_port": self.http_port,
            "peer_port": self.peer_port,
            "data_dir": str(self.data_dir),
            "log": str(self.log_path),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> NodeSpec:
        pid = doc.get("pid")
        return cls(
            str(doc["node_id"]),
            int(doc["http_port"]),
            int(doc["peer_port"]),
            Path(doc["data_dir"]),
            int(pid) if pid else None,
        )


@dataclass
class NodeStatus:
    """What ``status`` reports about one node; figures are None when it is down."""

    node_id: str
    url: str
    pid: int | None = None
    up: bool = False
    ready: bool = False
    members: int | None = None  # members this node sees alive, itself included
    objects: int | None = None
    copies: int | None = None
    cache_hits: int | None = None
    cache_misses: int | None = None
    directory_records: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LocalCluster:
    """The nodes of one cluster folder and the processes that run them."""

    data_dir: Path
    nodes: list[NodeSpec]
    node_args: list[str] = field(default_factory=list)  # extra `dtwz node run` flags

    # -- the folder ------------------------------------------------------------------

    @property
    def file(self) -> Path:
        return self.data_dir / CLUSTER_FILE

    @property
    def seeds(self) -> list[str]:
        return [self.nodes[0].peer_addr]

    @classmethod
    def plan(
        cls,
        n: int,
        data_dir: Path,
        base_port: int | None = None,
        node_args: Sequence[str] = (),
    ) -> LocalCluster:
        """A new layout: nodes n1..nN on ``base_port`` (see PEER_PORT_OFFSET) or free ports."""
        if not 1 <= n <= MAX_NODES:
            raise InvalidArgument(f"a local cluster has 1 to {MAX_NODES} nodes, not {n}")
        if base_port is None:
            ports = free_ports(2 * n)
            http_ports, peer_ports = ports[:n], ports[n:]
        else:
            if not 1024 <= base_port <= 65535 - PEER_PORT_OFFSET - n:
                raise InvalidArgument(f"base port {base_port} leaves no room for {n} nodes")
            http_ports = [base_port + i for i in range(n)]
            peer_ports = [base_port + PEER_PORT_OFFSET + i for i in range(n)]
        data_dir = data_dir.absolute()
        nodes = [
            NodeSpec(f"n{i + 1}", http_ports[i], peer_ports[i], data_dir / f"n{i + 1}")
            for i in range(n)
        ]
        return cls(data_dir, nodes, list(node_args))

    @classmethod
    def load(cls, data_dir: Path) -> LocalCluster:
        """The cluster described by ``data_dir/cluster.json`` (``ClusterError`` if none)."""
        doc = read_cluster_file(data_dir)
        try:
            nodes = [NodeSpec.from_json(d) for d in doc["nodes"]]
            node_args = [str(a) for a in doc.get("node_args", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(
                f"{data_dir / CLUSTER_FILE} is not a cluster description: {exc}"
            ) from exc
        return cls(data_dir.absolute(), nodes, node_args)

    def save(self) -> None:
        doc = {
            "seeds": self.seeds,
            "node_args": self.node_args,
            "nodes": [n.to_json() for n in self.nodes],
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.file)

    def node(self, node_id: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.node_id == node_id:
                return spec
        raise InvalidArgument(
            f"no node {node_id!r} in {self.data_dir} (nodes: {', '.join(self.node_ids)})"
        )

    @property
    def node_ids(self) -> list[str]:
        return [n.node_id for n in self.nodes]

    @property
    def urls(self) -> dict[str, str]:
        return {n.node_id: n.url for n in self.nodes}

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / KEYS_DIR

    @property
    def admin(self) -> Identity:
        """The cluster's admin identity (made by the first ``up``)."""
        return Identity.load(keyfiles.admin_identity_file(self.keys_dir))

    def ensure_keys(self) -> None:
        """Make the cluster's keys on first start and admit every node (idempotent).
        A new cluster's admin is ``$DTWZ_IDENTITY`` when that is set, so the identity
        a user's clients sign with administers the clusters the user starts."""
        from dtwz.node.peer import curve_keypair  # the one module that imports zmq

        keyfiles.ensure_keys(self.keys_dir, self.node_ids, curve_keypair, identity_from_env())

    def enroll(self, identity: Identity, node_id: str | None = None, *, expires: int = 600) -> bool:
        """Enroll ``identity`` as a newcomer is enrolled (docs/SECURITY.md §10): the
        admin signs an enrollment capability for its kuid, and the identity presents
        it with its key (``POST /keys`` to ``node_id``, default the first node). True
        when its key object was made now."""
        expiry = int(time.time()) + expires
        cap = keyfiles.enrollment_capability(self.admin, identity.kuid, expiry)
        at = node_id or self.nodes[0].node_id
        with Client(self.node(at).url, identity=identity, audience=at, enrollment=cap) as client:
            return client.register_key()

    def client(self, node_id: str, **kwargs: Any) -> Client:
        """A client of one node, signing as the admin unless ``identity=`` says otherwise."""
        kwargs.setdefault("audience", node_id)
        if "identity" not in kwargs and keyfiles.admin_identity_file(self.keys_dir).exists():
            kwargs["identity"] = self.admin
        return Client(self.node(node_id).url, **kwargs)

    # -- processes ---------------------------------------------------------------------

    def running(self) -> list[str]:
        """IDs of the nodes whose process is alive."""
        return [n.node_id for n in self.nodes if n.pid is not None and _alive(n.pid, n.node_id)]

    def start(
        self, node_ids: Iterable[str] | None = None, *, timeout: float = START_TIMEOUT
    ) -> None:
        """Start nodes (default: all) and wait until the whole cluster is ready."""
        specs = self.nodes if node_ids is None else [self.node(i) for i in node_ids]
        self.ensure_keys()
        started = []
        try:
            for spec in specs:
                if spec.pid is not None and _alive(spec.pid, spec.node_id):
                    raise ClusterError(f"node {spec.node_id} is already running (pid {spec.pid})")
                spec.pid = self._spawn(spec)
                started.append(spec)
            self.save()
            self.wait_ready(timeout=timeout)
        except BaseException:
            self._stop(started, signal.SIGKILL, STOP_TIMEOUT)
            self.save()
            raise

    def _spawn(self, spec: NodeSpec) -> int:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "dtwz",
            "node",
            "run",
            "--node-id",
            spec.node_id,
            "--data-dir",
            str(spec.data_dir),
            "--bind-host",
            HOST,
            "--peer-port",
            str(spec.peer_port),
            "--http-port",
            str(spec.http_port),
            "--seeds",
            ",".join(self.seeds),
            "--keys-dir",
            str(self.keys_dir),
            *self.node_args,
        ]
        with spec.log_path.open("ab") as log:
            log.write(f"--- dtwz cluster: starting {spec.node_id} at {time.ctime()}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives `dtwz cluster up`, misses its Ctrl-C
                close_fds=True,
            )
        _children[proc.pid] = proc
        return proc.pid

    def stop(
        self,
        node_ids: Iterable[str] | None = None,
        *,
        sig: int = signal.SIGTERM,
        timeout: float = STOP_TIMEOUT,
    ) -> list[str]:
        """Stop nodes (default: all) with ``sig``, SIGKILL after ``timeout``; the
        IDs of those that were running."""
        specs = self.nodes if node_ids is None else [self.node(i) for i in node_ids]
        stopped = self._stop(specs, sig, timeout)
        self.save()
        return stopped

    def kill(self, node_id: str) -> None:
        """kill -9 one node (its pid is cleared; its store stays as the kill left it)."""
        self.stop([node_id], sig=signal.SIGKILL)

    def _stop(self, specs: Sequence[NodeSpec], sig: int, timeout: float) -> list[str]:
        live = [s for s in specs if s.pid is not None and _alive(s.pid, s.node_id)]
        for spec in live:
            assert spec.pid is not None
            _signal(spec.pid, sig)
        deadline = time.monotonic() + timeout
        waiting = list(live)
        while waiting and time.monotonic() < deadline:
            waiting = [s for s in waiting if s.pid is not None and _alive(s.pid, s.node_id)]
            if waiting:
                time.sleep(_POLL)
        for spec in waiting:  # did not stop in time
            assert spec.pid is not None
            _signal(spec.pid, signal.SIGKILL)
        deadline = time.monotonic() + STOP_TIMEOUT
        while waiting and time.monotonic() < deadline:
            waiting = [s for s in waiting if s.pid is not None and _alive(s.pid, s.node_id)]
            if waiting:
                time.sleep(_POLL)
        for spec in specs:
            if spec.pid is not None and not _alive(spec.pid, spec.node_id):
                _children.pop(spec.pid, None)
                spec.pid = None
        return [s.node_id for s in live]

    def wait_ready(self, *, timeout: float = START_TIMEOUT) -> None:
        """Wait until every running node is ready and sees exactly the running nodes alive.

        Raises ``ClusterError`` (with the log tail of a node that exited) when a node
        dies or the cluster is not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        expected = {n.node_id for n in self.nodes if n.pid is not None}
        pending = "no node checked yet"
        while True:
            for spec in self.nodes:
                if spec.pid is not None and not _alive(spec.pid, spec.node_id):
                    raise ClusterError(
                        f"node {spec.node_id} exited while the cluster started"
                        f"{_exit_note(spec.pid)}; end of {spec.log_path}:\n{_tail(spec.log_path)}"
                    )
            pending = self._not_ready(expected)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"cluster in {self.data_dir} not ready after {timeout:g}s: {pending}"
                )
            time.sleep(_POLL * 2)

    def _not_ready(self, expected: set[str]) -> str:
        """Why the cluster is not ready yet ('' when it is)."""
        for spec in self.nodes:
            if spec.node_id not in expected:
                continue
            with Client(spec.url, timeout=1.0) as client:
                try:
                    if not client.ready():
                        return f"node {spec.node_id} has not joined"
                    doc = client.cluster_status()
                except DtwzError as exc:
                    return f"node {spec.node_id}: {exc}"
            alive = {m["node_id"] for m in doc.get("members", ()) if m.get("state") == "alive"}
            if alive != expected:
                return (
                    f"node {spec.node_id} sees {sorted(alive)} alive, expected {sorted(expected)}"
                )
        return ""


# -- the three operations ------------------------------------------------------------------


def up(
    n: int | None,
    data_dir: Path,
    base_port: int | None = None,
    *,
    node_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> LocalCluster:
    """Start a local cluster of ``n`` nodes in ``data_dir`` (or restart the stopped
    cluster that ``data_dir`` already holds, on its ports) and wait until it is ready."""
    try:
        cluster = LocalCluster.load(data_dir)
    except ClusterError:
        if (data_dir / CLUSTER_FILE).exists():
            raise
        cluster = None
    if cluster is not None:
        running = cluster.running()
        if running:
            raise ClusterError(
                f"a cluster is already running in {data_dir} (nodes {', '.join(running)}); "
                "stop it with `dtwz cluster down`"
            )
        if n is not None and n != len(cluster.nodes):
            raise InvalidArgument(
                f"{data_dir} holds a cluster of {len(cluster.nodes)} nodes, not {n}; "
                "use another --data folder"
            )
        if node_args:
            cluster.node_args = list(node_args)
    else:
        cluster = LocalCluster.plan(3 if n is None else n, data_dir, base_port, node_args)
    cluster.start(timeout=timeout)
    return cluster


def down(data_dir: Path, *, timeout: float = STOP_TIMEOUT) -> list[str]:
    """Stop every node of the cluster in ``data_dir``; the IDs of those that ran.
    A folder with no cluster, or a stopped one, is not an error."""
    if not (data_dir / CLUSTER_FILE).exists():
        return []
    return LocalCluster.load(data_dir).stop(timeout=timeout)


def status(data_dir: Path, *, timeout: float = 2.0) -> list[NodeStatus]:
    """Per node of the cluster in ``data_dir``: running, members seen, objects, cache."""
    cluster = LocalCluster.load(data_dir)
    pids = {n.node_id: n.pid if n.pid and _alive(n.pid, n.node_id) else None for n in cluster.nodes}
    rows = survey(cluster.urls, timeout=timeout)
    for row in rows:
        row.pid = pids.get(row.node_id)
        if row.pid is None and not row.up:
            row.error = "not running"
    return rows


def survey(urls: dict[str, str], *, timeout: float = 2.0) -> list[NodeStatus]:
    """Ask each node (node ID -> URL) for its status, in parallel."""
    if not urls:
        return []

    def ask(node_id: str, url: str) -> NodeStatus:
        row = NodeStatus(node_id, url)
        try:
            with Client(url, timeout=timeout) as client:
                row.ready = client.ready()
                doc = client.cluster_status()
        except DtwzError as exc:
            row.error = str(exc)
            return row
        row.up = True
        members = doc.get("members", [])
        row.members = sum(m.get("state") == "alive" for m in members)
        row.objects = doc.get("objects")
        row.copies = doc.get("copies")
        row.cache_hits = doc.get("cache", {}).get("hits")
        row.cache_misses = doc.get("cache", {}).get("misses")
        row.directory_records = doc.get("directory_records")
        return row

    with ThreadPoolExecutor(min(16, len(urls))) as pool:
        return list(pool.map(lambda item: ask(*item), urls.items()))


# -- helpers -----------------------------------------------------------------------------


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (all held while chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _alive(pid: int, node_id: str) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours: the pid was reused by another user's process
    proc_dir = Path(f"/proc/{pid}")
    if not proc_dir.exists():
        return True  # no /proc (macOS): trust the signal check
    try:
        state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False  # exited while we looked
    return state not in ("Z", "X") and b"dtwz" in b" ".join(argv) and node_id.encode() in argv


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _exit_note(pid: int) -> str:
    proc = _children.get(pid)
    code = proc.poll() if proc is not None else None
    return "" if code is None else f" (exit status {code})"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read: {exc})"
    return "\n".join(text.splitlines()[-lines:])
