"""The SVG drawing of an object graph, laid out without graphviz.

One box per object (at most ``MAX_DRAWN``, the first by BFS), coloured by home;
the layout is our own: layers by BFS depth from the root, ordered by barycentre
sweeps, wide layers wrapped into rows. Pure, like every drawing here. The
interactive page (``dtwz.graph.page``) embeds the same drawing, fitted to its
window.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import networkx as nx

from dtwz.graph.drawing import (
    GREY,
    HIDDEN_NOTE,
    INK,
    MAX_DRAWN,
    RED,
    bfs_order,
    clean,
    clip,
    crosses_nodes,
    home_colours,
    is_absent,
    is_unresolved,
    short_id,
    size_text,
    summary,
)

__all__ = ["escape", "svg", "to_svg"]

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _MARGIN, _ROW_MAX, _SWEEPS = 150, 46, 24, 60, 20, 40, 4


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
    for node, depth in bfs_order(G)[:MAX_DRAWN]:
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


def escape(text: object) -> str:
    return html.escape(clean(text), quote=True)


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
    return "<title>" + "\n".join(escape(line) for line in lines) + "</title>"


def svg(G: nx.DiGraph[str], fit: bool) -> str:
    """The drawing; ``fit`` scales it to its container (the page) instead of its own size."""
    colours = home_colours(G)
    notes = [summary(G)]
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
            f'<text class="note" x="{_MARGIN}" y="{y}" font-size="13"{weight}>{escape(note)}</text>'
        )
    out.append('<g class="legend">')
    for i, (home, colour) in enumerate(colours.items()):
        x, y = _MARGIN + (i % 6) * 170, legend_top + 22 * (i // 6)
        out.append(
            f'<rect class="legend-box" x="{x}" y="{y}" width="14" height="14" fill="{colour}" '
            f'stroke="#333333"/><text x="{x + 20}" y="{y + 11}">{escape(clip(home, 20))}'
            f"{_title(home)}</text>"
        )
    out.append('</g>\n<g class="edges" fill="none" stroke="#555555">')
    boxes = layout.boxes
    for source, target, attrs in G.edges(data=True):
        if source not in boxes or target not in boxes:
            continue
        name = attrs.get("name") if attrs.get("kind") == "name" else None
        look = ' stroke-dasharray="6,4"' if attrs.get("kind") == "name" else ""
        look += ' stroke-width="2.5"' if crosses_nodes(G, source, target, attrs) else ""
        tip = [f"{source} → {target}", f"FOT entries {attrs.get('fot_indices', [])}"]
        tip += [f"name {name}"] if name is not None else []
        tip += [f"uses {attrs['uses']}"] if attrs.get("uses") else []
        path = _edge_path(boxes[source], boxes[target], source == target)
        out.append(
            f'<path class="edge" d="{path}" data-s="{escape(source)}" data-t="{escape(target)}" '
            f'marker-end="url(#arrow)"{look}>{_title(*tip)}</path>'
        )
        if name is not None:
            # just above the target, not mid-edge: edges fanning out of one object meet there
            x, y = boxes[target]
            out.append(
                f'<text class="edge-label" x="{x}" y="{y - 6}" fill="#1f5f8b" stroke="none">'
                f"{escape(clip(str(name), 24))}</text>"
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
    if is_unresolved(attrs):
        name = str(attrs.get("name", short_id(node)))
        lines = [f"✗ {clip(name, 19)}", "unresolved"]
        tip = [name, f"unresolved: {attrs.get('error', '')}"]
        kind, fill, ink, look = "node unresolved", "#ffffff", RED, ' stroke-dasharray="4,3"'
    elif is_absent(attrs):
        what = str(attrs.get("kind"))
        lines = [f"⊘ {short_id(node)}" if what == "hidden" else f"✗ {short_id(node)}", what]
        why = HIDDEN_NOTE if what == "hidden" else str(attrs.get("error", ""))
        tip = [node, f"{what}: {why}"]
        ink = GREY if what == "hidden" else RED
        kind, fill, look = f"node {what}", "#ffffff", ' stroke-dasharray="4,3"'
    else:
        home = str(attrs.get("home", "?"))
        copies = attrs.get("copies") or []
        where = clip(home, 12) + (f" +{len(copies)} copies" if copies else "")
        lines = [short_id(node), f"{size_text(attrs)} v{version}", where]
        tip = [
            node,
            f"home {home}",
            f"{size_text(attrs)}, version {version}",
            f"copies: {', '.join(map(str, copies)) or 'none'}",
            f"FOT entries {attrs.get('fot_count', '?')}, flags {attrs.get('flags', 0)}, "
            f"depth {attrs.get('depth', '?')}",
        ]
        kind, fill, ink, look = "node", colours.get(home, "#ffffff"), INK, ""
    stroke = ink if ink in (RED, GREY) else "#333333"
    out = [
        f'<g class="{kind}" data-id="{escape(node)}">{_title(*tip)}<rect class="node-box" x="{x}" '
        f'y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="5" fill="{fill}" stroke="{stroke}"{look}/>'
    ]
    for i, line in enumerate(lines):
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(
            f'<text x="{x + 8}" y="{y + 14 + 14 * i}" fill="{ink}"{weight}>{escape(line)}</text>'
        )
    return "".join(out) + "</g>"


def to_svg(G: nx.DiGraph[str]) -> str:
    """A standalone SVG drawing made without graphviz: one box per object (at most
    ``MAX_DRAWN``, the first by BFS, and the drawing says so), coloured by home."""
    return svg(G, fit=False)
