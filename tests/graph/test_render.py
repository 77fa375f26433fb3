"""Drawing object graphs (dtwz.graph.render) and their JSON form (dtwz.graph.model).

Graphs are built by hand following docs/GRAPH.md. The external checks use the real
tools users have: Graphviz must accept our DOT, and headless Chromium must run the
HTML page's script offline. Those tests skip when the tool is missing, unless
DTWZ_REQUIRE_TOOLS=1 (set by .ci/run), which turns a missing tool into a failure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import networkx as nx
import pytest

from dtwz.errors import InvalidArgument
from dtwz.graph import model, render

SVG = "{http://www.w3.org/2000/svg}"
HOMES = ("n1", 'n"2\\', "nœud<3>")  # node IDs may hold quotes, backslashes, markup
ODD_NAMES = (
    '/we"ird\\path\\',
    "/<b>&amp;</b>",
    "/</script><script>alert(1)</script>",
    "/ünïcødé/日本語/🙂",
    "/[red]not markup[/red]",
)


def oid(i: int) -> str:
    """A 32-hex object ID whose first 8 digits differ between objects."""
    return hashlib.sha256(str(i).encode()).hexdigest()[:32]


def new_graph(root: int = 0) -> nx.DiGraph[str]:
    return model.empty_graph(oid(root), depth=None, budget=None)


def add_object(G: nx.DiGraph[str], i: int, home: str, **attrs: Any) -> str:
    node = oid(i)
    values: dict[str, Any] = dict(
        kind="object",
        home=home,
        max_size=1 << 20,
        data_len=100 * i + 1500,
        fot_count=1,
        version=i % 7,
        copies=[],
        flags=0,
        bytes=4096 + i,
        depth=0,
    )
    values.update(attrs)
    G.add_node(node, **values)
    return node


def link(
    G: nx.DiGraph[str], a: str, b: str, *fot: int, name: str | None = None, uses: int = 0
) -> None:
    flags = 1 | (2 if name is not None else 0) | 4
    cross = G.nodes[a].get("home") != G.nodes[b].get("home") and "home" in G.nodes[b]
    G.add_edge(
        a,
        b,
        fot_indices=list(fot or (1,)),
        flags=flags,
        kind="name" if name else "id",
        name=name,
        uses=uses,
        cross=cross,
    )


def finish(G: nx.DiGraph[str]) -> nx.DiGraph[str]:
    objects = [a for _, a in G.nodes(data=True) if a["kind"] == "object"]
    G.graph["homes"] = sorted({a["home"] for a in objects})
    G.graph["bytes"] = sum(a["bytes"] for a in objects)
    return G


def chain(n: int) -> nx.DiGraph[str]:
    G = new_graph()
    nodes = [add_object(G, i, HOMES[i % 3], depth=i) for i in range(n)]
    for a, b in itertools.pairwise(nodes):
        link(G, a, b)
    return finish(G)


def cycle() -> nx.DiGraph[str]:
    G = new_graph()
    a, b, c = (add_object(G, i, "n1") for i in range(3))
    link(G, a, b)
    link(G, b, c)
    link(G, c, a, 1, 2)
    return finish(G)


def diamond() -> nx.DiGraph[str]:
    G = new_graph()
    a, b, c, d = (add_object(G, i, HOMES[i % 2], copies=["n9"] if i == 3 else []) for i in range(4))
    link(G, a, b, 1)
    link(G, a, c, 2)
    link(G, b, d, 1, uses=3)
    link(G, c, d, 1)
    return finish(G)


def named() -> nx.DiGraph[str]:
    """Name edges with hostile names, an unresolved name, three homes and a self loop."""
    G = new_graph()
    root = add_object(G, 0, HOMES[0], copies=[HOMES[1], HOMES[2]])
    for i, name in enumerate(ODD_NAMES, start=1):
        link(G, root, add_object(G, i, HOMES[i % 3], depth=1), i, name=name)
    missing = f"name:{ODD_NAMES[2]}/gone"
    G.add_node(missing, kind="unresolved", name=ODD_NAMES[2] + "/gone", error='no "gone" here')
    link(G, root, missing, 9, name=ODD_NAMES[2] + "/gone")
    link(G, oid(1), oid(1), 1)
    link(G, oid(2), oid(1), 1, uses=7)
    return finish(G)


def big(n: int = 3000) -> nx.DiGraph[str]:
    """A ternary tree with some links back across it, homes in three bands."""
    G = new_graph()
    nodes = [add_object(G, i, HOMES[min(i * 3 // n, 2)]) for i in range(n)]
    for i in range(1, n):
        link(G, nodes[(i - 1) // 3], nodes[i], (i - 1) % 3 + 1)
    for i in range(0, n, 97):
        link(G, nodes[i], nodes[(i * 7 + 11) % n], 5)
    return finish(G)


def veiled() -> nx.DiGraph[str]:
    """What a walk shows a caller who may not read everything: a hidden object and a
    missing one (the admin's view of an ID nobody holds) beside readable ones."""
    G = new_graph()
    root = add_object(G, 0, "n1")
    link(G, root, add_object(G, 1, "n2", depth=1), 1)
    G.add_node(oid(2), kind="hidden", depth=1)
    G.add_node(oid(3), kind="missing", error="no node of the cluster holds it", depth=1)
    link(G, root, oid(2), 2)
    link(G, root, oid(3), 3)
    return finish(G)


GRAPHS = {
    "chain": lambda: chain(40),
    "cycle": cycle,
    "diamond": diamond,
    "named": named,
    "veiled": veiled,
}


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("DTWZ_REQUIRE_TOOLS") == "1":
        pytest.fail(f"DTWZ_REQUIRE_TOOLS=1 but {name} is not installed", pytrace=False)
    pytest.skip(f"{name} is not installed; set DTWZ_REQUIRE_TOOLS=1 to make this a failure")


def same_graph(a: nx.DiGraph[str], b: nx.DiGraph[str]) -> None:
    assert a.graph == b.graph
    assert dict(a.nodes(data=True)) == dict(b.nodes(data=True))
    assert {(u, v): d for u, v, d in a.edges(data=True)} == {
        (u, v): d for u, v, d in b.edges(data=True)
    }


# --- model ------------------------------------------------------------------------


@pytest.mark.parametrize("make", [*GRAPHS.values(), big], ids=[*GRAPHS, "big"])
def test_json_round_trip_keeps_every_attribute(make: Any) -> None:
    G = make()
    doc = json.loads(json.dumps(model.to_json(G)))  # through real JSON text
    back = model.from_json(doc)
    assert isinstance(back, nx.DiGraph)
    same_graph(G, back)
    assert json.loads(render.render(G, "json")) == doc


def test_json_documents_do_not_share_lists_with_graphs() -> None:
    G = diamond()
    doc = model.to_json(G)
    doc["nodes"][3]["copies"].append("n7")
    doc["edges"][0]["fot_indices"].append(99)
    assert G.nodes[oid(3)]["copies"] == ["n9"]
    back = model.from_json(doc)
    back.nodes[oid(3)]["copies"].append("n8")
    assert doc["nodes"][3]["copies"] == ["n9", "n7"]


def test_model_helpers() -> None:
    G = model.empty_graph(oid(0), depth=3, budget=None)
    assert G.graph == dict(root=oid(0), depth=3, budget=None, truncated=False, homes=[], bytes=0)
    assert G.number_of_nodes() == 0
    D = diamond()  # a, c at n1; b, d at the second home
    assert model.cross_edges(D) == 2  # a -> b and c -> d
    assert model.cross_edges(named()) == 5  # the edge to the unresolved name has no far home
    assert model.bytes_by_home(D) == {HOMES[0]: 4096 * 2 + 0 + 2, HOMES[1]: 4096 * 2 + 1 + 3}


def test_home_colours_are_deterministic_and_distinct() -> None:
    homes = [f"node-{i}" for i in range(40)]
    colours = [render.home_colour(h, homes) for h in homes]
    assert len(set(colours)) == 40
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)
    assert render.home_colour("node-3", list(reversed(homes))) == colours[3]
    assert render.home_colour("elsewhere", homes) == render.home_colour("elsewhere", homes[:3])


