"""``dtwz graph``: the object graph of a running cluster, through any node.

``dtwz graph ROOT`` draws what is reachable from ROOT (a tree in the terminal, or
``--format dot|svg|html|json`` to a file); the subcommands prefetch it (with a
progress bar), migrate objects, co-locate a root's objects, store functions as
code objects and run them where the data is (docs/GRAPH.md). Output and errors
follow the ``remote`` commands: text or one JSON document with ``--json``; one
``error: ...`` line, status 2 for bad input and 1 for failures at run time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dtwz.cli.common import REF, RemoteConfig, base_config, json_option, pass_remote
from dtwz.client.api import ObjectRef
from dtwz.graph import render

FORMATS = ("tree", *render.FORMATS)


class _RootOrCommand(click.Group):
    """``dtwz graph ROOT ...`` means ``dtwz graph show ROOT ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {o for p in self.params for o in p.opts if not getattr(p, "is_flag", False)}
        at = 0
        while at < len(args):  # the first word that is not a group option or its value
            if args[at] in takes_value:
                at += 2
            elif args[at].startswith("-"):
                at += 1
            else:
                break
        if at < len(args) and args[at] not in self.commands:
            args = [*args[:at], "show", *args[at:]]
        return super().parse_args(ctx, args)


def _limits(command: Any) -> Any:
    budget = click.option(
        "--budget",
        type=click.IntRange(1),
        default=None,
        help="Stop after about this many bytes of objects.",
    )
    depth = click.option(
        "--depth",
        type=click.IntRange(0),
        default=None,
        help="Follow pointers at most this many steps from ROOT.",
    )
    return depth(budget(command))


@click.group(cls=_RootOrCommand, invoke_without_command=False)
@click.option(
    "--node",
    "url",
    envvar="DTWZ_NODE",
    show_envvar=True,
    default=None,
    help="URL of any node of the cluster.  [default: the local cluster]",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the node.",
)
@click.pass_context
def graph(ctx: click.Context, url: str | None, timeout: float) -> None:
    """The object graph from ROOT: draw it, prefetch it, migrate or co-locate it,
    run code where it lives.  `dtwz graph ROOT` draws it."""
    ctx.obj = RemoteConfig(base_config(ctx), url, timeout)


@graph.command("show")
@click.argument("root", type=REF)
@_limits
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="tree",
    show_default=True,
    help="tree: in the terminal; the others are written to --out (or stdout).",
)
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write the drawing here."
)
@click.option(
    "--link",
    is_flag=True,
    help="Print a link to the node's web view of the drawing instead (signed: "
    "good once, for a minute).",
)
@pass_remote
def graph_show(
    rc: RemoteConfig,
    root: ObjectRef,
    depth: int | None,
    budget: int | None,
    fmt: str,
    out: Path | None,
    link: bool,
) -> None:
    """Draw the objects reachable from ROOT, coloured by home node."""
    with rc.client() as client:
        if link:
            click.echo(
                client.graph_link(
                    root, "html" if fmt == "tree" else fmt, depth=depth, budget=budget
                )
            )
            return
        g = client.walk(root, depth=depth, budget=budget)
    if fmt == "tree":
        if out is not None:
            out.write_text(render.tree_text(g, width=120), "utf-8")
        else:
            Console().print(render.tree(g))
            objects = sum(1 for _, a in g.nodes(data=True) if a.get("kind") == "object")
            cut = " (cut short by --depth/--budget)" if g.graph.get("truncated") else ""
            click.echo(
                f"{objects} objects, {g.number_of_edges()} pointers, "
                f"homes {', '.join(g.graph['homes'])}{cut}"
            )
        return
    text = render.render(g, fmt)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text, "utf-8")
        click.echo(f"wrote {out} ({fmt}, {g.number_of_nodes()} objects)")


