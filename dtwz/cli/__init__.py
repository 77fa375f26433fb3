"""The ``dtwz`` command line: the root group ``cli``, the console script ``main``, and
the groups and commands of the submodules, added here.

- ``dtwz.cli.common``: argument types, the configuration each group hands its
  commands (``CliConfig``, ``RemoteConfig``), output helpers, and ``DtwzGroup``,
  which turns every failure into one ``error: ...`` line and exit status 2 (bad
  input) or 1 (refused at run time).
- ``dtwz.cli.store``: the commands on a local store folder (``init``, ``create``,
  ``put``, ``get``, ``show``, ``ls``, ``link``, ``deref``, ``checkpoint``).
- ``dtwz.cli.node``: ``node run``, one node in the foreground.
- ``dtwz.cli.cluster``: ``cluster up/status/down``, a local cluster of processes.
- ``dtwz.cli.remote``: ``remote ...``, object commands against a running cluster;
  ``dtwz.cli.names`` adds the namespace commands (``remote ls``, ``mkdir``, ...).
- ``dtwz.cli.graph``: ``graph ...``, the object graph: draw, prefetch, migrate,
  co-locate, run code where the data is.
- ``dtwz.cli.security``: ``keys``, ``identity`` and ``cap``.

The submodules import ``dtwz.cli.common`` (and ``remote`` the status table of
``cluster``), never this package root, so only this module knows them all.
"""

from __future__ import annotations

from pathlib import Path

import click

from dtwz import __version__
from dtwz.cli import cluster, graph, names, node, remote, security, store
from dtwz.cli.common import DEFAULT_STORE, CliConfig, DtwzGroup

__all__ = ["cli", "main"]


@click.group(
    name="dtwz",
    cls=DtwzGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--store",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DTWZ_STORE",
    show_envvar=True,
    default=DEFAULT_STORE,
    show_default=True,
    help="The store folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on every command.")
@click.version_option(__version__, prog_name="dtwz")
@click.pass_context
def cli(ctx: click.Context, store: Path, as_json: bool) -> None:
    """dtwz: a Twizzler-style persistent object store.

    Offsets are decimal or 0x hex; object IDs are 32 hex digits. The data area
    of every object starts at 0x1000.
    """
    ctx.obj = CliConfig(store, as_json)


for _command in names.COMMANDS:
    remote.remote.add_command(_command)
for _command in [
    *store.COMMANDS,
    node.node,
    cluster.cluster,
    remote.remote,
    graph.graph,
    security.keys,
    security.identity,
    security.cap,
]:
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """The ``dtwz`` console script."""
    cli.main(args=argv, prog_name="dtwz")
