"""Pure decisions over walked graphs: co-location plans and where code runs."""

from __future__ import annotations

import random

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz.graph.placement import choose_site, cut, group_moves, plan_colocation


def _graph(homes: dict[str, str], edges: list[tuple[str, str]], size: int = 100) -> nx.DiGraph:
    g: nx.DiGraph[str] = nx.DiGraph()
    for n, h in homes.items():
        g.add_node(n, kind="object", home=h, bytes=size)
    for u, v in edges:
        g.add_edge(u, v, uses=0)
    return g


def _clusters(rng: random.Random, groups: int, members: int, nodes: list[str]) -> nx.DiGraph:
    homes, edges = {}, []
    for g in range(groups):
        names = [f"g{g}m{i}" for i in range(members)]
        for i, n in enumerate(names):
            homes[n] = rng.choice(nodes)
            edges.append((n, names[(i + 1) % members]))
            edges.append((n, names[(i + 2) % members]))
        if g:
            edges.append((f"g{g - 1}m0", names[0]))  # one link between neighbours
    return _graph(homes, edges)


def test_a_plan_puts_tight_groups_together_and_lowers_the_cut() -> None:
    g = _clusters(random.Random(3), 5, 8, ["n1", "n2", "n3"])
    plan = plan_colocation(g, ["n1", "n2", "n3"])
    assert plan.cross_after < plan.cross_before
    assert plan.cross_after <= 4  # at most the links between groups
    for k in range(5):
        assert len({plan.placement[f"g{k}m{i}"] for i in range(8)}) == 1
    assert cut(g, plan.placement)[0] == plan.cross_after
    moved = sum(len(v) for v in group_moves(plan, g).values())
    assert moved == len(plan.moves) and plan.bytes_moved == 100 * moved


def test_capacity_is_respected_and_pinned_objects_stay() -> None:
    g = _clusters(random.Random(5), 4, 6, ["n1", "n2"])
    pinned = ["g0m0", "g1m0"]
    plan = plan_colocation(g, ["n1", "n2"], capacity=1300, pinned=pinned)
    for p in pinned:
        assert plan.placement[p] == g.nodes[p]["home"]
    load: dict[str, int] = {}
    for node in plan.placement.values():
        load[node] = load.get(node, 0) + 100
    moved_in = set(plan.moves.values())
    for node in moved_in:  # a node that receives objects stays within its capacity
        assert load[node] <= 1300


def test_a_plan_that_would_not_help_moves_nothing() -> None:
    g = _graph({"a": "n1", "b": "n1", "c": "n2"}, [("a", "b")])
    plan = plan_colocation(g, ["n1", "n2"])
    assert plan.moves == {} and plan.cross_after == plan.cross_before == 0


def test_edges_used_more_weigh_more() -> None:
    g = _graph({"a": "n1", "b": "n2", "c": "n2"}, [("a", "b"), ("b", "c")])
    g.edges["a", "b"]["uses"] = 50
    plan = plan_colocation(g, ["n1", "n2"])
    assert plan.placement["a"] == plan.placement["b"]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(3, 7), st.integers(0, 1000))
def test_plans_never_raise_the_weighted_cut(groups: int, members: int, seed: int) -> None:
    g = _clusters(random.Random(seed), groups, members, ["n1", "n2", "n3"])
    plan = plan_colocation(g, ["n1", "n2", "n3"], seed=seed)
    assert plan.weighted_after <= plan.weighted_before
    assert set(plan.placement) == set(g.nodes)


def test_code_goes_to_the_data_when_that_moves_fewer_bytes() -> None:
    choice = choose_site({"n2": 1_000_000, "n1": 100}, "n1", code_bytes=5000, code_home="n1")
    assert choice.site == "n2" and choice.choice == "code-to-data"
    assert choice.estimates == {"n1": 1_000_000, "n2": 5100}
    assert choice.bytes_moved == 5100


def test_data_comes_to_the_caller_when_it_is_small_or_local() -> None:
    small = choose_site({"n2": 1000}, "n1", code_bytes=50_000, code_home="n1")
    assert small.site == "n1" and small.choice == "data-to-code"
    local = choose_site({"n1": 10_000}, "n1", code_bytes=100, code_home="n3")
    assert local.site == "n1" and local.bytes_moved == 100
    tie = choose_site({"n2": 500}, "n1", code_bytes=500, code_home="n1")
    assert tie.site == "n1"  # a tie runs at the caller
