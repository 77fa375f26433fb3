"""What every drawing of an object graph shares: the colour of a home, text made
safe for any format, the order references are listed in, the BFS order from the
root and the summary line.

Pure, like the drawings themselves (``dtwz.graph.render``, ``dtwz.graph.svg``,
``dtwz.graph.page``): a graph in the docs/GRAPH.md schema in, values out. All text
from the graph (names, node IDs, errors) is untrusted; ``clean`` is the first
step of every escape.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import networkx as nx

__all__ = [
    "GREY",
    "HIDDEN_NOTE",
    "INK",
    "MAX_DRAWN",
    "RED",
    "bfs_order",
    "clean",
    "clip",
    "crosses_nodes",
    "home_colour",
    "home_colours",
    "homes_of",
    "human_size",
    "is_absent",
    "is_unresolved",
    "references",
    "short_id",
    "size_text",
    "summary",
]

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
RED = "#d62728"  # unresolved names, missing objects
GREY = "#8c8c8c"  # hidden objects
HIDDEN_NOTE = "not readable by the caller, or no such object"
INK = "#222222"  # text on a home's colour
_LAST = 1 << 62  # sorts edges without FOT indices after the others
MAX_DRAWN = 2000  # SVG/HTML draw at most this many objects, the first by BFS
_SAFE = {c: 0x2400 + c for c in range(0x20)} | {0x7F: 0x2421, 0xFFFE: 0xFFFD, 0xFFFF: 0xFFFD}
_SAFE |= {c: 0xFFFD for c in range(0xD800, 0xE000)}


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


def clean(text: object) -> str:
    """Text safe for every format: control characters become their Unicode pictures
    (XML forbids most of them even escaped), lone surrogates and non-characters U+FFFD."""
    return str(text).translate(_SAFE)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_id(node: str) -> str:
    return node[:8] if not node.startswith("name:") else node[5:]


def human_size(size: object) -> str:
    value = float(size) if isinstance(size, int | float) else 0.0
    if value < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def homes_of(G: nx.DiGraph[str]) -> list[str]:
    homes = {str(h) for h in G.graph.get("homes") or ()}
    homes.update(str(h) for _, h in G.nodes(data="home") if h is not None)
    return sorted(homes)


def home_colours(G: nx.DiGraph[str]) -> dict[str, str]:
    homes = homes_of(G)
    return {home: home_colour(home, homes) for home in homes}


def is_unresolved(attrs: dict[str, Any]) -> bool:
    return attrs.get("kind") == "unresolved"


def is_absent(attrs: dict[str, Any]) -> bool:
    """A ``hidden`` or ``missing`` node: an ID with nothing known about it."""
    return attrs.get("kind") in ("hidden", "missing")


def references(G: nx.DiGraph[str], node: str) -> list[tuple[str, dict[str, Any]]]:
    """Out-edges in FOT order, so every drawing lists references the same way."""
    return sorted(
        G.succ[node].items(), key=lambda kv: (min(kv[1].get("fot_indices") or [_LAST]), kv[0])
    )


def bfs_order(G: nx.DiGraph[str]) -> list[tuple[str, int]]:
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
            for child, _ in references(G, node):
                if child not in seen:
                    seen.add(child)
                    queue.append((child, depth + 1))
    return order


def summary(G: nx.DiGraph[str]) -> str:
    kinds = Counter(str(a.get("kind", "object")) for _, a in G.nodes(data=True))
    others = ("hidden", "missing", "unresolved")
    objects = G.number_of_nodes() - sum(kinds[k] for k in others)
    total = G.graph.get("bytes")
    if not isinstance(total, int):
        total = sum(int(a.get("bytes", 0)) for _, a in G.nodes(data=True))
    text = f"object graph {short_id(str(G.graph.get('root', '?')))}: {objects:,} objects, "
    text += f"{G.number_of_edges():,} edges, {human_size(total)}"
    for kind in others:
        if kinds[kind]:
            text += f", {kinds[kind]:,} {kind}"
    return text + (" (truncated by depth or budget)" if G.graph.get("truncated") else "")


def size_text(attrs: dict[str, Any]) -> str:
    return f"{human_size(attrs.get('data_len', 0))}/{human_size(attrs.get('max_size', 0))}"


def crosses_nodes(G: nx.DiGraph[str], source: str, target: str, attrs: dict[str, Any]) -> bool:
    """Whether an edge joins objects with different homes (drawn bold)."""
    if "cross" in attrs:
        return bool(attrs["cross"])
    homes = G.nodes[source].get("home"), G.nodes[target].get("home")
    return None not in homes and homes[0] != homes[1]
