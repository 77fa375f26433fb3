"""The cluster half of the ``dtwz`` command line: ``node``, ``cluster`` and ``remote``.

- ``dtwz node run``: one node in the foreground. Its flags map one to one onto the
  fields of ``NodeConfig`` (generated from the dataclass, so they cannot drift);
  ``--config FILE`` and ``DTWZ_*`` variables fill the rest, flags win. Logs go to
  stderr; SIGTERM or Ctrl-C ends it cleanly with status 0.
- ``dtwz cluster up/status/down``: a local cluster of node processes in a folder
  (``dtwz.node.launcher``).
- ``dtwz remote --node URL ...``: object commands against any node of a running
  cluster (``dtwz.client.api``): ``create``, ``put``, ``get``, ``show``, ``link``,
  ``deref``, ``locate``, ``status``; every one takes an object ID or a name of the
  namespace (``/kvs/index``). The namespace commands (``resolve``, ``ls``,
  ``mkdir``, ``bind``, ``ln``, ``mv``, ``rm``) live in ``dtwz.cli_names``.
  ``--node`` defaults to ``DTWZ_NODE``, else to a node of the local cluster in
  ``DTWZ_CLUSTER`` or ./data/cluster when there is one (``dtwz.node.launcher.connect``),
  else to http://127.0.0.1:7000 (``dtwz node run``'s default port).

Why a ``remote`` group rather than a global ``--node`` switch on the local
commands: half of the local commands have no remote meaning (``init``, ``ls``,
``checkpoint`` work on a store folder), the local ones keep their exact
behaviour, and a command line says plainly whether it touches a folder or a
cluster. The remote commands take the same arguments and print the same shapes
as their local namesakes (``put`` always appends 8-byte aligned: the node API has
no ``--align``), so moving a script from a store to a cluster is adding
``remote``.

Errors end as one ``error: ...`` line, exit status 2 for bad input and 1 for
refusals or unreachable nodes, exactly as in ``dtwz.cli`` (whose group handles
them). This module registers its groups on ``dtwz.cli.cli`` when imported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.table import Table

from dtwz.cli import (
    OFFSET,
    PROT,
    SIZE,
    CliConfig,
    _fail,
    _flag_names,
    _human_size,
    _prot_text,
    _read_data,
    cli,
    emit_bytes,
    json_option,
    pass_config,
)
from dtwz.client.api import Client, ObjectRef, Op
from dtwz.errors import ClusterError, DtwzError
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, FotFlags, ObjectFlags, Protection
from dtwz.format.pointers import PersistentPointer
from dtwz.node import launcher as local_cluster
from dtwz.node.config import NodeConfig
from dtwz.node.launcher import NodeStatus
from dtwz.resolver.names import is_name, split_path
from dtwz.security import keyfiles
from dtwz.security.auth import decode_capability_header
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE

log = logging.getLogger("dtwz.node")

DEFAULT_NODE_URL = "http://127.0.0.1:7000"
DEFAULT_CLUSTER_DIR = "./data/cluster"
EXIT_RUNTIME = 1

# -- dtwz node run ----------------------------------------------------------------------

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


@cli.group()
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


# -- dtwz cluster up / status / down ------------------------------------------------------

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


@cli.group()
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
    _emit_status(cfg, as_json, rows, {"data_dir": str(data_dir.absolute())})


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


def _emit_status(
    cfg: CliConfig, as_json: bool, rows: list[NodeStatus], extra: dict[str, Any]
) -> None:
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
        _fail(f"node {r.node_id}: {r.error or 'not answering'}", EXIT_RUNTIME)
    if down:
        click.get_current_context().exit(EXIT_RUNTIME)


# -- dtwz remote ...: object commands against a node ------------------------------------


class ObjectRefParam(click.ParamType[ObjectRef]):
    """An object ID (32 hex digits) or a name of the namespace (an absolute path)."""

    name = "OID|NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ObjectId):
            return value
        text = str(value)
        try:
            if is_name(text):
                split_path(text)
                return text
            return ObjectId.parse(text)
        except DtwzError as exc:
            self.fail(f"{exc} (an object is 32 hex digits or a name like /kvs/index)", param, ctx)


REF = ObjectRefParam()


@cli.group()
@click.option(
    "--node",
    "url",
    envvar="DTWZ_NODE",
    show_envvar=True,
    default=None,
    help="URL of any node of the cluster.  [default: a node of the local cluster in "
    f"$DTWZ_CLUSTER or {DEFAULT_CLUSTER_DIR}, else {DEFAULT_NODE_URL}]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the node.",
)
@click.option(
    "--capability",
    "capabilities",
    multiple=True,
    envvar="DTWZ_CAPABILITY",
    help="A capability to send with each request (repeat; `dtwz cap grant`).",
)
@click.pass_context
def remote(
    ctx: click.Context, url: str | None, timeout: float, capabilities: tuple[str, ...]
) -> None:
    """Objects and names of a running cluster, through any node.

    Wherever an object is asked for, its ID or its name (/kvs/index) will do.
    """
    base = ctx.find_object(CliConfig) or CliConfig(Path("."), False)
    ctx.obj = RemoteConfig(base, url, timeout, tuple(capabilities))


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteConfig:
    base: CliConfig
    url: str | None
    timeout: float
    capabilities: tuple[str, ...] = ()

    def client(self) -> Client:
        client = self._client()
        for text in self.capabilities:
            client.add_capability(decode_capability_header(text))
        return client

    def _client(self) -> Client:
        identity = local_cluster.default_identity()  # $DTWZ_IDENTITY, else the local admin
        if self.url is not None:
            return Client(self.url, timeout=self.timeout, identity=identity)
        folder = Path(os.environ.get("DTWZ_CLUSTER", DEFAULT_CLUSTER_DIR))
        if (folder / local_cluster.CLUSTER_FILE).exists():  # `dtwz cluster up` ran here
            return local_cluster.connect(timeout=self.timeout, identity=identity)
        return Client(DEFAULT_NODE_URL, timeout=self.timeout, identity=identity)

    def emit(self, as_json: bool, doc: dict[str, Any], text: str) -> None:
        self.base.emit(as_json, doc, text)

    @property
    def json(self) -> bool:
        return self.base.json


pass_remote = click.make_pass_decorator(RemoteConfig)


@remote.command("create")
@click.option(
    "--size",
    type=SIZE,
    default=DEFAULT_OBJECT_SIZE,
    help="Maximum size, a power of two from 4K to 1G.  [default: 1M]",
)
@click.option("--immutable", is_flag=True, help="No writes after this creating transaction.")
@click.option("--volatile", is_flag=True, help="Mark the object VOLATILE.")
@click.option("--prot", type=PROT, default="rw", show_default=True, help="Default protections.")
@click.option("--data", "text", metavar="TEXT", help="Initial data (UTF-8 text).")
@click.option("--file", type=click.File("rb"), help="Initial data from a file ('-' for stdin).")
@click.option("--home", metavar="NODE_ID", help="Node to home the object.  [default: --node]")
@json_option
@pass_remote
def remote_create(
    rc: RemoteConfig,
    size: int,
    immutable: bool,
    volatile: bool,
    prot: Protection,
    text: str | None,
    file: BinaryIO | None,
    home: str | None,
    as_json: bool,
) -> None:
    """Create an object in the cluster and print its ID."""
    data = _read_data(text, file, stdin_default=False) or b""
    flags = (ObjectFlags.IMMUTABLE if immutable else 0) | (ObjectFlags.VOLATILE if volatile else 0)
    with rc.client() as client:
        oid = client.create(size, data, node=home, flags=int(flags), prot=int(prot))
        doc = _info_doc(client.info(oid))
    doc |= {"offset": DATA_START if data else None, "length": len(data)}
    lines = [str(oid)]
    if data:
        lines.append(f"data at {DATA_START:#x}, {len(data)} bytes (home {doc['home']})")
    rc.emit(as_json, doc, "\n".join(lines))


@remote.command("put")
@click.argument("oid", type=REF)
@click.argument("text", metavar="[DATA]", required=False)
@click.option("--file", type=click.File("rb"), help="Read the data from a file ('-' for stdin).")
@click.option("--offset", type=OFFSET, help="Write here instead of appending.")
@json_option
@pass_remote
def remote_put(
    rc: RemoteConfig,
    oid: ObjectRef,
    text: str | None,
    file: BinaryIO | None,
    offset: int | None,
    as_json: bool,
) -> None:
    """Write bytes into an object at its home (append unless --offset)."""
    data = _read_data(text, file, stdin_default=True)
    if not data:
        raise click.UsageError("nothing to write: the data is empty")
    if offset is not None and offset < DATA_START:
        raise click.BadParameter(f"{offset:#x} is in the header page", param_hint="'--offset'")
    with rc.client() as client:
        oid = client.resolve(oid)
        if offset is None:
            result = client.transact([Op.append(oid, data)])
            offset, version = result.results[0], result.versions.get(oid, 0)
        else:
            version = client.write(oid, offset, data)
    doc = {"object_id": str(oid), "offset": offset, "length": len(data), "version": version}
    rc.emit(as_json, doc, f"wrote {len(data)} bytes at {offset:#x}")


@remote.command("get")
@click.argument("oid", type=REF)
@click.option("--offset", type=OFFSET, default=DATA_START, help="Start here.  [default: 0x1000]")
@click.option("--length", type=OFFSET, help="How many bytes  [default: up to the data end]")
@click.option("--latest", is_flag=True, help="Make sure the copy read is the home's newest.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
@click.option(
    "--encoding",
    type=click.Choice(["base64", "hex"]),
    default="base64",
    show_default=True,
    help="How --json carries the bytes.",
)
@json_option
@pass_remote
def remote_get(
    rc: RemoteConfig,
    oid: ObjectRef,
    offset: int,
    length: int | None,
    latest: bool,
    out: Path | None,
    encoding: str,
    as_json: bool,
) -> None:
    """Read bytes of an object, wherever it lives, to stdout or a file."""
    with rc.client() as client:
        oid = client.resolve(oid)
        data = client.read(oid, offset, length, latest=latest)
    doc: dict[str, Any] = {"object_id": str(oid), "offset": offset, "length": len(data)}
    emit_bytes(rc.emit, rc.json or as_json, doc, data, out, encoding)


def _info_doc(info: dict[str, Any]) -> dict[str, Any]:
    """The node's object JSON in the shape of ``dtwz show --json``, plus the home."""
    fot = []
    for entry in info.get("fot", []):
        row: dict[str, Any] = {"index": entry["index"]}
        if "error" in entry:
            fot.append(row | {"kind": "CORRUPT", "error": entry["error"]})
            continue
        row["flags"] = _flag_names(int(entry["flags"]), FotFlags)
        if not entry.get("valid"):
            row["kind"] = "EMPTY"
        elif "target" in entry:
            row |= {"kind": "ID", "target": entry["target"]}
        else:
            row |= {"kind": "NAME", "name": entry.get("name")}
        fot.append(row)
    return {
        "object_id": info["id"],
        "size": info["max_size"],
        "flags": _flag_names(int(info["flags"]), ObjectFlags),
        "prot": _prot_text(int(info["default_prot"])),
        "data_len": info["data_len"],
        "data_end": info["data_end"],
        "version": info["version"],
        "fot_count": info["fot_count"],
        "free_bytes": info["free"],
        "home": info.get("home"),
        "fot": fot,
    }


