"""``dtwz remote --node URL ...``: the object commands against any node of a running
cluster (``dtwz.client.api``): ``create``, ``put``, ``get``, ``show``, ``link``,
``deref``, ``locate``, ``status``. Every one takes an object ID or a name of the
namespace (``/kvs/index``); the namespace commands of the same group (``resolve``,
``ls``, ``mkdir``, ...) are in ``dtwz.cli.names``, and the package root adds them
to ``remote``. Which node, identity and capabilities: ``RemoteConfig`` in
``dtwz.cli.common``.

Why a ``remote`` group rather than a global ``--node`` switch on the local
commands: half of the local commands have no remote meaning (``init``, ``ls``,
``checkpoint`` work on a store folder), the local ones keep their exact
behaviour, and a command line says plainly whether it touches a folder or a
cluster. The remote commands take the same arguments and print the same shapes
as their local namesakes (``put`` always appends 8-byte aligned: the node API has
no ``--align``), so moving a script from a store to a cluster is adding
``remote``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import click

from dtwz.cli.cluster import emit_status
from dtwz.cli.common import (
    DEFAULT_CLUSTER_DIR,
    DEFAULT_NODE_URL,
    OFFSET,
    PROT,
    REF,
    SIZE,
    RemoteConfig,
    base_config,
    emit_bytes,
    flag_names,
    human_size,
    json_option,
    pass_remote,
    prot_text,
    read_data,
)
from dtwz.client.api import ObjectRef, Op
from dtwz.errors import DtwzError
from dtwz.format.layout import DATA_START, FotFlags, ObjectFlags, Protection
from dtwz.format.names import is_name
from dtwz.format.pointers import PersistentPointer
from dtwz.node import launcher as local_cluster
from dtwz.node.launcher import NodeStatus
from dtwz.store.transaction import DEFAULT_OBJECT_SIZE


@click.group()
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
    ctx.obj = RemoteConfig(base_config(ctx), url, timeout, tuple(capabilities))


@remote.command("create")
@click.option(
    "--size",
    type=SIZE,
    default=DEFAULT_OBJECT_SIZE,
    help="Maximum size, a power of two from 4K to 1G.  [default: 1M]",
)
@click.option("--immutable", is_flag=True, help="No writes after this creating transaction.")
@click.option("--volatile", is_flag=True, help="Mark the object VOLATILE.")
@click.option(
    "--prot",
    type=PROT,
    default="-",
    show_default=True,
    help="Rights everyone has without a capability (letters from rwx; '-': none, the "
    "object is its owner's alone).",
)
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
    data = read_data(text, file, stdin_default=False) or b""
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
    data = read_data(text, file, stdin_default=True)
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
        row["flags"] = flag_names(int(entry["flags"]), FotFlags)
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
        "flags": flag_names(int(info["flags"]), ObjectFlags),
        "prot": prot_text(int(info["default_prot"])),
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
        f"size       {doc['size']} ({human_size(doc['size'])})",
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
    emit_status(rc.base, as_json, rows, {"asked": asked, "node_id": seen.get("node_id")})
