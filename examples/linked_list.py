"""A persistent doubly linked list whose nodes are spread over many objects.

Each node sits in a *node block* object and points to its neighbours with
persistent pointers, so walking the list crosses from object to object through
FOTs, exactly as a program would walk any pointer-linked structure in Twizzler.
The list's handle is its *anchor* object. Every change is one transaction.

Anchor object (the handle)::

    0x1000   ListAnchor   magic "DTWZDLL1" | head ptr | tail ptr | block ptr (active block)
                          | length u64 | blocks u32 | nodes_per_block u32
    top      FOT: every block the head, tail or active block pointer has named

Node block object::

    0x1000   NodeBlock    magic "DTWZDLB1" | anchor ptr | prev_block ptr | nodes u32
    ...      nodes, 8-aligned: DListNode next ptr | prev ptr | value_len u32, then the value
    top      FOT: the anchor, the previous block, the blocks of neighbouring nodes

New nodes go to the active block; after ``nodes_per_block`` nodes a new block is
opened, so a list of n nodes spans about n / nodes_per_block objects. The block
size leaves room for two FOT entries per node; a block whose nodes are relinked
very often can still run out of FOT entries, which is an ``ObjectFull`` error
(nothing is changed). Removed nodes are unlinked, not reclaimed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from dtwz import Layout, ObjectId, Pointer, Ref, Store, Transaction
from dtwz.errors import CorruptObject, FormatError, InvalidArgument
from dtwz.format.layout import DATA_START, FOT_ENTRY_SIZE
from dtwz.format.views import U32, U64, Bytes

ANCHOR_MAGIC = b"DTWZDLL1"
BLOCK_MAGIC = b"DTWZDLB1"
DEFAULT_BLOCK_SIZE = 1 << 16
DEFAULT_NODES_PER_BLOCK = 32
# FOT entries are append-only and the tail moves into every new block, so the
# anchor gains an entry per block: 1 MiB (sparse) leaves room for ~32,000 blocks.
ANCHOR_SIZE = 1 << 20


class DListNode(Layout):
    """The fixed head of a node; ``value_len`` bytes of value follow it."""

    next = Pointer("DListNode")
    prev = Pointer("DListNode")
    value_len = U32()


class NodeBlock(Layout):
    magic = Bytes(8)
    anchor = Pointer("ListAnchor")
    prev_block = Pointer("NodeBlock")
    nodes = U32()


class ListAnchor(Layout):
    magic = Bytes(8)
    head = Pointer(DListNode)
    tail = Pointer(DListNode)
    block = Pointer(NodeBlock)
    length = U64()
    blocks = U32()
    nodes_per_block = U32()


def max_value_size(block_size: int, nodes_per_block: int) -> int:
    """The largest value a node may hold so that a block always fits its nodes."""
    fot_reserve = (2 * nodes_per_block + 2) * FOT_ENTRY_SIZE
    room = block_size - DATA_START - NodeBlock.SIZE - fot_reserve
    return (room // nodes_per_block - DListNode.SIZE) // 8 * 8


class LinkedList:
    """A doubly linked list of byte strings; ``anchor_id`` is its handle."""

    def __init__(self, store: Store, anchor_id: ObjectId) -> None:
        self.store = store
        self.anchor_id = ObjectId(anchor_id)
        anchor = store.view(ListAnchor, self.anchor_id)
        if bytes(anchor.magic) != ANCHOR_MAGIC:
            raise FormatError(f"object {self.anchor_id} is not a list anchor (bad magic)")
        block = anchor.block
        assert block is not None
        self.block_size = store.get(block.object_id).max_size
        self.nodes_per_block = int(anchor.nodes_per_block)
        self.max_value = max_value_size(self.block_size, self.nodes_per_block)

    @classmethod
    def create(
        cls,
        store: Store,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        nodes_per_block: int = DEFAULT_NODES_PER_BLOCK,
    ) -> LinkedList:
        if nodes_per_block < 1 or max_value_size(block_size, nodes_per_block) < 0:
            raise InvalidArgument(
                f"{nodes_per_block} nodes do not fit in a block of {block_size} bytes"
            )
        with store.transaction() as tx:
            anchor_id = tx.create(ANCHOR_SIZE)
            anchor = tx.new(
                ListAnchor, anchor_id, magic=ANCHOR_MAGIC, nodes_per_block=nodes_per_block
            )
            anchor.block = _new_block(tx, block_size, anchor, None)
            anchor.blocks = 1
        return cls(store, anchor_id)

    @classmethod
    def open(cls, store: Store, anchor_id: ObjectId) -> LinkedList:
        return cls(store, anchor_id)

    # -- reading: follow the pointers, zero-copy -------------------------------

    def _anchor(self) -> ListAnchor:
        return self.store.view(ListAnchor, self.anchor_id)

    def __len__(self) -> int:
        return int(self._anchor().length)

    def nodes(self, *, reverse: bool = False) -> Iterator[DListNode]:
        """Every node, head to tail (or tail to head), by following the pointers."""
        anchor = self._anchor()
        limit = anchor.length
        node = anchor.tail if reverse else anchor.head
        seen = 0
        while node is not None:
            seen += 1
            if seen > limit:
                raise CorruptObject(f"list {self.anchor_id} has a cycle or a wrong length")
            yield node
            node = node.prev if reverse else node.next

    def value(self, node: DListNode) -> memoryview:
        """A node's value: a read-only memoryview into the node's object."""
        return self.store.read(node.object_id, node.offset + DListNode.SIZE, node.value_len)

    def __iter__(self) -> Iterator[memoryview]:
        for node in self.nodes():
            yield self.value(node)

    def __reversed__(self) -> Iterator[memoryview]:
        for node in self.nodes(reverse=True):
            yield self.value(node)

    def find(self, match: bytes | Callable[[memoryview], bool]) -> DListNode | None:
        """The first node whose value equals ``match`` (or satisfies it, if callable)."""
        test = match if callable(match) else (lambda value: value == match)
        for node in self.nodes():
            if test(self.value(node)):
                return node
        return None

    def objects(self) -> list[ObjectId]:
        """The distinct objects the nodes live in, in list order."""
        return list(dict.fromkeys(node.object_id for node in self.nodes()))

    def blocks(self) -> list[ObjectId]:
        """Every node block, newest first (following the ``prev_block`` chain)."""
        out: list[ObjectId] = []
        block = self._anchor().block
        while block is not None:
            out.append(block.object_id)
            block = block.prev_block
        return out

    # -- changes: one transaction each -----------------------------------------

    def append(self, value: bytes) -> Ref:
        """Add ``value`` at the tail; where its node is."""
        return self.extend([value])[0]

    def extend(self, values: Iterable[bytes]) -> list[Ref]:
        """Append many values in one transaction; where their nodes are."""
        out: list[Ref] = []
        with self.store.transaction() as tx:
            anchor = tx.view(ListAnchor, self.anchor_id)
            # keep the anchor's fields here and write them once: transactional reads
            # scan the transaction's own writes, so re-reading them per node would add up
            tail, length, blocks = anchor.tail, anchor.length, anchor.blocks
            block = anchor.block
            assert block is not None
            block_nodes = block.nodes
            first_block = block
            for value in values:
                if block_nodes >= self.nodes_per_block:
                    block.nodes = block_nodes
                    block = _new_block(tx, self.block_size, anchor, block)
                    block_nodes, blocks = 0, blocks + 1
                node = self._new_node(tx, block, value)
                block_nodes += 1
                if tail is None:
                    anchor.head = node
                else:
                    tail.next = node
                    node.prev = tail
                tail = node
                length += 1
                out.append(node.ref)
            if not out:
                return out
            block.nodes = block_nodes
            anchor.tail = tail
            anchor.length = length
            if block != first_block:
                anchor.block = block
                anchor.blocks = blocks
        return out

    def insert_after(self, where: DListNode | Ref, value: bytes) -> Ref:
        """Insert ``value`` right after the node at ``where``; where the new node is."""
        with self.store.transaction() as tx:
            before = self._node_in(tx, where)
            node = self._add_node(tx, value)
            after = before.next
            node.prev = before
            node.next = after
            before.next = node
            anchor = tx.view(ListAnchor, self.anchor_id)
            if after is None:
                anchor.tail = node
            else:
                after.prev = node
            return node.ref

    def prepend(self, value: bytes) -> Ref:
        with self.store.transaction() as tx:
            anchor = tx.view(ListAnchor, self.anchor_id)
            node = self._add_node(tx, value)
            head = anchor.head
            node.next = head
            anchor.head = node
            if head is None:
                anchor.tail = node
            else:
                head.prev = node
            return node.ref

    def remove(self, where: DListNode | Ref) -> None:
        """Unlink a node (its bytes stay in its block)."""
        with self.store.transaction() as tx:
            anchor = tx.view(ListAnchor, self.anchor_id)
            node = self._node_in(tx, where)
            before, after = node.prev, node.next
            if before is None:
                if anchor.head != node:
                    raise InvalidArgument(f"{where} is not a node of list {self.anchor_id}")
                anchor.head = after
            else:
                before.next = after
            if after is None:
                anchor.tail = before
            else:
                after.prev = before
            node.prev = node.next = None  # so that removing it again is refused
            anchor.length = anchor.length - 1

    # -- helpers ---------------------------------------------------------------

    def _node_in(self, tx: Transaction, where: DListNode | Ref) -> DListNode:
        """A writable view of a node of this list; InvalidArgument for anything else."""
        ref = where.ref if isinstance(where, Layout) else where
        block = tx.view(NodeBlock, ref.object_id)
        if (
            bytes(block.magic) != BLOCK_MAGIC
            or block.anchor != tx.view(ListAnchor, self.anchor_id)
            or not DATA_START + NodeBlock.SIZE <= ref.offset < tx.header(ref.object_id).data_end
        ):
            raise InvalidArgument(f"{ref} is not a node of list {self.anchor_id}")
        return tx.view(DListNode, ref.object_id, ref.offset)

    def _new_node(self, tx: Transaction, block: NodeBlock, value: bytes) -> DListNode:
        value = bytes(value)
        if len(value) > self.max_value:
            raise InvalidArgument(
                f"a {len(value)}-byte value does not fit in a node; at most {self.max_value} "
                f"bytes with {self.nodes_per_block} nodes in blocks of {self.block_size}"
            )
        oid = block.object_id
        at = tx.alloc(oid, DListNode.SIZE + len(value))
        node = tx.view(DListNode, oid, at)
        node.value_len = len(value)
        if value:
            tx.write(oid, at + DListNode.SIZE, value)
        return node

    def _add_node(self, tx: Transaction, value: bytes) -> DListNode:
        """A new, unlinked node in the active block (opening a new block if it is full);
        counts it in the list's length."""
        anchor = tx.view(ListAnchor, self.anchor_id)
        block = anchor.block
        assert block is not None
        if block.nodes >= self.nodes_per_block:
            block = _new_block(tx, self.block_size, anchor, block)
            anchor.block = block
            anchor.blocks = anchor.blocks + 1
        node = self._new_node(tx, block, value)
        block.nodes = block.nodes + 1
        anchor.length = anchor.length + 1
        return node

    def __repr__(self) -> str:
        return f"LinkedList({self.anchor_id})"


def _new_block(tx: Transaction, size: int, anchor: ListAnchor, prev: NodeBlock | None) -> NodeBlock:
    oid = tx.create(size)
    block = tx.new(NodeBlock, oid, magic=BLOCK_MAGIC)
    block.anchor = anchor
    block.prev_block = prev
    return block