@remote.command("show")
@click.argument("oid", type=REF)
@click.option("--latest", is_flag=True, help="Make sure the copy shown is the home's newest.")
@json_option
@pass_remote
def remote_show(rc: RemoteConfig, oid: ObjectRef, latest: bool, as_json: bool) -> None:
    """Show an object's header, home and FOT entries."""
    with rc.client() as client:
        doc = _info_doc(client.info(client.resolve(oid), latest=latest))
    lines = [
        f"object     {doc['object_id']}",
        f"home       {doc['home']}",
        f"size       {doc['size']} ({_human_size(doc['size'])})",
        f"flags      {' '.join(doc['flags']) or '-'}",
        f"prot       {doc['prot']}",
        f"data       {DATA_START:#x}..{doc['data_end']:#x} ({doc['data_len']} bytes)",
        f"version    {doc['version']}",
        f"fot_count  {doc['fot_count']}",
        f"free       {doc['free_bytes']} bytes",
    ]
    if doc["fot"]:
        lines.append(f"\n{'INDEX':>5}  {'KIND':7} {'TARGET / NAME':32}  FLAGS")
        for row in doc["fot"]:
            what = row.get("target") or (repr(row["name"]) if row.get("name") else row.get("error"))
            flags = "|".join(row.get("flags", [])) or "-"
            lines.append(f"{row['index']:>5}  {row['kind']:7} {what or '-':32}  {flags}")
    rc.emit(as_json, doc, "\n".join(lines))


