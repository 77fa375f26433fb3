"""Drawing an object graph: terminal tree, Graphviz DOT, standalone SVG, offline HTML.

Pure: each function takes a graph in the docs/GRAPH.md schema and returns a value;
nothing here touches files, processes or the network. Every format colours an
object by its home with one palette (``home_colour``) and shows IDs as 8 hex
digits. The tree and DOT are drawn here; the SVG (our own layout, so drawing never
needs the graphviz binary; DOT is for users who have it) in ``dtwz.graph.svg``, the
page in ``dtwz.graph.page``, what they share in ``dtwz.graph.drawing``. All text
from the graph (names, node IDs, errors) is untrusted: it is cleaned of control
characters and escaped for the format it lands in.
"""

from __future__ import annotations

import io
import json
from collections import deque
from typing import Any

import networkx as nx
from rich.console import Console
from rich.style import Style
from rich.text import Text
from rich.tree import Tree

from dtwz.errors import InvalidArgument
from dtwz.graph.drawing import (
    GREY,
    HIDDEN_NOTE,
    MAX_DRAWN,
    RED,
    bfs_order,
    clean,
    clip,
    crosses_nodes,
    home_colour,
    home_colours,
    is_absent,
    is_unresolved,
    references,
    short_id,
    size_text,
    summary,
)
from dtwz.graph.model import to_json
from dtwz.graph.page import to_html
from dtwz.graph.svg import to_svg

__all__ = [
    "FORMATS",
    "MAX_DRAWN",
    "home_colour",
    "render",
    "to_dot",
    "to_html",
    "to_svg",
    "tree",
    "tree_text",
]

FORMATS = ("dot", "svg", "html", "json")
_FLAT_AFTER = 3  # below this level an only child is drawn flat, so lists do not drift right
_TREE_NEST = 12  # deeper subtrees restart at the top so terminal lines stay readable


# --- terminal tree ----------------------------------------------------------------


def _line(
    G: nx.DiGraph[str], node: str, edge: dict[str, Any] | None, colours: dict[str, str], mark: str
) -> Text:
    attrs = G.nodes[node]
    line = Text()
    line.append(mark, style="dim")
    if is_unresolved(attrs):
        line.append(f"✗ unresolved {clean(attrs.get('name', short_id(node)))}", style="bold red")
        if attrs.get("error"):
            line.append(f": {clean(attrs['error'])}", style="red")
        return line
    if attrs.get("kind") == "hidden":
        line.append(f"⊘ {short_id(node)}", style="bold bright_black")
        line.append(f"  hidden ({HIDDEN_NOTE})", style="bright_black")
        return _edge_note(line, edge)
    if attrs.get("kind") == "missing":
        line.append(f"✗ {short_id(node)}", style="bold red")
        line.append(f"  missing: {clean(attrs.get('error', ''))}", style="red")
        return _edge_note(line, edge)
    home = str(attrs.get("home", "?"))
    line.append(short_id(node), style="bold")
    line.append("  ")
    line.append(clean(home), style=Style(color=colours.get(home), bold=True))
    line.append(f"  {size_text(attrs)}  v{attrs.get('version', '?')}")
    copies = attrs.get("copies") or []
    if copies:
        line.append("  copies ")
        for i, copy in enumerate(copies):
            line.append(", " if i else "")
            line.append(clean(copy), style=Style(color=colours.get(str(copy))))
    return _edge_note(line, edge)


def _edge_note(line: Text, edge: dict[str, Any] | None) -> Text:
    if edge and edge.get("kind") == "name" and edge.get("name") is not None:
        line.append(f"  via {clean(edge['name'])}", style="cyan")
    if edge and edge.get("uses"):
        line.append(f"  uses {edge['uses']}", style="dim")
    return line


def tree(G: nx.DiGraph[str]) -> Tree:
    """The graph as a terminal tree from its root, each object shown once.

    A second reference is a leaf "↻ id (shown above)". Past the first levels an
    only child is drawn as the next sibling, marked "↳" (linked lists stay flat
    instead of marching off the right edge), and subtrees nested deeper than a
    dozen levels continue at the top level: every object still appears once.
    """
    colours = home_colours(G)
    top = Tree(Text(summary(G), style="bold"))
    shown: set[str] = set()
    deferred: set[str] = set()  # claimed by a "continued below" line, drawn later

    def draw(first: str, first_mark: str) -> None:
        pending = deque([(first, first_mark)])
        while pending:
            start, mark = pending.popleft()
            deferred.discard(start)
            # explicit stack of (container, node, edge, nesting level, marker): chains run deep
            stack: list[tuple[Tree, str, dict[str, Any] | None, int, str]]
            stack = [(top, start, None, 0, mark)]
            while stack:
                container, node, edge, level, mark = stack.pop()
                if node in shown or node in deferred:
                    where = "shown above" if node in shown else "continued below"
                    container.add(
                        _edge_note(Text(f"↻ {short_id(node)} ({where})", style="dim"), edge)
                    )
                    continue
                if level > _TREE_NEST and G.out_degree(node):
                    deferred.add(node)
                    note = Text(f"→ {short_id(node)} (continued below)", style="dim")
                    container.add(_edge_note(note, edge))
                    pending.append((node, "⤷ continued: "))
                    continue
                shown.add(node)
                branch = container.add(_line(G, node, edge, colours, mark))
                kids = references(G, node)
                only = kids[0][0] if len(kids) == 1 else None
                if level >= _FLAT_AFTER and only and only not in shown and only not in deferred:
                    stack.append((container, only, kids[0][1], level, "↳ "))
                    continue
                for child, child_edge in reversed(kids):
                    stack.append((branch, child, child_edge, level + 1, ""))

    root = G.graph.get("root")
    if isinstance(root, str) and root in G:
        draw(root, "")
    else:
        top.add(Text(f"root {clean(root)} is not in the graph", style="red"))
    for node in sorted(G.nodes):
        if node not in shown:
            draw(node, "(not reached from the root) ")
    return top