# --- terminal tree ----------------------------------------------------------------


def shown_once(text: str, G: nx.DiGraph[str]) -> None:
    lines = text.splitlines()[1:]  # the first line sums the graph up
    for node, attrs in G.nodes(data=True):
        key = attrs.get("name", "\0") if attrs["kind"] == "unresolved" else node[:8]
        full = [ln for ln in lines if key in ln and not re.search(r"\((shown|continued)", ln)]
        assert len(full) == 1, (node, full)


@pytest.mark.parametrize("make", [*GRAPHS.values(), lambda: chain(500), big])
def test_tree_shows_each_object_once(make: Any) -> None:
    G = make()
    text = render.tree_text(G, width=100)
    shown_once(text, G)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "\x1b[" not in text


def test_tree_marks_repeats_names_and_unresolved_names() -> None:
    text = render.tree_text(diamond())
    assert f"↻ {oid(3)[:8]} (shown above)" in text
    assert "copies n9" in text and "uses 3" in text
    G = named()
    text = render.tree_text(G, width=160)
    for name in ODD_NAMES:
        assert f"via {name}" in text  # verbatim: no markup, no escaping in a terminal
    assert f'✗ unresolved {ODD_NAMES[2]}/gone: no "gone" here' in text
    coloured = render.tree_text(G, width=160, color=True)
    assert "\x1b[1;31m✗ unresolved" in coloured  # bold red
    r, g, b = (int(render.home_colour(HOMES[2], HOMES)[i : i + 2], 16) for i in (1, 3, 5))
    assert f"38;2;{r};{g};{b}m{HOMES[2]}" in coloured


