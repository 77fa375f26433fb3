"""Drawing an object graph: terminal tree, Graphviz DOT, standalone SVG, offline HTML.

Pure: each function takes a graph in the docs/GRAPH.md schema and returns a value;
nothing here touches files, processes or the network. Every format colours an
object by its home with one palette (``home_colour``) and shows IDs as 8 hex
digits. The SVG layout is our own (layers by BFS depth from the root, ordered by
barycentre sweeps), so drawing never needs the graphviz binary; DOT is for users
who have it. All text from the graph (names, node IDs, errors) is untrusted: it
is cleaned of control characters and escaped for the format it lands in.
"""

from __future__ import annotations

import colorsys
import hashlib
import html
import io
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
from rich.console import Console
from rich.style import Style
from rich.text import Text
from rich.tree import Tree

from dtwz.errors import InvalidArgument
from dtwz.graph.model import to_json

__all__ = ["home_colour", "render", "to_dot", "to_html", "to_svg", "tree", "tree_text"]


def to_html(G: nx.DiGraph[str], title: str = "dtwz object graph") -> str:
    """The interactive page of ``G`` (``dtwz.graph.page``)."""
    from dtwz.graph.page import to_html as page

    return page(G, title)


FORMATS = ("dot", "svg", "html", "json")
# Tableau 10: distinct, and dark text stays readable on every one of them.
_PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_RED = "#d62728"
_INK = "#222222"
_LAST = 1 << 62  # sorts edges without FOT indices after the others
MAX_DRAWN = 2000  # SVG/HTML draw at most this many objects, the first by BFS
_FLAT_AFTER = 3  # below this level an only child is drawn flat, so lists do not drift right
_TREE_NEST = 12  # deeper subtrees restart at the top so terminal lines stay readable
_SAFE = {c: 0x2400 + c for c in range(0x20)} | {0x7F: 0x2421, 0xFFFE: 0xFFFD, 0xFFFF: 0xFFFD}
_SAFE |= {c: 0xFFFD for c in range(0xD800, 0xE000)}
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN, _ROW_MAX, _SWEEPS = 150, 46, 24, 60, 20, 40, 4