@remote.command("link")
@click.argument("source", type=REF)
@click.argument("target", type=REF)
@click.option("--at", type=OFFSET, help="Where in SOURCE to store the pointer  [default: append]")
@click.option(
    "--target-offset",
    type=OFFSET,
    default=DATA_START,
    help="Where in TARGET the pointer leads.  [default: 0x1000]",
)
@click.option(
    "--late",
    is_flag=True,
    help="Late binding: store the name TARGET (an FOT name entry), resolved at "
    "every dereference, so rebinding the name redirects the pointer.",
)
@json_option
@pass_remote
def remote_link(
    rc: RemoteConfig,
    source: ObjectRef,
    target: ObjectRef,
    at: int | None,
    target_offset: int,
    late: bool,
    as_json: bool,
) -> None:
    """Store in SOURCE a persistent pointer to TARGET (any homes).

    A name TARGET is resolved now, unless --late. Without --at, 8 bytes are
    appended to SOURCE first (a separate transaction).
    """
    if at is not None and at < DATA_START:
        raise click.BadParameter(f"{at:#x} is in the header page", param_hint="'--at'")
    if late and not (isinstance(target, str) and is_name(target)):
        raise click.BadParameter("--late needs a name, not an ID", param_hint="'TARGET'")
    with rc.client() as client:
        source = client.resolve(source)
        if at is None:
            at = client.append(source, bytes(8))
        if late:
            assert isinstance(target, str)
            word = client.write_name_pointer(source, at, target, target_offset)
        else:
            target = client.resolve(target)
            word = client.write_pointer(source, at, target, target_offset)
    pointer = PersistentPointer.decode(word)
    doc = {
        "object_id": str(source),
        "at": at,
        "pointer": str(pointer),
        "word": word,
        "fot_index": pointer.fot_index,
        "target": str(target),
        "offset": target_offset,
        "late": late,
    }
    rc.emit(as_json, doc, f"{pointer}  (stored at {at:#x}; leads to {target}:{target_offset:#x})")