def tree_text(G: nx.DiGraph[str], width: int = 100, color: bool = False) -> str:
    """``tree(G)`` rendered to a string, with ANSI colours only when ``color``."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system="truecolor" if color else None,
        force_terminal=color,
        highlight=False,
        emoji=False,
        legacy_windows=False,
    )
    console.print(tree(G))
    return buffer.getvalue()


# --- Graphviz DOT -----------------------------------------------------------------


def _dot_string(*lines: object) -> str:
    """A DOT quoted string; lines become label line breaks. In DOT only \\" is an
    escape, but labels read backslash escapes and Graphviz decodes HTML entities in
    every string, so backslashes are doubled and & is written as &amp;."""
    parts = (
        clean(line).replace("&", "&amp;").replace("\\", "\\\\").replace('"', '\\"')
        for line in lines
    )
    return '"' + "\\n".join(parts) + '"'


def _object_label(node: str, attrs: dict[str, Any]) -> list[str]:
    lines = [short_id(node), size_text(attrs), f"v{attrs.get('version', '?')}"]
    copies = attrs.get("copies") or []
    if copies:
        lines.append(f"copies: {', '.join(clip(str(c), 16) for c in copies)}")
    return lines


def to_dot(G: nx.DiGraph[str]) -> str:
    """Graphviz DOT source: nodes filled by home, a legend of homes, name edges
    dashed and labelled, cross-node edges bold. DOT IDs are generated (``o0``,
    ``o1``, ...) so no name ever has to survive as an identifier."""
    colours = home_colours(G)
    order = {node: i for i, (node, _) in enumerate(bfs_order(G))}
    ids = {node: f"o{i}" for node, i in order.items()}
    out = [
        "digraph dtwz {",
        f'  graph [charset="UTF-8", rankdir=TB, fontname=Helvetica, labelloc=t, '
        f"label={_dot_string(summary(G))}];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
        '  edge [fontname=Helvetica, fontsize=9, color="#555555"];',
        '  subgraph cluster_legend {\n    label="homes"; style=rounded; color="#999999";',
    ]
    for i, (home, colour) in enumerate(colours.items()):
        out.append(f'    home{i} [label={_dot_string(home)}, fillcolor="{colour}"];')
    out.append("  }")
    for node, name in ids.items():
        attrs = G.nodes[node]
        if is_unresolved(attrs):
            text = _dot_string(f"✗ {attrs.get('name', short_id(node))}", attrs.get("error", ""))
            look = f'shape=octagon, style=filled, fillcolor="#ffffff", color="{RED}"'
            look += f', fontcolor="{RED}"'
        elif is_absent(attrs):
            hidden = attrs.get("kind") == "hidden"
            note = "hidden" if hidden else f"missing: {attrs.get('error', '')}"
            ink = GREY if hidden else RED
            text = _dot_string(short_id(node), note)
            look = f'style="rounded,dashed", color="{ink}", fontcolor="{ink}"'
            look += f", tooltip={_dot_string(node)}"
        else:
            text = _dot_string(*_object_label(node, attrs))
            fill = colours.get(str(attrs.get("home")), "#ffffff")
            look = f'fillcolor="{fill}", tooltip={_dot_string(node)}'
        out.append(f"  {name} [label={text}, {look}];")
    for source, target, attrs in sorted(
        G.edges(data=True), key=lambda e: (order[e[0]], order[e[1]])
    ):
        styles = ["dashed"] if attrs.get("kind") == "name" else []
        lines = [attrs["name"]] if styles and attrs.get("name") is not None else []
        extra = []
        if crosses_nodes(G, source, target, attrs):
            styles.append("bold")
            extra.append("penwidth=2")
        if attrs.get("uses"):
            lines.append(f"uses {attrs['uses']}")
        if styles:
            extra.append(f'style="{",".join(styles)}"')
        if lines:
            extra.append(f"label={_dot_string(*lines)}")
        attributes = f" [{', '.join(extra)}]" if extra else ""
        out.append(f"  {ids[source]} -> {ids[target]}{attributes};")
    out.append("}")
    return "\n".join(out) + "\n"


# --- every format -----------------------------------------------------------------


def render(G: nx.DiGraph[str], fmt: str) -> str:
    """``G`` drawn in ``fmt``: one of "dot", "svg", "html" or "json"."""
    if fmt == "dot":
        return to_dot(G)
    if fmt == "svg":
        return to_svg(G)
    if fmt == "html":
        return to_html(G)
    if fmt == "json":
        return json.dumps(to_json(G), indent=2) + "\n"
    raise InvalidArgument(f"unknown graph format {fmt!r}: use one of {', '.join(FORMATS)}")