def home_colour(home: str, homes: Sequence[str]) -> str:
    """The colour of ``home`` as ``#rrggbb``: its rank among the sorted ``homes``.

    Past the fixed palette hues step by the golden ratio so they stay apart; a home
    missing from ``homes`` is placed by a hash of its name, still deterministic.
    """
    ranked = sorted(set(homes))
    if home in ranked:
        index = ranked.index(home)
    else:
        digest = hashlib.sha256(home.encode("utf-8", "surrogatepass")).digest()
        index = len(_PALETTE) + int.from_bytes(digest[:4], "big")
    if index < len(_PALETTE):
        return _PALETTE[index]
    hue = ((index - len(_PALETTE)) * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hls_to_rgb(hue, 0.62, 0.55)
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


# --- shared helpers ---------------------------------------------------------------


def _clean(text: object) -> str:
    """Text safe for every format: control characters become their Unicode pictures
    (XML forbids most of them even escaped), lone surrogates and non-characters U+FFFD."""
    return str(text).translate(_SAFE)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short(node: str) -> str:
    return node[:8] if not node.startswith("name:") else node[5:]


def _human(size: object) -> str:
    value = float(size) if isinstance(size, int | float) else 0.0
    if value < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _homes(G: nx.DiGraph[str]) -> list[str]:
    homes = {str(h) for h in G.graph.get("homes") or ()}
    homes.update(str(h) for _, h in G.nodes(data="home") if h is not None)
    return sorted(homes)


def _colours(G: nx.DiGraph[str]) -> dict[str, str]:
    homes = _homes(G)
    return {home: home_colour(home, homes) for home in homes}


def _is_unresolved(attrs: dict[str, Any]) -> bool:
    return attrs.get("kind") == "unresolved"


def _children(G: nx.DiGraph[str], node: str) -> list[tuple[str, dict[str, Any]]]:
    """Out-edges in FOT order, so every drawing lists references the same way."""
    return sorted(
        G.succ[node].items(), key=lambda kv: (min(kv[1].get("fot_indices") or [_LAST]), kv[0])
    )


def _bfs(G: nx.DiGraph[str]) -> list[tuple[str, int]]:
    """(node, depth) in BFS order from the root; nodes it misses start again at depth 0."""
    root = G.graph.get("root")
    starts = ([root] if isinstance(root, str) and root in G else []) + sorted(G.nodes)
    seen: set[str] = set()
    order: list[tuple[str, int]] = []
    for start in starts:
        if start in seen:
            continue
        seen.add(start)
        queue = deque([(start, 0)])
        while queue:
            node, depth = queue.popleft()
            order.append((node, depth))
            for child, _ in _children(G, node):
                if child not in seen:
                    seen.add(child)
                    queue.append((child, depth + 1))
    return order


def _summary(G: nx.DiGraph[str]) -> str:
    objects = sum(1 for _, a in G.nodes(data=True) if not _is_unresolved(a))
    total = G.graph.get("bytes")
    if not isinstance(total, int):
        total = sum(int(a.get("bytes", 0)) for _, a in G.nodes(data=True))
    text = f"object graph {_short(str(G.graph.get('root', '?')))}: {objects:,} objects, "
    text += f"{G.number_of_edges():,} edges, {_human(total)}"
    unresolved = G.number_of_nodes() - objects
    if unresolved:
        text += f", {unresolved:,} unresolved"
    return text + (" (truncated by depth or budget)" if G.graph.get("truncated") else "")


def _size(attrs: dict[str, Any]) -> str:
    return f"{_human(attrs.get('data_len', 0))}/{_human(attrs.get('max_size', 0))}"


# --- terminal tree ----------------------------------------------------------------


def _line(
    G: nx.DiGraph[str], node: str, edge: dict[str, Any] | None, colours: dict[str, str], mark: str
) -> Text:
    attrs = G.nodes[node]
    line = Text()
    line.append(mark, style="dim")
    if _is_unresolved(attrs):
        line.append(f"✗ unresolved {_clean(attrs.get('name', _short(node)))}", style="bold red")
        if attrs.get("error"):
            line.append(f": {_clean(attrs['error'])}", style="red")
        return line
    home = str(attrs.get("home", "?"))
    line.append(_short(node), style="bold")
    line.append("  ")
    line.append(_clean(home), style=Style(color=colours.get(home), bold=True))
    line.append(f"  {_size(attrs)}  v{attrs.get('version', '?')}")
    copies = attrs.get("copies") or []
    if copies:
        line.append("  copies ")
        for i, copy in enumerate(copies):
            line.append(", " if i else "")
            line.append(_clean(copy), style=Style(color=colours.get(str(copy))))
    return _edge_note(line, edge)


def _edge_note(line: Text, edge: dict[str, Any] | None) -> Text:
    if edge and edge.get("kind") == "name" and edge.get("name") is not None:
        line.append(f"  via {_clean(edge['name'])}", style="cyan")
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
    colours = _colours(G)
    top = Tree(Text(_summary(G), style="bold"))
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
                        _edge_note(Text(f"↻ {_short(node)} ({where})", style="dim"), edge)
                    )
                    continue
                if level > _TREE_NEST and G.out_degree(node):
                    deferred.add(node)
                    note = Text(f"→ {_short(node)} (continued below)", style="dim")
                    container.add(_edge_note(note, edge))
                    pending.append((node, "⤷ continued: "))
                    continue
                shown.add(node)
                branch = container.add(_line(G, node, edge, colours, mark))
                kids = _children(G, node)
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
        top.add(Text(f"root {_clean(root)} is not in the graph", style="red"))
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
        _clean(line).replace("&", "&amp;").replace("\\", "\\\\").replace('"', '\\"')
        for line in lines
    )
    return '"' + "\\n".join(parts) + '"'


