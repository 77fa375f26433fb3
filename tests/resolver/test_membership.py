"""Membership: tables of (stimulus, events) for each scenario, and merge properties."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz.errors import InvalidArgument
from dtwz.resolver.membership import (
    MAX_FLOORS,
    MemberDied,
    MemberJoined,
    MemberLeft,
    MemberRecovered,
    Membership,
    MembershipEvent,
    MemberState,
    MemberSuspected,
)
from dtwz.wire.messages import MemberInfo

ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
SUSPECT_AFTER, DEAD_AFTER = 2.0, 5.0


def info(node: str, inc: int = 1, hb: int = 0, state: int = ALIVE) -> MemberInfo:
    return MemberInfo(node, f"tcp://{node}:7000", f"http://{node}:8000", inc, state, hb)


def member(node: str = "a", **kwargs: float) -> Membership:
    return Membership(info(node), suspect_after=SUSPECT_AFTER, dead_after=DEAD_AFTER, **kwargs)


def run(m: Membership, steps: list[tuple[str, object, float]]) -> list[tuple[float, list[object]]]:
    """Apply ("merge", infos, now) / ("tick", None, now) steps; return the events of each."""
    out: list[tuple[float, list[object]]] = []
    for kind, arg, now in steps:
        if kind == "tick":
            events: list[object] = list(m.tick(now))
        else:
            assert isinstance(arg, list)
            events = list(m.merge(arg, now))
        out.append((now, events))
    return out


# -- scenarios ----------------------------------------------------------------------


def test_join_is_one_event_and_the_member_is_gossiped() -> None:
    m = member()
    assert m.merge([info("b")], 0.0) == [MemberJoined("b")]
    assert m.merge([info("b")], 0.1) == []  # the same record again: nothing new
    assert m.alive_ids() == ["a", "b"]
    assert [i.node_id for i in m.members()] == ["a", "b"]
    assert m.peer_addr("b") == "tcp://b:7000"
    assert m.http_addr("b") == "http://b:8000"
    assert m.peer_addr("zz") is None and m.get("zz") is None
    assert m.state("b") is ALIVE and m.state("a") is ALIVE
    assert len(m) == 2


def test_a_seed_reply_with_many_members_joins_each_once() -> None:
    m = member()
    events = m.merge([info("c"), info("b"), info("a", hb=0), info("b", hb=1)], 0.0)
    assert events == [MemberJoined("c"), MemberJoined("b")]
    assert m.alive_ids() == ["a", "b", "c"]


def test_rising_heartbeats_keep_a_member_alive() -> None:
    m = member()
    m.merge([info("b")], 0.0)
    for step in range(1, 40):
        now = step * 0.5
        assert m.merge([info("b", hb=step)], now) == []
        assert m.tick(now) == []
    assert m.state("b") is ALIVE
    assert m.me().heartbeat == 39


def test_silence_leads_to_suspect_then_dead_at_the_configured_times() -> None:
    m = member()
    steps: list[tuple[str, object, float]] = [("merge", [info("b", hb=7)], 0.0)]
    steps += [("tick", None, t * 0.5) for t in range(1, 13)]
    got = [(now, events) for now, events in run(m, steps) if events]
    assert got == [
        (0.0, [MemberJoined("b")]),
        (2.0, [MemberSuspected("b")]),
        (5.0, [MemberDied("b")]),
    ]
    assert m.alive_ids() == ["a"]
    assert m.get("b") == info("b", hb=7, state=DEAD)


def test_suspicion_clears_on_a_newer_heartbeat_without_an_event() -> None:
    m = member()
    m.merge([info("b")], 0.0)
    assert m.tick(2.5) == [MemberSuspected("b")]
    assert m.alive_ids() == ["a", "b"]  # suspicion alone moves nothing
    assert m.merge([info("b", hb=1)], 3.0) == []
    assert m.state("b") is ALIVE
    assert m.tick(4.5) == []  # the timer restarted at 3.0
    assert m.tick(5.0) == [MemberSuspected("b")]


def test_heard_directly_restarts_the_timers() -> None:
    m = member()
    m.merge([info("b")], 0.0)
    m.heard_directly("b", 4.0)
    assert m.tick(5.0) == []
    assert m.tick(6.0) == [MemberSuspected("b")]
    m.heard_directly("b", 6.5)  # the state stays: only a newer heartbeat clears it
    assert m.state("b") is SUSPECT
    assert m.tick(11.0) == []
    assert m.tick(11.5) == [MemberDied("b")]
    m.heard_directly("b", 12.0)  # not a way back from DEAD
    m.heard_directly("nobody", 12.0)
    assert m.state("b") is DEAD


@settings(max_examples=200)
@given(
    period=st.floats(0.05, 2.0),
    last_heard=st.floats(0.0, 50.0),
    dead_after=st.floats(0.5, 20.0),
)
def test_death_is_declared_within_dead_after_plus_one_tick(
    period: float, last_heard: float, dead_after: float
) -> None:
    m = Membership(info("a"), suspect_after=dead_after / 2, dead_after=dead_after)
    m.merge([info("b")], 0.0)
    if last_heard > 0:
        m.merge([info("b", hb=1)], last_heard)
    now, died_at = 0.0, None
    while died_at is None:
        now += period
        if MemberDied("b") in m.tick(now):
            died_at = now
    eps = 1e-9  # float rounding of now - heard_at
    assert last_heard + dead_after - eps <= died_at <= last_heard + dead_after + period + eps


def test_a_higher_incarnation_of_a_dead_member_is_a_restart() -> None:
    m = member()
    m.merge([info("b", inc=1, hb=3)], 0.0)
    assert m.tick(5.0) == [MemberDied("b")]
    assert m.merge([info("b", inc=2, hb=0)], 6.0) == [MemberRecovered("b", restarted=True)]
    assert m.alive_ids() == ["a", "b"]
    assert m.tick(7.5) == []  # a fresh timer from 6.0


def test_a_new_incarnation_of_a_live_member_is_reported_as_a_restart() -> None:
    m = member()
    m.merge([info("b", inc=1, hb=40)], 0.0)
    assert m.merge([info("b", inc=2, hb=1)], 1.0) == [MemberRecovered("b", restarted=True)]
    assert m.merge([info("b", inc=1, hb=99)], 1.0) == []  # the old life is over


def test_stale_gossip_cannot_resurrect_a_dead_member() -> None:
    m = member()
    m.merge([info("b", hb=3)], 0.0)
    m.tick(5.0)
    stale = [info("b", hb=3), info("b", hb=2), info("b", hb=3, state=SUSPECT), info("b", inc=0)]
    assert m.merge(stale, 6.0) == []
    assert m.state("b") is DEAD
    # a newer heartbeat of the same life is real news: we gave up too early
    assert m.merge([info("b", hb=4)], 7.0) == [MemberRecovered("b", restarted=False)]


def test_a_verdict_spreads_to_nodes_without_newer_news() -> None:
    m = member()
    m.merge([info("b", hb=3)], 0.0)
    assert m.merge([info("b", hb=3, state=SUSPECT)], 0.5) == [MemberSuspected("b")]
    assert m.merge([info("b", hb=3, state=DEAD)], 1.0) == [MemberDied("b")]
    # but a DEAD verdict with an older heartbeat than ours is someone else's stale view
    m2 = member()
    m2.merge([info("b", hb=5)], 0.0)
    assert m2.merge([info("b", hb=3, state=DEAD)], 1.0) == []
    assert m2.state("b") is ALIVE


def test_dead_members_are_forgotten_and_their_floor_stops_stale_gossip() -> None:
    m = member(forget_after=20.0)
    m.merge([info("b", hb=3)], 0.0)
    assert m.tick(5.0) == [MemberDied("b")]
    assert [i.node_id for i in m.members()] == ["a", "b"]  # the verdict is gossiped
    assert m.tick(24.9) == []
    assert len(m) == 2
    assert m.tick(25.0) == []
    assert m.get("b") is None and len(m) == 1
    assert [i.node_id for i in m.members()] == ["a"]
    # a late record of the forgotten life, even claiming ALIVE, is ignored
    assert m.merge([info("b", hb=3), info("b", hb=1), info("b", hb=3, state=DEAD)], 30.0) == []
    assert m.get("b") is None
    # newer news of it is a join, as for any member we do not know
    assert m.merge([info("b", hb=4)], 31.0) == [MemberJoined("b")]


def test_floors_are_bounded() -> None:
    m = member(forget_after=DEAD_AFTER)
    m.merge([info(f"n{i}") for i in range(MAX_FLOORS + 10)], 0.0)
    m.tick(5.0)
    m.tick(10.0)
    assert len(m) == 1
    assert len(m._floors) == MAX_FLOORS
    assert m.merge([info("n0")], 11.0) == [MemberJoined("n0")]  # the oldest floor went
    assert m.merge([info(f"n{MAX_FLOORS + 9}")], 11.0) == []


def test_verdicts_about_unknown_nodes_are_kept_silently_and_not_relayed() -> None:
    m = member()
    assert m.merge([info("b", hb=3, state=DEAD), info("c", state=LEFT)], 0.0) == []
    assert m.alive_ids() == ["a"]
    assert [i.node_id for i in m.members()] == ["a"]
    assert m.merge([info("b", hb=3)], 1.0) == []  # stale against the verdict
    assert m.merge([info("b", hb=4)], 1.0) == [MemberJoined("b")]
    assert m.tick(100.0) == [MemberDied("b")]
    assert m.get("c") is None  # forgotten without a word


def test_leave_is_final_for_its_incarnation() -> None:
    m = member()
    m.merge([info("b", hb=5)], 0.0)
    assert m.merge([info("b", hb=5, state=LEFT)], 1.0) == [MemberLeft("b")]
    assert m.alive_ids() == ["a"]
    assert m.merge([info("b", hb=99), info("b", hb=99, state=DEAD)], 2.0) == []
    assert m.state("b") is LEFT
    assert m.tick(50.0) == []  # no death for a member that left
    assert m.merge([info("b", inc=2)], 51.0) == [MemberJoined("b")]


def test_note_left_handles_the_leave_message() -> None:
    m = member()
    m.merge([info("b", hb=5), info("c", hb=1)], 0.0)
    assert m.note_left("b", 1, 1.0) == [MemberLeft("b")]
    assert m.note_left("b", 1, 1.0) == []
    assert m.note_left("c", 0, 1.0) == []  # an older life's leave
    assert m.note_left("unknown", 1, 1.0) == []
    assert m.note_left("c", 3, 1.0) == [MemberLeft("c")]  # a later life left already
    assert m.get("c") == info("c", inc=3, hb=0, state=LEFT)


def test_own_leave_stops_beating_refuting_and_counting_itself() -> None:
    m = member()
    m.merge([info("b")], 0.0)
    m.tick(0.5)
    left = m.leave(1.0)
    assert left == info("a", hb=2, state=LEFT)
    assert m.leave(1.5) == left  # idempotent
    assert m.alive_ids() == ["b"]
    m.tick(2.0)
    assert m.me().heartbeat == 2
    m.merge([info("a", hb=2, state=DEAD)], 2.0)
    assert m.me() == left and m.refutations == 0
    assert m.get("a") == left


def test_self_refutation_beats_above_the_accusation() -> None:
    m = member()
    for t in range(1, 4):
        m.tick(float(t))
    assert m.me().heartbeat == 3
    assert m.merge([info("a", hb=3)], 4.0) == []  # our own record echoed: fine
    assert m.refutations == 0
    assert m.merge([info("a", hb=3, state=DEAD)], 4.0) == []
    assert m.refutations == 1
    assert (m.me().incarnation, m.me().heartbeat, m.me().state) == (1, 4, ALIVE)
    assert m.merge([info("a", hb=1, state=SUSPECT), info("a", inc=0, state=DEAD)], 4.0) == []
    assert m.me().heartbeat == 5 and m.refutations == 2  # the suspicion, not the old life

    # the node that declared us dead takes us back from our next gossip
    other = Membership(info("b"), suspect_after=SUSPECT_AFTER, dead_after=DEAD_AFTER)
    other.merge([info("a", hb=3, state=DEAD)], 0.0)
    assert other.merge(m.members(), 1.0) == [MemberJoined("a")]
    other2 = Membership(info("b"), suspect_after=SUSPECT_AFTER, dead_after=DEAD_AFTER)
    other2.merge([info("a", hb=3)], 0.0)
    other2.tick(5.0)
    assert other2.merge(m.members(), 6.0) == [MemberRecovered("a", restarted=False)]


def test_records_that_a_heartbeat_cannot_outrank_are_refuted_with_a_new_incarnation() -> None:
    m = member()
    m.merge([info("a", hb=0, state=LEFT)], 0.0)
    assert (m.me().incarnation, m.me().state, m.refutations) == (2, ALIVE, 1)
    m.merge([info("a", inc=9, hb=50)], 0.0)  # another process with our ID, a later life
    assert (m.me().incarnation, m.refutations) == (10, 2)
    m.merge([info("a", inc=1, hb=1000)], 0.0)
    assert m.refutations == 2


def test_malformed_records_are_skipped() -> None:
    m = member()
    bad = [
        info("b", state=7),
        info(""),
        MemberInfo("c", "", "", -1, 0, 0),
    ]
    assert m.merge([*bad, info("d")], 0.0) == [MemberJoined("d")]
    assert m.alive_ids() == ["a", "d"]


@pytest.mark.parametrize(
    ("suspect_after", "dead_after", "forget_after"),
    [(0.0, 1.0, None), (2.0, 1.0, None), (1.0, 2.0, 1.0), (-1.0, 2.0, None)],
)
def test_bad_settings_are_refused(
    suspect_after: float, dead_after: float, forget_after: float | None
) -> None:
    with pytest.raises(InvalidArgument):
        Membership(
            info("a"),
            suspect_after=suspect_after,
            dead_after=dead_after,
            forget_after=forget_after,
        )
    with pytest.raises(InvalidArgument):
        Membership(info(""), suspect_after=1.0, dead_after=2.0)


def test_own_record_starts_alive() -> None:
    m = Membership(info("a", state=DEAD), suspect_after=1.0, dead_after=2.0)
    assert m.me().state is ALIVE and m.node_id == "a"


def test_a_small_cluster_agrees_on_a_crash_and_nobody_else_dies() -> None:
    """Four nodes gossip with everyone each tick; one crashes at t=10."""
    names = ["n1", "n2", "n3", "n4"]
    nodes = {n: Membership(info(n), suspect_after=1.0, dead_after=3.0) for n in names}
    for n in names[1:]:
        nodes["n1"].merge(nodes[n].members(), 0.0)
        nodes[n].merge(nodes["n1"].members(), 0.0)
    died: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
    crashed = "n3"

    def note(n: str, events: list[MembershipEvent], now: float) -> None:
        died[n] += [(now, e.node_id) for e in events if isinstance(e, MemberDied)]

    for step in range(1, 81):
        now = step * 0.25
        running = [n for n in names if not (n == crashed and now > 10.0)]
        for n in running:
            note(n, nodes[n].tick(now), now)
        for sender, receiver in itertools.permutations(running, 2):
            note(receiver, nodes[receiver].merge(nodes[sender].members(), now), now)
            nodes[receiver].heard_directly(sender, now)
    for n in names:
        if n == crashed:
            continue
        assert [who for _, who in died[n]] == [crashed]
        assert all(t <= 10.0 + 3.0 + 0.25 for t, _ in died[n])
        assert nodes[n].alive_ids() == ["n1", "n2", "n4"]


# -- merge properties ---------------------------------------------------------------

records = st.builds(
    info,
    st.sampled_from(["b", "c", "d"]),
    st.integers(0, 2),
    st.integers(0, 3),
    st.sampled_from(list(MemberState)),
)
batches = st.lists(st.lists(records, max_size=5), max_size=5)


def view(m: Membership) -> dict[str, MemberInfo | None]:
    return {n: m.get(n) for n in ["b", "c", "d"]}


def merged(batches: list[list[MemberInfo]]) -> Membership:
    m = member()
    for batch in batches:
        m.merge(batch, 0.0)
    return m


@given(batches, st.randoms(use_true_random=False))
def test_merge_order_does_not_change_the_view(
    batches: list[list[MemberInfo]], rnd: random.Random
) -> None:
    shuffled = [r for batch in batches for r in batch]
    rnd.shuffle(shuffled)
    assert view(merged(batches)) == view(merged([shuffled]))


@given(batches)
def test_merge_is_idempotent(batches: list[list[MemberInfo]]) -> None:
    once = merged(batches)
    twice = merged(batches + batches)
    assert view(once) == view(twice)
    assert once.merge([r for batch in batches for r in batch], 0.0) == []


@given(batches, batches)
def test_merging_two_views_is_commutative(
    left: list[list[MemberInfo]], right: list[list[MemberInfo]]
) -> None:
    x, y = merged(left), merged(right)
    xy, yx = merged(left), merged(right)
    xy.merge(y.members(), 0.0)
    yx.merge(x.members(), 0.0)
    # the gossiped parts agree (silent verdicts about unseen nodes are not gossiped)
    gossiped = {i.node_id for i in xy.members()} & {i.node_id for i in yx.members()}
    for n in gossiped - {"a"}:
        assert xy.get(n) == yx.get(n)


@given(batches)
def test_alive_ids_match_the_states(batches: list[list[MemberInfo]]) -> None:
    m = merged(batches)
    expected = sorted(
        ["a"] + [n for n, i in view(m).items() if i is not None and i.state in (ALIVE, SUSPECT)]
    )
    assert m.alive_ids() == expected


def test_event_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MemberJoined("b").node_id = "c"  # type: ignore[misc]