@remote.command("deref")
@click.argument("oid", type=REF)
@click.option("--at", type=OFFSET, required=True, help="Where in OID the pointer is stored.")
@json_option
@pass_remote
def remote_deref(rc: RemoteConfig, oid: ObjectRef, at: int, as_json: bool) -> None:
    """Follow the pointer stored in OID at --at, fetching objects as needed."""
    with rc.client() as client:
        oid = client.resolve(oid)
        source = client.get(oid)
        word = source.read_u64(at)
        try:
            target, offset = source.follow(word)
        except DtwzError as exc:  # same type, so the exit status stays right; plus where
            raise type(exc)(f"the pointer at {at:#x} in {oid}: {exc}") from exc
        home = client.locate(target.object_id).home
    pointer = PersistentPointer.decode(word)
    doc = {
        "object_id": str(oid),
        "at": at,
        "pointer": str(pointer),
        "word": word,
        "target": str(target.object_id),
        "offset": offset,
        "home": home,
    }
    rc.emit(as_json, doc, f"{target.object_id}:{offset:#x}  (pointer {pointer}, home {home})")


@remote.command("locate")
@click.argument("oid", type=REF)
@click.option("--refresh", is_flag=True, help="Ask the directory, not the node's cache.")
@json_option
@pass_remote
def remote_locate(rc: RemoteConfig, oid: ObjectRef, refresh: bool, as_json: bool) -> None:
    """Show where an object lives: home, version, epoch (and copies, at the home)."""
    with rc.client() as client:
        oid = client.resolve(oid)
        where = client.locate(oid, refresh=refresh)
    doc = {
        "object_id": str(oid),
        "home": where.home,
        "version": where.version,
        "epoch": where.epoch,
        "copies": list(where.copies),
    }
    copies = f", copies on {', '.join(where.copies)}" if where.copies else ""
    rc.emit(
        as_json,
        doc,
        f"{oid}  home {where.home}, version {where.version}, epoch {where.epoch}{copies}",
    )


@remote.command("status")
@json_option
@pass_remote
def remote_status(rc: RemoteConfig, as_json: bool) -> None:
    """Show the cluster as the node sees it: members, objects, copies, cache figures.

    Exits with status 1 when a member is not answering.
    """
    with rc.client() as client:
        seen = client.cluster_status()
        asked = client.url
    members = {str(m["node_id"]): str(m["http"]) for m in seen.get("members", [])}
    states = {str(m["node_id"]): str(m["state"]) for m in seen.get("members", [])}
    live = {i: url for i, url in members.items() if states[i] in ("alive", "suspect")}
    rows = local_cluster.survey(live, timeout=min(rc.timeout, 2.0))
    for node_id in sorted(set(members) - set(live)):
        rows.append(NodeStatus(node_id, members[node_id], error=f"member {states[node_id]}"))
    rows.sort(key=lambda r: r.node_id)
    _emit_status(rc.base, as_json, rows, {"asked": asked, "node_id": seen.get("node_id")})


import dtwz.cli_graph  # noqa: E402  (registers `dtwz graph`)
import dtwz.cli_names  # noqa: E402  (registers the namespace commands on `remote`)
import dtwz.cli_security  # noqa: E402, F401  (registers `dtwz keys`, `identity` and `cap`)