def test_hidden_and_missing_objects_are_drawn_with_nothing_but_their_id() -> None:
    G = veiled()
    text = render.tree_text(G, width=160)
    assert "2 objects, 3 edges" in text and "1 hidden, 1 missing" in text
    hidden = next(line for line in text.splitlines() if oid(2)[:8] in line)
    assert "hidden" in hidden and " v" not in hidden and " B" not in hidden
    assert "missing: no node of the cluster holds it" in text
    dot = render.to_dot(G)
    assert '"' + oid(2)[:8] + "\\nhidden" + '"' in dot
    svg = ET.fromstring(render.to_svg(G))
    classes = {g.get("data-id"): g.get("class") for g in svg.iter(f"{SVG}g") if g.get("data-id")}
    assert classes[oid(2)] == "node hidden" and classes[oid(3)] == "node missing"
    drawn = render.to_svg(G)
    box = drawn[drawn.index(f'data-id="{oid(2)}"') :]
    box = box[: box.index("</g>")]
    assert "version" not in box and "home" not in box and "copies" not in box


def test_tree_keeps_deep_chains_on_screen() -> None:
    G = chain(60)  # a comb: every chain object also points at a leaf of its own
    for i in range(60):
        link(G, oid(i), add_object(G, 1000 + i, "n1"), 2)
    text = render.tree_text(finish(G), width=100)
    shown_once(text, G)
    assert "(continued below)" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_tree_without_its_root() -> None:
    G = cycle()
    G.graph["root"] = "f" * 32
    text = render.tree_text(G)
    assert "root ffff" in text and "not in the graph" in text
    shown_once(text, G)


# --- DOT --------------------------------------------------------------------------


