"""Where objects and code should be: pure decisions over a walked graph.

- **Co-location** (``plan_colocation``): split the graph into communities of
  closely linked objects (Louvain modularity on the undirected graph, each edge
  weighted by 1 + its counted uses), then give each community, largest first, to
  the node that already homes most of its bytes and still has room, so that few
  bytes move and fewer pointers cross nodes. Objects that cannot move (pinned)
  stay, and pull their community towards their home.
- **Code or data** (``choose_site``): running a function against a root moves
  either the reachable data to the caller's node, or the code object to the node
  that homes most of the reachable bytes (and from there, the rest of the data).
  The choice is the one that moves fewer bytes; a tie runs at the caller.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx


@dataclass(frozen=True)
class Plan:
    """Where each object should live, and what that changes."""

    placement: dict[str, str]  # object ID (hex) -> node ID
    moves: dict[str, str] = field(default_factory=dict)  # only the objects that change home
    cross_before: int = 0
    cross_after: int = 0
    weighted_before: int = 0
    weighted_after: int = 0
    bytes_moved: int = 0


def _objects(graph: nx.DiGraph[str]) -> dict[str, dict[str, object]]:
    return {n: a for n, a in graph.nodes(data=True) if a.get("kind") == "object"}


def _weight(attrs: dict[str, object]) -> int:
    uses = attrs.get("uses", 0)
    return 1 + (uses if isinstance(uses, int) else 0)


def cut(graph: nx.DiGraph[str], placement: dict[str, str]) -> tuple[int, int]:
    """(edges, weighted edges) between objects placed on different nodes."""
    count = weighted = 0
    for u, v, attrs in graph.edges(data=True):
        if u in placement and v in placement and placement[u] != placement[v]:
            count += 1
            weighted += _weight(attrs)
    return count, weighted


def plan_colocation(
    graph: nx.DiGraph[str],
    nodes: Iterable[str],
    *,
    capacity: int | None = None,
    pinned: Iterable[str] = (),
    seed: int = 0,
) -> Plan:
    """A placement of the graph's objects on ``nodes`` with fewer cross-node edges.

    ``capacity`` caps the bytes of this graph any one node may home (None: no cap
    beyond what a node homes already). ``pinned`` objects keep their home.
    """
    objects = _objects(graph)
    current = {n: str(a["home"]) for n, a in objects.items()}
    sizes = {n: int(a.get("bytes", 0)) for n, a in objects.items()}  # type: ignore[call-overload]
    targets = sorted(set(nodes) | set(current.values()))
    pinned_set = set(pinned) & objects.keys()

    undirected: nx.Graph[str] = nx.Graph()
    undirected.add_nodes_from(objects)
    for u, v, attrs in graph.edges(data=True):
        if u in objects and v in objects and u != v:
            w = _weight(attrs)
            if undirected.has_edge(u, v):
                undirected.edges[u, v]["weight"] += w
            else:
                undirected.add_edge(u, v, weight=w)
    communities = nx.community.louvain_communities(undirected, weight="weight", seed=seed)

    load: Counter[str] = Counter()
    for n in pinned_set:
        load[current[n]] += sizes[n]
    placement = {n: current[n] for n in pinned_set}
    for community in sorted(communities, key=lambda c: (-sum(sizes[n] for n in c), min(c))):
        free = [n for n in community if n not in pinned_set]
        if not free:
            continue
        need = sum(sizes[n] for n in free)
        # bytes of the community each node homes now; pinned members count double:
        # they cannot follow, so the rest should come to them
        affinity: Counter[str] = Counter()
        for n in community:
            affinity[current[n]] += sizes[n] * (2 if n in pinned_set else 1) + 1
        ranked = sorted(targets, key=lambda t: (-affinity[t], load[t], t))
        choice = next((t for t in ranked if capacity is None or load[t] + need <= capacity), None)
        if choice is None:  # too big for any node: leave its objects where they are
            for n in free:
                placement[n] = current[n]
                load[current[n]] += sizes[n]
            continue
        for n in free:
            placement[n] = choice
        load[choice] += need

    moves = {n: t for n, t in placement.items() if t != current[n]}
    before, wbefore = cut(graph, current)
    after, wafter = cut(graph, placement)
    if (wafter, after) >= (wbefore, before):  # no better than now: move nothing
        return Plan(dict(current), {}, before, before, wbefore, wbefore, 0)
    return Plan(placement, moves, before, after, wbefore, wafter, sum(sizes[n] for n in moves))


def group_moves(plan: Plan, graph: nx.DiGraph[str]) -> dict[tuple[str, str], list[str]]:
    """The plan's moves grouped by (old home, new home): one migration each."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n, target in sorted(plan.moves.items()):
        groups[(str(graph.nodes[n]["home"]), target)].append(n)
    return dict(groups)


@dataclass(frozen=True)
class SiteChoice:
    """Where to run a function, and the bytes each choice would move."""

    site: str  # node ID
    choice: str  # "code-to-data" or "data-to-code"
    bytes_moved: int
    estimates: dict[str, int]  # node ID -> bytes moved if run there


def choose_site(
    bytes_by_home: Mapping[str, int],
    caller: str,
    *,
    code_bytes: int,
    code_home: str,
) -> SiteChoice:
    """Run at the caller (the data comes to it) or where most reachable bytes live
    (the code goes there, and the data it lacks). ``bytes_by_home``: the reachable
    bytes each node homes."""
    total = sum(bytes_by_home.values())

    def moved(site: str) -> int:
        data = total - bytes_by_home.get(site, 0)
        code = 0 if site == code_home else code_bytes  # whoever runs it fetches it
        return data + code

    estimates = {caller: moved(caller)}
    if bytes_by_home:
        richest = max(sorted(bytes_by_home), key=lambda h: bytes_by_home[h])
        estimates[richest] = moved(richest)
    site = min(estimates, key=lambda s: (estimates[s], s != caller))
    choice = "data-to-code" if site == caller else "code-to-data"
    return SiteChoice(site, choice, estimates[site], estimates)
