"""The namespace commands of ``dtwz remote``: ``resolve``, ``ls``, ``mkdir``, ``bind``,
``ln``, ``mv``, ``rm`` (the package root adds ``COMMANDS`` to the ``remote`` group).

They sit in the ``remote`` group beside the object commands rather than in a group
of their own because names and IDs are interchangeable there: every remote object
command takes either, and these commands are what makes a name. They speak to one
node (``--node`` / ``DTWZ_NODE``), which resolves names through the cluster's
namespace and runs changes at the home of each directory (docs/NAMES.md).

Output follows the other remote commands: one line of text, or one JSON document
with ``--json``. Errors are one ``error: ...`` line: status 2 for a malformed name
(``InvalidName`` is an ``InvalidArgument``), 1 for a name not found, already
bound, a loop or an unreachable node.
"""

from __future__ import annotations

from typing import Any

import click

from dtwz.cli.common import PROT, REF, RemoteConfig, json_option, pass_remote
from dtwz.client.api import Binding, ObjectRef
from dtwz.format.layout import Protection
from dtwz.format.names import is_name


def _binding_doc(binding: Binding) -> dict[str, Any]:
    oid = str(binding.object_id) if binding.object_id else None
    doc: dict[str, Any] = {"name": binding.name, "kind": binding.kind, "object_id": oid}
    if binding.text:
        doc["text"] = binding.text
    return doc


def _binding_line(binding: Binding) -> str:
    if binding.kind == "symlink":
        return f"{binding.name} -> {binding.text}"
    suffix = "/" if binding.kind == "directory" else ""
    return f"{binding.object_id}  {binding.name}{suffix}"


@click.command("resolve")
@click.argument("ref", type=REF, metavar="NAME|OID")
@click.option("--nofollow", is_flag=True, help="Do not follow a symbolic link at the end.")
@json_option
@pass_remote
def remote_resolve(rc: RemoteConfig, ref: ObjectRef, nofollow: bool, as_json: bool) -> None:
    """Show what a name (or an ID) stands for: ID, home, version, epoch, copies."""
    doc: dict[str, Any] = {"name": ref if isinstance(ref, str) and is_name(ref) else None}
    with rc.client() as client:
        if doc["name"] is not None:
            binding = client.lookup(str(ref), nofollow=nofollow)
            doc["kind"] = binding.kind
            if binding.object_id is None:  # a symbolic link, not followed
                doc |= {"object_id": None, "text": binding.text}
                rc.emit(as_json, doc, f"{ref} -> {binding.text}  (symbolic link)")
                return
            oid = binding.object_id
        else:
            oid = client.resolve(ref)
        where = client.locate(oid)
    doc |= {
        "object_id": str(oid),
        "home": where.home,
        "version": where.version,
        "epoch": where.epoch,
        "copies": list(where.copies),
    }
    copies = f", copies on {', '.join(where.copies)}" if where.copies else ""
    kind = f" ({doc['kind']})" if doc.get("kind") == "directory" else ""
    rc.emit(
        as_json,
        doc,
        f"{oid}{kind}  home {where.home}, version {where.version}, epoch {where.epoch}{copies}",
    )


@click.command("ls")
@click.argument("path", default="/")
@json_option
@pass_remote
def remote_ls(rc: RemoteConfig, path: str, as_json: bool) -> None:
    """List a directory of the namespace (default: the root): ID and name per entry,
    '/' after directories, '-> PATH' for symbolic links."""
    with rc.client() as client:
        entries = client.listdir(path)
    doc = {"path": path, "entries": [_binding_doc(e) for e in entries]}
    rc.emit(as_json, doc, "\n".join(_binding_line(e) for e in entries))


@click.command("mkdir")
@click.argument("path")
@click.option(
    "-p",
    "--parents",
    is_flag=True,
    help="Make missing parents too; an existing directory is not an error.",
)
@click.option("--home", metavar="NODE_ID", help="Node to home it.  [default: its parent's home]")
@click.option(
    "--prot",
    type=PROT,
    default="r",
    show_default=True,
    help="'r': anyone may look names up in it; '-': only its owner, the admin and "
    "capabilities. Changing its names is always its owner's.",
)
@json_option
@pass_remote
def remote_mkdir(
    rc: RemoteConfig,
    path: str,
    parents: bool,
    home: str | None,
    prot: Protection,
    as_json: bool,
) -> None:
    """Make a directory, owned by the identity the command signs as; print its ID."""
    with rc.client() as client:
        oid = client.mkdir(path, parents=parents, home=home, prot=prot)
    rc.emit(as_json, {"path": path, "object_id": str(oid)}, str(oid))


@click.command("bind")
@click.argument("path")
@click.argument("target", type=REF, metavar="OID|NAME")
@click.option("--replace", is_flag=True, help="Rebind a name already bound to an object.")
@json_option
@pass_remote
def remote_bind(
    rc: RemoteConfig, path: str, target: ObjectRef, replace: bool, as_json: bool
) -> None:
    """Bind the name PATH to an object (a name TARGET is resolved now).

    A name bound already is refused (exit status 1) unless --replace; a late-bound
    pointer to PATH then leads to the new object.
    """
    with rc.client() as client:
        oid = client.resolve(target)
        replaced = client.bind(path, oid, replace=replace)
    doc = {"path": path, "object_id": str(oid), "replaced": str(replaced) if replaced else None}
    note = f" (was {replaced})" if replaced else ""
    rc.emit(as_json, doc, f"{path} -> {oid}{note}")


@click.command("ln")
@click.argument("target")
@click.argument("path")
@click.option("-s", "--symbolic", is_flag=True, help="A symbolic link holding TARGET's text.")
@json_option
@pass_remote
def remote_ln(rc: RemoteConfig, target: str, path: str, symbolic: bool, as_json: bool) -> None:
    """Make PATH another name of TARGET, or with -s a symbolic link to the path TARGET
    (resolved each time PATH is, relative to PATH's directory unless absolute)."""
    with rc.client() as client:
        if symbolic:
            client.symlink(path, target)
            rc.emit(as_json, {"path": path, "text": target}, f"{path} -> {target}")
            return
        oid = client.resolve(REF.convert(target, None, None))
        client.bind(path, oid)
    rc.emit(as_json, {"path": path, "object_id": str(oid)}, f"{path} -> {oid}")


@click.command("mv")
@click.argument("src")
@click.argument("dst")
@click.option("--replace", is_flag=True, help="Replace DST if it is bound to an object.")
@json_option
@pass_remote
def remote_mv(rc: RemoteConfig, src: str, dst: str, replace: bool, as_json: bool) -> None:
    """Move the binding SRC to DST (a directory moves with everything under it)."""
    with rc.client() as client:
        moved = client.rename(src, dst, replace=replace)
    rc.emit(as_json, {"from": src, "to": dst, **_binding_doc(moved)}, f"{src} -> {dst}")


@click.command("rm")
@click.argument("path")
@json_option
@pass_remote
def remote_rm(rc: RemoteConfig, path: str, as_json: bool) -> None:
    """Remove the binding PATH (a directory only when empty). The object stays."""
    with rc.client() as client:
        gone = client.unbind(path)
    what = gone.text if gone.kind == "symlink" else str(gone.object_id)
    rc.emit(as_json, {"path": path, **_binding_doc(gone)}, f"unbound {path} (was {what})")


COMMANDS: list[click.Command] = [
    remote_resolve,
    remote_ls,
    remote_mkdir,
    remote_bind,
    remote_ln,
    remote_mv,
    remote_rm,
]