def graphviz_svg(dot_source: str, tmp_path: Path) -> ET.Element:
    dot = require_tool("dot")
    path = tmp_path / "graph.dot"
    path.write_text(dot_source, encoding="utf-8")
    done = subprocess.run([dot, "-Tsvg", str(path)], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert not done.stderr.strip(), done.stderr.decode(errors="replace")  # no syntax warnings
    return ET.fromstring(done.stdout)


@pytest.mark.parametrize("make", [*GRAPHS.values(), big], ids=[*GRAPHS, "big"])
def test_dot_is_accepted_by_graphviz(make: Any, tmp_path: Path) -> None:
    G = make()
    root = graphviz_svg(render.to_dot(G), tmp_path)
    nodes = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    assert len(nodes) == G.number_of_nodes() + len(G.graph["homes"])  # objects and legend


def test_dot_labels_survive_graphviz_verbatim(tmp_path: Path) -> None:
    G = named()
    source = render.to_dot(G)
    assert source.count('style="dashed') == len(ODD_NAMES) + 1
    assert "penwidth=2" in source and "uses 7" in source
    texts = {t.text for t in graphviz_svg(source, tmp_path).iter(f"{SVG}text")}
    for text in [*ODD_NAMES, *HOMES, f"✗ {ODD_NAMES[2]}/gone", 'no "gone" here']:
        assert text in texts, text


# --- SVG --------------------------------------------------------------------------


def node_boxes(svg_text: str) -> dict[str, tuple[int, int]]:
    root = ET.fromstring(svg_text)
    boxes = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class", "").split()[:1] == ["node"]:
            rect = g.find(f"{SVG}rect")
            assert rect is not None and rect.get("class") == "node-box"
            boxes[g.get("data-id", "")] = (int(rect.get("x", "")), int(rect.get("y", "")))
    assert sum(1 for r in root.iter(f"{SVG}rect") if r.get("class") == "node-box") == len(boxes)
    return boxes


@pytest.mark.parametrize("make", [*GRAPHS.values(), big], ids=[*GRAPHS, "big"])
def test_svg_is_xml_with_one_box_per_object(make: Any) -> None:
    G = make()
    svg = render.to_svg(G)
    boxes = node_boxes(svg)
    assert len(boxes) == min(G.number_of_nodes(), render.MAX_DRAWN)
    assert set(boxes) <= set(G.nodes)
    assert len(set(boxes.values())) == len(boxes)  # no two boxes on one spot
    assert render.to_svg(make()) == svg  # deterministic
    capped = f"first {render.MAX_DRAWN:,} of {G.number_of_nodes():,} objects" in svg
    assert capped == (G.number_of_nodes() > render.MAX_DRAWN)


def test_svg_escapes_text_and_draws_legend_and_edges() -> None:
    G = named()
    root = ET.fromstring(render.to_svg(G))
    texts = "\n".join("".join(t.itertext()) for t in root.iter(f"{SVG}text"))
    titles = "\n".join(t.text or "" for t in root.iter(f"{SVG}title"))
    for name in ODD_NAMES:
        assert name in titles
    for home in HOMES:
        assert home in texts
    legend = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "legend-box"]
    assert [r.get("fill") for r in legend] == [render.home_colour(h, HOMES) for h in sorted(HOMES)]
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == G.number_of_edges()
    assert sum(1 for p in edges if p.get("stroke-dasharray")) == len(ODD_NAMES) + 1
    assert all(p.get("marker-end") == "url(#arrow)" for p in edges)


def test_svg_layers_follow_bfs_depth_and_reduce_crossings() -> None:
    # a -> w, u (in FOT order); b -> v; c -> w: BFS order w, u, v has two crossings
    G = new_graph()
    root, a, b, c, w, u, v = (add_object(G, i, "n1") for i in range(7))
    for i, x in enumerate((a, b, c), start=1):
        link(G, root, x, i)
    link(G, a, w, 1)
    link(G, a, u, 2)
    link(G, b, v, 1)
    link(G, c, w, 1)
    boxes = node_boxes(render.to_svg(finish(G)))
    assert boxes[root][1] < boxes[a][1] == boxes[b][1] == boxes[c][1] < boxes[w][1]
    lower = [(s, t) for s, t in G.edges if boxes[t][1] == boxes[w][1]]
    crossings = sum(
        1
        for i, (s1, t1) in enumerate(lower)
        for s2, t2 in lower[i + 1 :]
        if (boxes[s1][0] - boxes[s2][0]) * (boxes[t1][0] - boxes[t2][0]) < 0
    )
    assert crossings == 0  # layer 1 moves too: b, a, c over v, u, w