def _object_label(node: str, attrs: dict[str, Any]) -> list[str]:
    lines = [_short(node), _size(attrs), f"v{attrs.get('version', '?')}"]
    copies = attrs.get("copies") or []
    if copies:
        lines.append(f"copies: {', '.join(_clip(str(c), 16) for c in copies)}")
    return lines


def to_dot(G: nx.DiGraph[str]) -> str:
    """Graphviz DOT source: nodes filled by home, a legend of homes, name edges
    dashed and labelled, cross-node edges bold. DOT IDs are generated (``o0``,
    ``o1``, ...) so no name ever has to survive as an identifier."""
    colours = _colours(G)
    order = {node: i for i, (node, _) in enumerate(_bfs(G))}
    ids = {node: f"o{i}" for node, i in order.items()}
    out = [
        "digraph dtwz {",
        f'  graph [charset="UTF-8", rankdir=TB, fontname=Helvetica, labelloc=t, '
        f"label={_dot_string(_summary(G))}];",
        '  node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=10];',
        '  edge [fontname=Helvetica, fontsize=9, color="#555555"];',
        '  subgraph cluster_legend {\n    label="homes"; style=rounded; color="#999999";',
    ]
    for i, (home, colour) in enumerate(colours.items()):
        out.append(f'    home{i} [label={_dot_string(home)}, fillcolor="{colour}"];')
    out.append("  }")
    for node, name in ids.items():
        attrs = G.nodes[node]
        if _is_unresolved(attrs):
            text = _dot_string(f"✗ {attrs.get('name', _short(node))}", attrs.get("error", ""))
            look = f'shape=octagon, style=filled, fillcolor="#ffffff", color="{_RED}"'
            look += f', fontcolor="{_RED}"'
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
        if _crosses(G, source, target, attrs):
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


def _crosses(G: nx.DiGraph[str], source: str, target: str, attrs: dict[str, Any]) -> bool:
    if "cross" in attrs:
        return bool(attrs["cross"])
    homes = G.nodes[source].get("home"), G.nodes[target].get("home")
    return None not in homes and homes[0] != homes[1]


# --- layered layout and SVG -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    boxes: dict[str, tuple[int, int]]  # top-left corner of each drawn node, BFS order
    width: int
    height: int


def _order_layers(G: nx.DiGraph[str], layers: list[list[str]]) -> None:
    """Barycentre sweeps, down then up: each node moves towards the mean place of its
    neighbours in the layer just swept, which removes most crossings cheaply."""
    for sweep in range(_SWEEPS):
        down = sweep % 2 == 0
        for i in range(1, len(layers)) if down else range(len(layers) - 2, -1, -1):
            ref = layers[i - 1] if down else layers[i + 1]
            place = {node: k / len(ref) for k, node in enumerate(ref)}
            layer = layers[i]
            keys = {}
            for k, node in enumerate(layer):
                near = [place[m] for m in (*G.pred[node], *G.succ[node]) if m in place]
                keys[node] = sum(near) / len(near) if near else k / len(layer)
            layer.sort(key=keys.__getitem__)  # stable: ties keep BFS order


