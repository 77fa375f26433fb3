"""The interactive HTML page of an object graph: self-contained, works offline.

The page holds the SVG drawing of ``dtwz.graph.svg``, the graph as JSON, and a
small script: pan (drag), zoom (wheel), details and neighbours of an object on
click, search by ID prefix or name. A Content-Security-Policy forbids every
network load, and the embedded JSON is escaped so no name can end its script.
"""

from __future__ import annotations

import json
from typing import Any

import networkx as nx

from dtwz.graph.model import to_json
from dtwz.graph.svg import escape, svg

_CSS = """
html,body{margin:0;height:100%;font:13px system-ui,sans-serif;color:#222}
body{display:flex;flex-direction:column}
header{display:flex;gap:12px;align-items:center;flex-wrap:wrap;padding:6px 10px}
header{border-bottom:1px solid #ccc}
header h1{font-size:15px;margin:0}
#search{width:260px}
main{flex:1;display:flex;min-height:0}
#canvas{flex:1;min-width:0;background:#fafafa;cursor:grab;touch-action:none}
#canvas svg{display:block}
aside{width:360px;overflow:auto;border-left:1px solid #ccc;padding:8px}
table{border-collapse:collapse}
td{padding:1px 6px;vertical-align:top;word-break:break-all}
.mono{font-family:monospace}
button.ref{font:inherit;background:none;border:0;color:#0645ad;cursor:pointer;padding:0;text-align:left}
svg.dim g.node,svg.dim g.node.unresolved{opacity:.25}
svg.dim path.edge{opacity:.12}
svg.dim g.node.sel,svg.dim g.node.near,svg.dim path.edge.near{opacity:1}
g.node.sel rect{stroke:#000;stroke-width:3}
path.edge.near{stroke:#000}
"""