@graph.command("prefetch")
@click.argument("root", type=REF)
@_limits
@click.option("--node-only", is_flag=True, help="Copy to the node only, not to this process.")
@json_option
@pass_remote
def graph_prefetch(
    rc: RemoteConfig,
    root: ObjectRef,
    depth: int | None,
    budget: int | None,
    node_only: bool,
    as_json: bool,
) -> None:
    """Bring everything reachable from ROOT to the node, in batches per holder."""
    show_bar = not as_json and sys.stderr.isatty()
    columns = (TextColumn("prefetch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with (
        rc.client() as client,
        Progress(*columns, disable=not show_bar, console=Console(stderr=True)) as bar,
    ):
        task = bar.add_task("prefetch", total=None)

        def progress(done: int, _bytes: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        result = client.prefetch(
            root, depth=depth, budget=budget, to_client=not node_only, progress=progress
        )
    doc = {
        "objects": result.objects,
        "fetched_by_node": result.fetched_by_node,
        "received": result.received,
        "bytes": result.bytes,
        "requests": result.requests,
    }
    rc.emit(
        as_json,
        doc,
        f"{result.objects} objects reachable; the node fetched "
        f"{result.fetched_by_node} in {result.requests} batch requests",
    )


@graph.command("migrate")
@click.argument("objects", nargs=-1, required=True, type=REF)
@click.option("--to", "to_node", required=True, metavar="NODE_ID", help="The new home.")
@click.option(
    "--reachable",
    is_flag=True,
    help="Move everything OBJECTS reach too (a linked group; not directories).",
)
@json_option
@pass_remote
def graph_migrate(
    rc: RemoteConfig, objects: tuple[ObjectRef, ...], to_node: str, reachable: bool, as_json: bool
) -> None:
    """Move the home of OBJECTS to another node (no write lost or applied twice)."""
    with rc.client() as client:
        doc = client.migrate(list(objects), to_node, reachable=reachable)
    moved = sum(len(m["versions"]) for m in doc["migrated"])
    rc.emit(as_json, doc, f"{moved} objects now homed on {to_node}")


@graph.command("colocate")
@click.argument("root", type=REF)
@_limits
@click.option(
    "--capacity",
    type=click.IntRange(1),
    default=None,
    help="Bytes of this graph any one node may home.",
)
@click.option("--dry-run", is_flag=True, help="Show the plan; move nothing.")
@json_option
@pass_remote
def graph_colocate(
    rc: RemoteConfig,
    root: ObjectRef,
    depth: int | None,
    budget: int | None,
    capacity: int | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Re-home ROOT's objects so that fewer pointers cross nodes (weighted by use)."""
    with rc.client() as client:
        doc = client.colocate(root, depth=depth, budget=budget, capacity=capacity, dry_run=dry_run)
    verb = "would move" if dry_run else "moved"
    rc.emit(
        as_json,
        doc,
        f"{verb} {len(doc['moves'])} objects ({doc['bytes_moved']} bytes): "
        f"cross-node pointers {doc['cross_before']} -> {doc['cross_after']}",
    )


@graph.command("put-code")
@click.argument("source", type=click.File("r", encoding="utf-8"))
@click.option("--entry", required=True, metavar="NAME", help="The function to call.")
@click.option("--home", metavar="NODE_ID", help="Node to home the code object.")
@json_option
@pass_remote
def graph_put_code(
    rc: RemoteConfig, source: Any, entry: str, home: str | None, as_json: bool
) -> None:
    """Store the function ENTRY of a Python SOURCE file as a code object.

    It is called as ENTRY(api, root, *args): api is a dtwz Client of the node it
    runs on, root the root object's ID; it returns something JSON can hold."""
    with rc.client() as client:
        oid = client.put_code(source.read(), entry, node=home)
    rc.emit(as_json, {"id": oid.hex(), "entry": entry}, oid.hex())


@graph.command("run")
@click.argument("code", type=REF)
@click.argument("root", type=REF)
@click.argument("args", nargs=-1)
@click.option(
    "--where",
    default="auto",
    show_default=True,
    metavar="auto|here|NODE_ID",
    help="auto: where fewer bytes move; here: the node asked; or a node.",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(0.001, 3600),
    default=None,
    help="Seconds the function may run (at most the node's --code-max-timeout)."
    "  [default: the node's, 60]",
)
@json_option
@pass_remote
def graph_run(
    rc: RemoteConfig,
    code: ObjectRef,
    root: ObjectRef,
    args: tuple[str, ...],
    where: str,
    time_limit: float | None,
    as_json: bool,
) -> None:
    """Run code object CODE against ROOT where fewer bytes move. ARGS are JSON values
    (plain words are taken as strings)."""
    with rc.client() as client:
        doc = client.run(code, root, *[_json_arg(a) for a in args], where=where, timeout=time_limit)
    rc.emit(
        as_json,
        doc,
        f"{json.dumps(doc['result'])}\n(ran on {doc['ran_at']}: "
        f"{doc.get('choice')}, estimated {doc.get('bytes_moved_estimate', '?')} "
        "bytes moved)",
    )


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
