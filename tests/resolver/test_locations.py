"""Directory: rendezvous placement, the shard, the location cache and republication."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtwz.errors import InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.resolver.locations import (
    DirectoryShard,
    HomePublisher,
    LocationCache,
    rendezvous_owners,
)
from dtwz.wire.messages import HomeRecord

object_ids = st.binary(min_size=16, max_size=16).map(ObjectId)
node_names = st.text("abcdefgh0123456789-.:", min_size=1, max_size=12)
node_sets = st.sets(node_names, min_size=1, max_size=12)
copies_ = st.integers(0, 5)


def oid(n: int) -> ObjectId:
    return ObjectId(hashlib.sha256(n.to_bytes(8, "big")).digest()[:16])


def rec(n: int, home: str = "h", version: int = 0, epoch: int = 0) -> HomeRecord:
    return HomeRecord(oid(n), home, version, epoch)


# -- rendezvous placement -----------------------------------------------------------


def test_owners_follow_the_documented_score() -> None:
    """Every node must compute the same owners: the formula is part of the protocol."""
    nodes = ["node-1", "node-2", "node-3", "node-4"]
    for n in range(50):
        object_id = oid(n)
        scores = {
            node: int.from_bytes(
                hashlib.blake2b(object_id + node.encode(), digest_size=8).digest(), "big"
            )
            for node in nodes
        }
        expected = sorted(nodes, key=lambda node: scores[node], reverse=True)[:2]
        assert rendezvous_owners(object_id, nodes, 2) == expected


@given(object_ids, node_sets, copies_, st.randoms(use_true_random=False))
def test_owners_are_min_copies_n_distinct_members_in_any_input_order(
    object_id: ObjectId, nodes: set[str], copies: int, rnd: random.Random
) -> None:
    listed = sorted(nodes)
    shuffled = listed + listed[:2]  # duplicates count once
    rnd.shuffle(shuffled)
    owners = rendezvous_owners(object_id, listed, copies)
    assert len(owners) == len(set(owners)) == min(copies, len(nodes))
    assert set(owners) <= nodes
    assert rendezvous_owners(object_id, shuffled, copies) == owners
    assert rendezvous_owners(object_id, iter(listed), copies) == owners  # any iterable


@given(object_ids, node_sets, st.integers(1, 5))
def test_fewer_copies_are_a_prefix_of_more(
    object_id: ObjectId, nodes: set[str], copies: int
) -> None:
    assert (
        rendezvous_owners(object_id, nodes, copies - 1)
        == (rendezvous_owners(object_id, nodes, copies)[: copies - 1])
    )


@given(st.lists(object_ids, min_size=1, max_size=30), node_sets, st.integers(1, 4), st.data())
def test_a_departure_moves_only_what_the_departed_node_owned(
    ids: list[ObjectId], nodes: set[str], copies: int, data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(nodes)))
    rest = nodes - {gone}
    for object_id in ids:
        before = rendezvous_owners(object_id, nodes, copies)
        after = rendezvous_owners(object_id, rest, copies)
        if gone not in before:
            assert after == before  # unrelated objects do not move at all
        else:
            kept = [n for n in before if n != gone]
            assert after[: len(kept)] == kept  # survivors keep their rank
            assert len(after) - len(kept) == (1 if len(rest) >= copies else 0)


@given(st.lists(object_ids, min_size=1, max_size=30), node_sets, node_names, st.integers(1, 4))
def test_a_join_only_takes_what_the_new_node_wins(
    ids: list[ObjectId], nodes: set[str], newcomer: str, copies: int
) -> None:
    if newcomer in nodes:
        return
    for object_id in ids:
        before = rendezvous_owners(object_id, nodes, copies)
        after = rendezvous_owners(object_id, nodes | {newcomer}, copies)
        if newcomer not in after:
            assert after == before
        else:
            assert set(after) - {newcomer} <= set(before)


def test_load_spreads_over_the_nodes() -> None:
    nodes = [f"node-{i}" for i in range(5)]
    counts = Counter(rendezvous_owners(oid(n), nodes, 1)[0] for n in range(5000))
    assert set(counts) == set(nodes)
    assert all(800 <= c <= 1200 for c in counts.values()), counts


def test_no_nodes_or_no_copies_means_no_owners() -> None:
    assert rendezvous_owners(oid(1), [], 3) == []
    assert rendezvous_owners(oid(1), ["a"], 0) == []
    with pytest.raises(InvalidArgument):
        rendezvous_owners(oid(1), ["a"], -1)


# -- DirectoryShard -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "offered", "stored"),
    [
        ((1, 5), (2, 0), True),  # (epoch, version): a higher epoch wins whatever the version
        ((1, 5), (1, 6), True),  # same epoch, newer version
        ((1, 5), (1, 5), True),  # same epoch and version: a republication
        ((1, 5), (1, 4), False),  # same epoch, older version: stale
        ((2, 0), (1, 9), False),  # lower epoch: the home has moved since
    ],
)
def test_shard_put_keeps_the_newest_record(
    held: tuple[int, int], offered: tuple[int, int], stored: bool
) -> None:
    shard = DirectoryShard()
    assert shard.put(rec(1, "old", version=held[1], epoch=held[0]))
    new = rec(1, "new", version=offered[1], epoch=offered[0])
    assert shard.put(new) is stored
    assert shard.get(oid(1)) == (new if stored else rec(1, "old", held[1], held[0]))
    assert len(shard) == 1 and oid(1) in shard


def test_shard_put_all_counts_what_was_stored() -> None:
    shard = DirectoryShard()
    assert shard.put_all([rec(1, version=3), rec(2), rec(1, version=2)]) == 2
    assert sorted(r.version for r in shard.records()) == [0, 3]
    assert shard.get(oid(9)) is None


def test_shard_drops_exactly_the_records_it_no_longer_owns() -> None:
    nodes = ["a", "b", "c", "d"]
    shard = DirectoryShard()
    mine = [n for n in range(300) if "a" in rendezvous_owners(oid(n), nodes, 2)]
    shard.put_all(rec(n) for n in mine)
    assert shard.drop_not_owned("a", nodes, 2) == 0
    # d joins: a loses some records to it
    more = [*nodes, "e"]
    still = {n for n in mine if "a" in rendezvous_owners(oid(n), more, 2)}
    assert shard.drop_not_owned("a", more, 2) == len(mine) - len(still)
    assert {r.object_id for r in shard.records()} == {oid(n) for n in still}
    assert 0 < len(still) < len(mine)


# -- LocationCache ------------------------------------------------------------------


def test_cache_lookup_and_replacement_rules() -> None:
    cache = LocationCache()
    assert cache.get(oid(1)) is None
    assert cache.put(rec(1, "a", version=3, epoch=1))
    assert cache.get(oid(1)) == rec(1, "a", 3, 1)
    assert cache.get(bytes(oid(1))) == rec(1, "a", 3, 1)  # plain bytes find it too
    assert not cache.put(rec(1, "b", version=9, epoch=0))
    assert not cache.put(rec(1, "a", version=2, epoch=1))
    assert cache.put(rec(1, "c", version=0, epoch=2))
    assert cache.get(oid(1)) == rec(1, "c", 0, 2)
    assert oid(1) in cache and len(cache) == 1


def test_invalidate_spares_a_newer_record() -> None:
    cache = LocationCache()
    cache.put(rec(1, "a", epoch=3))
    assert not cache.invalidate(oid(1), stale_epoch=2)  # learned epoch 3 meanwhile
    assert cache.get(oid(1)) is not None
    assert cache.invalidate(oid(1), stale_epoch=3)
    assert cache.get(oid(1)) is None
    assert not cache.invalidate(oid(1))
    cache.put(rec(2, "a", epoch=7))
    assert cache.invalidate(oid(2))  # no epoch: unconditional
    assert len(cache) == 0


def test_drop_home_forgets_only_that_home() -> None:
    cache = LocationCache()
    for n in range(10):
        cache.put(rec(n, "dead" if n % 3 == 0 else "alive"))
    assert cache.drop_home("dead") == 4
    assert len(cache) == 6
    assert all(cache.get(oid(n)) is None for n in range(0, 10, 3))
    cache.clear()
    assert len(cache) == 0


def test_bounded_cache_evicts_the_oldest() -> None:
    cache = LocationCache(max_entries=16)
    for n in range(100):
        cache.put(rec(n))
        assert len(cache) <= 16
        assert cache.get(oid(n)) == rec(n)  # what was just put is there
    assert cache.get(oid(0)) is None
    cache.put(rec(99, version=1))  # replacing an entry evicts nothing
    assert cache.get(oid(98)) is not None
    with pytest.raises(InvalidArgument):
        LocationCache(max_entries=0)


updates = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from("abc"), st.integers(0, 3), st.integers(0, 3)),
    max_size=40,
)


@given(updates, st.one_of(st.none(), st.integers(1, 3)))
def test_cache_never_goes_back_to_an_older_record(
    puts: list[tuple[int, str, int, int]], bound: int | None
) -> None:
    cache = LocationCache(max_entries=bound)
    best: dict[int, tuple[int, int]] = {}
    for n, home, version, epoch in puts:
        before = cache.get(oid(n))
        cache.put(rec(n, home, version, epoch))
        now = cache.get(oid(n))
        assert now is not None
        if before is not None:
            assert (now.epoch, now.version) >= (before.epoch, before.version)
        best[n] = max(best.get(n, (epoch, version)), (epoch, version))
        if bound is None:
            assert (now.epoch, now.version) == best[n]


# -- HomePublisher ------------------------------------------------------------------


def publisher(count: int = 200) -> HomePublisher:
    return HomePublisher("h", [rec(n, "h", version=n, epoch=1) for n in range(count)])


def test_publisher_tracks_what_it_homes() -> None:
    pub = HomePublisher("h")
    assert pub.set(oid(1), 4, 2) == rec(1, "h", 4, 2)
    pub.update(rec(2, "h"))
    assert len(pub) == 2 and pub.get(oid(1)) == rec(1, "h", 4, 2)
    pub.discard(oid(1))
    pub.discard(oid(1))
    assert pub.records() == [rec(2, "h")] == list(pub)
    with pytest.raises(InvalidArgument):
        pub.update(rec(3, "elsewhere"))


def test_a_join_publishes_only_to_the_newcomer() -> None:
    pub = publisher()
    out = pub.records_to_publish(["a", "b", "c"], ["a", "b", "c", "d"], 2)
    assert set(out) == {"d"}
    assert {r.object_id for r in out["d"]} == {
        oid(n) for n in range(200) if "d" in rendezvous_owners(oid(n), "abcd", 2)
    }


def test_a_departure_gives_each_orphaned_record_one_new_owner() -> None:
    pub = publisher()
    out = pub.records_to_publish(["a", "b", "c", "d"], ["a", "b", "d"], 2)
    orphaned = [n for n in range(200) if "c" in rendezvous_owners(oid(n), "abcd", 2)]
    assert sorted(r.version for rs in out.values() for r in rs) == orphaned
    assert "c" not in out


def test_nothing_to_publish_without_a_change() -> None:
    assert publisher().records_to_publish(["b", "a"], ["a", "b", "a"], 2) == {}


@given(node_sets, node_sets, st.integers(0, 3))
def test_publishing_covers_exactly_the_new_owners(
    old: set[str], new: set[str], copies: int
) -> None:
    pub = publisher(20)
    out = pub.records_to_publish(old, new, copies)
    for r in pub.records():
        targets = {owner for owner, rs in out.items() if r in rs}
        expected = set(rendezvous_owners(r.object_id, new, copies)) - set(
            rendezvous_owners(r.object_id, old, copies)
        )
        assert targets == expected


@given(node_sets, st.integers(0, 4))
def test_full_republication_sends_each_record_to_all_its_owners(
    alive: set[str], copies: int
) -> None:
    pub = publisher(20)
    out = pub.all_records_by_owner(alive, copies)
    assert set(out) <= alive
    per_record = Counter(r.object_id for rs in out.values() for r in rs)
    expected = min(copies, len(alive))
    assert all(per_record[r.object_id] == expected for r in pub.records())
    for owner, rs in out.items():
        assert all(owner in rendezvous_owners(r.object_id, alive, copies) for r in rs)