# Plain ES2017 run once at the end of <body>; it reads the embedded JSON, wires up
# pan (drag), zoom (wheel), selection and search, then marks the page ready.
_JS = r"""
"use strict";
(function () {
  const doc = JSON.parse(document.getElementById("graph-data").textContent);
  const svg = document.querySelector("#canvas svg");
  const details = document.getElementById("details");
  const results = document.getElementById("results");
  const search = document.getElementById("search");
  const nodes = new Map(), outs = new Map(), ins = new Map(), names = new Map();
  for (const n of doc.nodes) {
    nodes.set(n.id, n); outs.set(n.id, []); ins.set(n.id, []);
    names.set(n.id, n.name ? [String(n.name).toLowerCase()] : []);
  }
  for (const e of doc.edges) {
    outs.get(e.source).push(e); ins.get(e.target).push(e);
    if (e.name != null) names.get(e.target).push(String(e.name).toLowerCase());
  }
  const drawn = new Map(), edgeEls = new Map();
  for (const g of svg.querySelectorAll("g.node")) drawn.set(g.dataset.id, g);
  for (const p of svg.querySelectorAll("path.edge")) {
    for (const id of [p.dataset.s, p.dataset.t]) {
      if (!edgeEls.has(id)) edgeEls.set(id, []);
      edgeEls.get(id).push(p);
    }
  }
  const vb = svg.viewBox.baseVal;
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text != null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };
  const short = (id) => id.startsWith("name:") ? id.slice(5) : id.slice(0, 8);
  const show = (v) => v == null || (Array.isArray(v) && !v.length) ? "\u2014"
    : Array.isArray(v) ? v.join(", ") : String(v);
  function ref(id, note) {
    const b = el("button", short(id) + (note ? "  " + note : ""), "ref mono");
    b.title = id;
    b.addEventListener("click", () => { select(id); centre(id); });
    return b;
  }
  function clear() {
    svg.classList.remove("dim");
    for (const e of svg.querySelectorAll(".sel,.near")) e.classList.remove("sel", "near");
  }
  function select(id) {
    clear();
    const n = nodes.get(id);
    if (!n) return;
    svg.classList.add("dim");
    const near = [id, ...outs.get(id).map((e) => e.target), ...ins.get(id).map((e) => e.source)];
    for (const k of near) {
      const g = drawn.get(k);
      if (g) g.classList.add(k === id ? "sel" : "near");
    }
    for (const p of edgeEls.get(id) || []) p.classList.add("near");
    details.replaceChildren(el("h2", short(id)));
    if (!drawn.has(id)) details.append(el("p", "not drawn: beyond the drawing's object limit"));
    const table = el("table");
    for (const [k, v] of [["id", id], ...Object.entries(n).filter(([k]) => k !== "id").sort()]) {
      const tr = el("tr"); tr.append(el("td", k), el("td", show(v), "mono")); table.append(tr);
    }
    details.append(table);
    const sides = [["references", outs.get(id), "target"],
                   ["referenced by", ins.get(id), "source"]];
    for (const [title, list, end] of sides) {
      details.append(el("h3", title + " (" + list.length + ")"));
      for (const e of list) {
        const note = (e.name != null ? "via " + e.name + " " : "")
          + (e.uses ? "uses " + e.uses : "");
        details.append(ref(e[end], note), el("br"));
      }
    }
  }
  function centre(id) {
    const g = drawn.get(id);
    if (!g) return;
    const r = g.querySelector("rect");
    vb.x = r.x.baseVal.value + r.width.baseVal.value / 2 - vb.width / 2;
    vb.y = r.y.baseVal.value + r.height.baseVal.value / 2 - vb.height / 2;
  }
  function runSearch(pick) {
    const q = search.value.trim().toLowerCase();
    results.replaceChildren();
    if (!q) return;
    const hits = [];
    for (const n of doc.nodes) {
      if (n.id.startsWith(q) || names.get(n.id).some((s) => s.includes(q))) hits.push(n.id);
      if (hits.length > 50) break;
    }
    results.append(el("p", hits.length > 50 ? "first 50 matches" : hits.length + " matches"));
    for (const id of hits.slice(0, 50)) results.append(ref(id, names.get(id)[0] || ""), el("br"));
    if (pick && hits.length) { select(hits[0]); centre(hits[0]); }
  }
  search.addEventListener("input", () => runSearch(false));
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") runSearch(true); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") clear(); });
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(svg.getScreenCTM().inverse());
    const f = Math.exp(Math.max(-1, Math.min(1, e.deltaY * 0.0015)));
    vb.x = p.x - (p.x - vb.x) * f; vb.y = p.y - (p.y - vb.y) * f;
    vb.width *= f; vb.height *= f;
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    const m = svg.getScreenCTM();
    // the pointer is captured, so later events target the svg: remember what was hit
    drag = { x: e.clientX, y: e.clientY, vx: vb.x, vy: vb.y, k: m ? 1 / m.a : 1,
             moved: false, target: e.target };
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
    if (drag.moved) { vb.x = drag.vx - dx * drag.k; vb.y = drag.vy - dy * drag.k; }
  });
  svg.addEventListener("pointerup", () => {
    const d = drag;
    drag = null;
    if (!d || d.moved) return;
    const g = d.target.closest ? d.target.closest("g.node") : null;
    if (g) select(g.dataset.id); else clear();
  });
  const status = el("div", doc.nodes.length + " objects, " + doc.edges.length + " edges");
  status.id = "graph-status";
  document.querySelector("header").append(status);
  document.body.dataset.graphReady = String(doc.nodes.length);
})();
"""


def _script_json(value: Any) -> str:
    """JSON that cannot end its <script> element: <, > and & are written as \\u
    escapes (valid JSON), and ASCII output keeps lone surrogates encodable."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(G: nx.DiGraph[str], title: str = "dtwz object graph") -> str:
    """A self-contained page (no network: a CSP forbids it) with the SVG drawing,
    pan and zoom, object details on click and search by ID prefix or name.

    Once its script has run, ``<body data-graph-ready="N">`` and ``#graph-status``
    report N, the number of graph nodes (objects and unresolved names).
    """
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f'<header><h1>{escape(title)}</h1><input id="search" type="search" '
        'placeholder="ID prefix or name" autocomplete="off">'
        "<span>drag to pan, wheel to zoom, click an object, Esc to clear</span></header>\n"
        f'<main><div id="canvas">\n{svg(G, fit=True)}</div>\n'
        '<aside><div id="results"></div><div id="details"><p>Click an object to see it.</p>'
        "</div></aside></main>\n"
        f'<script type="application/json" id="graph-data">{_script_json(to_json(G))}</script>\n'
        f"<script>{_JS}</script>\n</body>\n</html>\n"
    )
