"""A node that fetches an object checks what its home served: metadata that does not
hash to the object's ID, or another object than the one asked for, is refused with
``CorruptObject`` and nothing is kept.

The fetching side is a real ``ObjectService`` over a real store; the home is a real
service too, whose answers a malicious node rewrites on the way (the one piece
faked: no honest node can be made to forge).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dtwz.errors import CorruptObject
from dtwz.format.ids import ObjectId
from dtwz.format.layout import HEADER_RECORD_SIZE, ObjectHeader
from dtwz.service.objects import ObjectService
from dtwz.store.store import Store
from dtwz.wire.messages import Fetch, HomeRecord, Message, ObjectData

Forge = Callable[[ObjectData], ObjectData]


class _Node:
    """The cluster as a service sees it: one other node, whose answers are forged."""

    def __init__(self, node_id: str, home: str = "", forge: Forge | None = None) -> None:
        self.node_id = node_id
        self.home = home
        self.other: ObjectService | None = None
        self.forge = forge

    async def locate(self, oid: ObjectId, *, refresh: bool = False) -> HomeRecord:
        return HomeRecord(oid, self.home, 1, 1)

    async def request(
        self, node_id: str, message: Message, timeout: float | None = None
    ) -> Message:
        assert self.other is not None and isinstance(message, Fetch)
        reply = await self.other.on_fetch(message)
        return self.forge(reply) if self.forge else reply

    async def publish_created(self, record: HomeRecord) -> None:
        pass

    def learn_location(self, record: HomeRecord) -> None:
        pass


def _with_header(reply: ObjectData, header: ObjectHeader) -> ObjectData:
    record = header.encode().ljust(HEADER_RECORD_SIZE, b"\0")[:HEADER_RECORD_SIZE]
    return ObjectData(
        reply.object_id,
        reply.version,
        reply.max_size,
        reply.data_end,
        reply.fot_start,
        reply.offset,
        record,
        reply.data,
        reply.fot,
    )


def _prot_flipped(reply: ObjectData) -> ObjectData:
    header = ObjectHeader.decode(reply.header)
    return _with_header(reply, header._replace(default_prot=header.default_prot ^ 4))


async def _pair(
    tmp_path: Path, forge: Forge
) -> tuple[ObjectService, ObjectService, list[ObjectId]]:
    home_store = Store.open(tmp_path / "home", create=True, durable=False)
    home = ObjectService(home_store, _Node("home"))
    ids = [(await home.create(8192, 3, 3, b"genuine")).object_id for _ in range(2)]
    fetching_node = _Node("fetcher", "home", forge)
    fetching_node.other = home
    fetcher = ObjectService(
        Store.open(tmp_path / "fetcher", create=True, durable=False), fetching_node
    )
    return home, fetcher, ids


@pytest.mark.parametrize("how", ["metadata changed", "another object"])
async def test_a_forged_object_is_rejected_by_the_fetching_node(tmp_path: Path, how: str) -> None:
    other: list[ObjectData] = []

    def forge(reply: ObjectData) -> ObjectData:
        if how == "metadata changed":
            return _prot_flipped(reply)
        # a genuine header, but of another object, served under the ID asked for
        return _with_header(reply, ObjectHeader.decode(other[0].header))

    home, fetcher, (asked, decoy) = await _pair(tmp_path, forge)
    other.append(await home.on_fetch(Fetch(decoy, 0x1000, 0, False, False, "x")))
    try:
        with pytest.raises(CorruptObject):
            await fetcher.open_whole(asked)
        with pytest.raises(CorruptObject):
            await fetcher.header_of(asked)  # what access checks read kuid and protections from
        assert fetcher.copies.peek(asked) is None and fetcher.copies.peek(decoy) is None
    finally:
        home.close()
        fetcher.close()


async def test_an_honest_home_is_accepted(tmp_path: Path) -> None:
    home, fetcher, (oid, _) = await _pair(tmp_path, lambda reply: reply)
    try:
        obj, _, where = await fetcher.open_whole(oid)
        assert where == "home" and bytes(obj.read(0x1000, 7)) == b"genuine"
        assert (await fetcher.header_of(oid)).object_id == oid
    finally:
        home.close()
        fetcher.close()