def _layout(G: nx.DiGraph[str], top: int) -> _Layout:
    layers: list[list[str]] = []
    for node, depth in _bfs(G)[:MAX_DRAWN]:
        layers.extend([] for _ in range(depth + 1 - len(layers)))
        layers[depth].append(node)
    _order_layers(G, layers)
    widest = min(max((len(layer) for layer in layers), default=0), _ROW_MAX)
    width = max(2 * _MARGIN + widest * (_BOX_W + _GAP_X) - _GAP_X, 640)
    boxes: dict[str, tuple[int, int]] = {}
    y = top
    for layer in layers:
        # a wide layer wraps onto rows closer together than layers are, so a star of
        # 2,000 stays on a screen or two and layers still read as bands
        for k in range(0, len(layer), _ROW_MAX):
            row = layer[k : k + _ROW_MAX]
            x = (width - (len(row) * (_BOX_W + _GAP_X) - _GAP_X)) // 2
            for j, node in enumerate(row):
                boxes[node] = (x + j * (_BOX_W + _GAP_X), y)
            y += _BOX_H + (_GAP_Y if k + _ROW_MAX >= len(layer) else _GAP_Y // 3)
    return _Layout(boxes, width, y)


def _x(text: object) -> str:
    return html.escape(_clean(text), quote=True)


def _edge_path(a: tuple[int, int], b: tuple[int, int], self_loop: bool) -> str:
    (ax, ay), (bx, by) = a, b
    if self_loop:
        x, y = ax + _BOX_W, ay
        return f"M{x},{y + 12} C{x + 36},{y - 8} {x + 36},{y + _BOX_H + 8} {x},{y + _BOX_H - 12}"
    if by > ay:  # downwards: bottom centre to top centre
        x1, y1, x2, y2 = ax + _BOX_W // 2, ay + _BOX_H, bx + _BOX_W // 2, by
        bend = (y2 - y1) // 2
        return f"M{x1},{y1} C{x1},{y1 + bend} {x2},{y2 - bend} {x2},{y2}"
    if by == ay:  # same row: an arc over the top
        x1, x2 = ax + _BOX_W // 2, bx + _BOX_W // 2
        return f"M{x1},{ay} C{x1},{ay - 40} {x2},{by - 40} {x2},{by}"
    # upwards (a cycle closing): right side to right side, bulging right
    x1, x2, y1, y2 = ax + _BOX_W, bx + _BOX_W, ay + _BOX_H // 2, by + _BOX_H // 2
    bulge = 40 + (ay - by) // 8
    return f"M{x1},{y1} C{x1 + bulge},{ay} {x2 + bulge},{by + _BOX_H} {x2},{y2}"


def _title(*lines: object) -> str:
    return "<title>" + "\n".join(_x(line) for line in lines) + "</title>"


def _svg(G: nx.DiGraph[str], fit: bool) -> str:
    colours = _colours(G)
    notes = [_summary(G)]
    if G.number_of_nodes() > MAX_DRAWN:
        notes.append(
            f"drawing the first {MAX_DRAWN:,} of {G.number_of_nodes():,} objects "
            "in BFS order from the root"
        )
    legend_top = _MARGIN + 20 * len(notes)  # homes in rows of six below the notes
    layout = _layout(G, top=legend_top + 22 * ((len(colours) + 5) // 6) + 16)
    w, h = layout.width, layout.height
    size = 'width="100%" height="100%"' if fit else f'width="{w}" height="{h}"'
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" {size} viewBox="0 0 {w} {h}" '
        'font-family="DejaVu Sans Mono,Menlo,Consolas,monospace" font-size="11">',
        # user-space units: arrowheads keep one size on bold (cross-node) edges
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="9" '
        'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto">'
        '<path d="M0,0L10,5L0,10z" fill="#555555"/></marker></defs>',
        f'<rect class="background" width="{w}" height="{h}" fill="#ffffff"/>',
    ]
    for i, note in enumerate(notes):
        weight = ' font-weight="bold"' if i == 0 else ""
        y = _MARGIN + 12 + 20 * i
        out.append(
            f'<text class="note" x="{_MARGIN}" y="{y}" font-size="13"{weight}>{_x(note)}</text>'
        )
    out.append('<g class="legend">')
    for i, (home, colour) in enumerate(colours.items()):
        x, y = _MARGIN + (i % 6) * 170, legend_top + 22 * (i // 6)
        out.append(
            f'<rect class="legend-box" x="{x}" y="{y}" width="14" height="14" fill="{colour}" '
            f'stroke="#333333"/><text x="{x + 20}" y="{y + 11}">{_x(_clip(home, 20))}'
            f"{_title(home)}</text>"
        )
    out.append('</g>\n<g class="edges" fill="none" stroke="#555555">')
    boxes = layout.boxes
    for source, target, attrs in G.edges(data=True):
        if source not in boxes or target not in boxes:
            continue
        name = attrs.get("name") if attrs.get("kind") == "name" else None
        look = ' stroke-dasharray="6,4"' if attrs.get("kind") == "name" else ""
        look += ' stroke-width="2.5"' if _crosses(G, source, target, attrs) else ""
        tip = [f"{source} → {target}", f"FOT entries {attrs.get('fot_indices', [])}"]
        tip += [f"name {name}"] if name is not None else []
        tip += [f"uses {attrs['uses']}"] if attrs.get("uses") else []
        path = _edge_path(boxes[source], boxes[target], source == target)
        out.append(
            f'<path class="edge" d="{path}" data-s="{_x(source)}" data-t="{_x(target)}" '
            f'marker-end="url(#arrow)"{look}>{_title(*tip)}</path>'
        )
        if name is not None:
            # just above the target, not mid-edge: edges fanning out of one object meet there
            x, y = boxes[target]
            out.append(
                f'<text class="edge-label" x="{x}" y="{y - 6}" fill="#1f5f8b" stroke="none">'
                f"{_x(_clip(str(name), 24))}</text>"
            )
    out.append('</g>\n<g class="nodes">')
    out.extend(_svg_node(node, G.nodes[node], xy, colours) for node, xy in boxes.items())
    out.append("</g>\n</svg>")
    return "\n".join(out) + "\n"


def _svg_node(
    node: str, attrs: dict[str, Any], xy: tuple[int, int], colours: dict[str, str]
) -> str:
    x, y = xy
    version = attrs.get("version", "?")
    if _is_unresolved(attrs):
        name = str(attrs.get("name", _short(node)))
        lines = [f"✗ {_clip(name, 19)}", "unresolved"]
        tip = [name, f"unresolved: {attrs.get('error', '')}"]
        kind, fill, ink, look = "node unresolved", "#ffffff", _RED, ' stroke-dasharray="4,3"'
    else:
        home = str(attrs.get("home", "?"))
        copies = attrs.get("copies") or []
        where = _clip(home, 12) + (f" +{len(copies)} copies" if copies else "")
        lines = [_short(node), f"{_size(attrs)} v{version}", where]
        tip = [
            node,
            f"home {home}",
            f"{_size(attrs)}, version {version}",
            f"copies: {', '.join(map(str, copies)) or 'none'}",
            f"FOT entries {attrs.get('fot_count', '?')}, flags {attrs.get('flags', 0)}, "
            f"depth {attrs.get('depth', '?')}",
        ]
        kind, fill, ink, look = "node", colours.get(home, "#ffffff"), _INK, ""
    stroke = _RED if ink == _RED else "#333333"
    out = [
        f'<g class="{kind}" data-id="{_x(node)}">{_title(*tip)}<rect class="node-box" x="{x}" '
        f'y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="5" fill="{fill}" stroke="{stroke}"{look}/>'
    ]
    for i, line in enumerate(lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(
            f'<text x="{x + 8}" y="{y + 14 + 14 * i}" fill="{ink}"{weight}>{_x(line)}</text>'
        )
    return "".join(out) + "</g>"


def to_svg(G: nx.DiGraph[str]) -> str:
    """A standalone SVG drawing made without graphviz: one box per object (at most
    ``MAX_DRAWN``, the first by BFS, and the drawing says so), coloured by home."""
    return _svg(G, fit=False)


# --- offline HTML page ------------------------------------------------------------


def render(G: nx.DiGraph[str], fmt: str) -> str:
    """``G`` drawn in ``fmt``: one of "dot", "svg", "html" or "json"."""
    if fmt == "dot":
        return to_dot(G)
    if fmt == "svg":
        return to_svg(G)
    if fmt == "html":
        from dtwz.graph.page import to_html  # the page draws with this module's SVG

        return to_html(G)
    if fmt == "json":
        return json.dumps(to_json(G), indent=2) + "\n"
    raise InvalidArgument(f"unknown graph format {fmt!r}: use one of {', '.join(FORMATS)}")