# --- HTML -------------------------------------------------------------------------


def test_html_is_self_contained_and_cannot_be_broken_out_of() -> None:
    G = named()
    page = render.to_html(G, title='<graph> "of" & more')
    assert page.count("</script") == 2  # only our two elements' own end tags
    assert "<title>&lt;graph&gt; &quot;of&quot; &amp; more</title>" in page
    assert not re.search(r"(?:src|href)\s*=", page)  # nothing to fetch
    assert "default-src 'none'" in page
    start = page.index('id="graph-data">') + len('id="graph-data">')
    embedded = json.loads(page[start : page.index("</script>", start)])
    assert embedded == json.loads(json.dumps(model.to_json(G)))
    assert render.render(G, "html") == render.to_html(G)


def chromium_dom(page: str, tmp_path: Path, probe: str = "") -> str:
    """The DOM after headless Chromium loaded ``page`` (plus an optional probe script)."""
    chromium = require_tool("chromium")
    path = tmp_path / "graph.html"
    if probe:
        page = page.replace("</body>", f"<script>{probe}</script>\n</body>")
    path.write_text(page, encoding="utf-8")
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("make", [named, big], ids=["named", "big"])
def test_html_script_runs_offline_in_chromium(make: Any, tmp_path: Path) -> None:
    G = make()
    dom = chromium_dom(render.to_html(G), tmp_path)
    n, m = G.number_of_nodes(), G.number_of_edges()
    assert f'data-graph-ready="{n}"' in dom
    assert f'<div id="graph-status">{n} objects, {m} edges</div>' in dom


def test_html_search_click_and_zoom_work(tmp_path: Path) -> None:
    G = named()
    # search by a fragment of the name the root uses for oid(4), as a user would type it;
    # then click the first box drawn and turn the wheel over the drawing
    probe = """
      const mark = (key, value) => { document.body.dataset[key] = value; };
      const box = document.getElementById("search");
      box.value = "ünïcødé";
      box.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter"}));
      mark("searched", document.querySelector("g.node.sel").dataset.id);
      mark("near", document.querySelectorAll("g.node.near").length);
      mark("heading", document.querySelector("#details h2").textContent);
      const rect = document.querySelector("g.node rect");
      const at = {bubbles: true, pointerId: 1, pointerType: "mouse", isPrimary: true};
      rect.dispatchEvent(new PointerEvent("pointerdown", at));
      rect.dispatchEvent(new PointerEvent("pointerup", at));
      mark("clicked", document.querySelector("g.node.sel").dataset.id);
      const svg = document.querySelector("#canvas svg");
      const before = svg.viewBox.baseVal.width;
      svg.dispatchEvent(new WheelEvent("wheel", {deltaY: 200, bubbles: true, cancelable: true}));
      mark("zoomedOut", String(svg.viewBox.baseVal.width > before));
    """
    dom = chromium_dom(render.to_html(G), tmp_path, probe)
    assert f'data-searched="{oid(4)}"' in dom
    assert 'data-near="1"' in dom  # the root that refers to it
    assert f'data-heading="{oid(4)[:8]}"' in dom
    assert f'data-clicked="{oid(0)}"' in dom  # the root is drawn first
    assert 'data-zoomed-out="true"' in dom


def test_missing_tools_skip_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("DTWZ_REQUIRE_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool("dot")
    monkeypatch.setenv("DTWZ_REQUIRE_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception):
        require_tool("dot")


def test_render_dispatch() -> None:
    G = cycle()
    assert render.render(G, "dot") == render.to_dot(G)
    assert render.render(G, "svg") == render.to_svg(G)
    with pytest.raises(InvalidArgument, match="png"):
        render.render(G, "png")
    with pytest.raises(ValueError):
        render.render(G, "")
