"""``dtwz.node.quotas`` in process (docs/SECURITY.md §10): what an object counts,
the share of a cluster's limit a node enforces, a charge that is all or nothing and
can be undone, the exempt owners, the key bound, and the count taken from a store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtwz.errors import QuotaExceeded
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.quotas import Limits, Quotas, used_bytes
from dtwz.security.keys import KEY_OBJECT_FLAGS, KEY_OBJECT_PROT, Identity, key_object_nonce
from dtwz.service.home import header_changes
from dtwz.store.store import Store

ALICE, BOB, ADMIN = (Identity.generate(n).kuid for n in ("alice", "bob", "admin"))
GIB = 1 << 30


def quotas(objects: int = 4, size: int = 1 << 20, keys: int = 2, nodes: int = 1) -> Quotas:
    return Quotas(
        "n1", Limits(objects, size, keys), exempt=lambda k: k == ADMIN, members=lambda: nodes
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store", create=True, durable=False)
    yield opened
    opened.close()


def create(store: Store, quota: Quotas | None, owner: ObjectId, size: int, data: bytes) -> ObjectId:
    with store.transaction() as tx:
        oid = tx.create(size, kuid=owner)
        if data:
            tx.append(oid, data)
        if quota is not None:
            quota.charge(header_changes(store, tx))
    return oid


def test_a_share_is_the_limit_over_the_nodes_rounded_up() -> None:
    assert quotas(objects=100_000, nodes=3).share(100_000) == 33_334
    assert quotas().share(0) == 0  # no limit


def test_sparse_objects_count_what_they_allocate(store: Store) -> None:
    oid = create(store, None, ALICE, GIB, b"x" * 100)
    header = store.header(oid)
    assert used_bytes(header) == DATA_START + 100  # the header page and the data
    with store.transaction() as tx:
        tx.write(oid, GIB // 2, b"!")  # allocates everything below it
        assert used_bytes(tx.header(oid)) == GIB // 2 + 1


def test_a_charge_is_all_or_nothing_and_undone(store: Store) -> None:
    quota = quotas(objects=2, size=3 * 4096)
    create(store, quota, ALICE, 8192, b"a")
    create(store, quota, ALICE, 8192, b"b")
    assert quota.usage(ALICE)[0] == 2
    with pytest.raises(QuotaExceeded, match="3 objects on node n1"):
        create(store, quota, ALICE, 8192, b"c")
    assert quota.usage(ALICE)[0] == 2
    # two owners in one transaction: one over, so neither is charged
    with store.transaction() as tx:
        tx.create(8192, kuid=BOB)
        tx.create(8192, kuid=ALICE)
        with pytest.raises(QuotaExceeded):
            quota.charge(header_changes(store, tx))
        tx.abort()
    assert quota.usage(BOB) == (0, 0)
    # growth in bytes past the share; a write within what is allocated is free
    oid = create(store, quota, BOB, 64 << 10, b"")
    with store.transaction() as tx:
        tx.write(oid, DATA_START, b"y" * 4096)
        undo = quota.charge(header_changes(store, tx))
    assert quota.usage(BOB) == (1, 2 * 4096)
    with store.transaction() as tx:
        tx.write(oid, DATA_START + 4096, b"z" * 4097)
        with pytest.raises(QuotaExceeded, match="allocated bytes"):
            quota.charge(header_changes(store, tx))
        tx.abort()
    with store.transaction() as tx:
        tx.write(oid, DATA_START, b"w" * 4096)
        assert quota.charge(header_changes(store, tx)) is not None
    assert quota.usage(BOB) == (1, 2 * 4096)
    undo()  # as after a failed commit
    assert quota.usage(BOB) == (1, 4096)


def test_the_admin_and_unowned_objects_are_exempt(store: Store) -> None:
    quota = quotas(objects=1)
    for _ in range(3):
        create(store, quota, ADMIN, 8192, b"admin")
        create(store, quota, ObjectId(bytes(16)), 8192, b"nobody")
    assert quota.stats()["owners"] == 0


def test_deleting_credits_the_owner(store: Store) -> None:
    quota = quotas(objects=1)
    oid = create(store, quota, ALICE, 8192, b"a")
    with store.transaction() as tx:
        tx.delete(oid)
        quota.charge(header_changes(store, tx))
    assert quota.usage(ALICE) == (0, 0)
    create(store, quota, ALICE, 8192, b"again")


def test_keys_are_bounded_and_released() -> None:
    quota = quotas(keys=4, nodes=2)  # a share of 2
    release = quota.reserve_key()
    quota.reserve_key()
    with pytest.raises(QuotaExceeded, match="at most 4 keys"):
        quota.reserve_key()
    release()
    quota.reserve_key()


def test_the_count_is_taken_from_the_store(store: Store) -> None:
    create(store, None, ALICE, 8192, b"a")
    create(store, None, ALICE, GIB, b"b" * 10)
    create(store, None, ADMIN, 8192, b"admin")
    key = Identity.generate("k")
    with store.transaction() as tx:
        oid = tx.create(
            8192,
            flags=KEY_OBJECT_FLAGS,
            default_prot=KEY_OBJECT_PROT,
            nonce=key_object_nonce(key.public_key),
        )
        tx.append(oid, key.record.encode())
    quota = quotas()
    assert quota.scan(store) == 4
    assert quota.usage(ALICE) == (2, 2 * DATA_START + 1 + 10)
    assert quota.keys == 1 and quota.usage(ADMIN) == (0, 0)
