"""The messages of the node-to-node protocol, one frozen dataclass each. Pure.

Every message names its operation number (``OP``) and is registered by it when
the class is defined; ``Message.REGISTRY`` is therefore the whole protocol, and
docs/PROTOCOL.md documents each entry byte for byte. Nested records (``Struct``)
have no op: they only appear inside messages.

A field's annotation says how it travels (all integers little-endian); the
codec (``dtwz.wire.codec``) reads the annotations and nothing else::

    U8 U16 U32 U64   fixed-size unsigned integers
    bool             one byte, 0 or 1
    ObjectId         16 bytes
    str              u16 length + UTF-8
    bytes            u32 length + bytes (small values: they are copied)
    Blob             a Payload: an index into the payload frames (zero-copy for big data)
    list[T]          u32 count + items
    a Struct         its fields, recursively

Fields are encoded in declaration order, so a field is never reordered and a new
one goes at the end with a default. An integer that carries one of the kinds of
``dtwz.wire.kinds`` is annotated ``Annotated[U8, TheKind]``: it travels as the
integer, and decoding gives back the integer that arrived (see that module for
why unknown values are left to the handler).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from dtwz.format.ids import ZERO_ID, ObjectId
from dtwz.wire.kinds import DirAction, MemberState, TxOpKind

__all__ = [
    "U8",
    "U16",
    "U32",
    "U64",
    "Ack",
    "AppliedTxn",
    "Blob",
    "CodeResult",
    "Create",
    "Created",
    "DirOp",
    "DirResult",
    "EdgeCounts",
    "EdgeUse",
    "EdgeUses",
    "ErrorReply",
    "Fetch",
    "FetchMany",
    "FixedInt",
    "GraphEdge",
    "GraphExpand",
    "GraphObject",
    "GraphPart",
    "Heartbeat",
    "HomeRecord",
    "Invalidate",
    "Join",
    "Leave",
    "Locate",
    "Location",
    "MemberInfo",
    "Members",
    "Message",
    "Migrate",
    "MigrateIn",
    "Migrated",
    "ObjectBatch",
    "ObjectData",
    "ObjectImage",
    "ObjectVersion",
    "Payload",
    "Ping",
    "Publish",
    "RunCode",
    "Struct",
    "Transact",
    "TransactResult",
    "TxOp",
    "WalkStart",
]


class FixedInt:
    """Marker of a fixed-size unsigned integer field: its ``struct`` packs one value."""

    __slots__ = ("struct",)

    def __init__(self, fmt: str) -> None:
        self.struct = struct.Struct("<" + fmt)

    def __repr__(self) -> str:
        return f"FixedInt({self.struct.format[1:]!r})"


U8 = Annotated[int, FixedInt("B")]
U16 = Annotated[int, FixedInt("H")]
U32 = Annotated[int, FixedInt("I")]
U64 = Annotated[int, FixedInt("Q")]


class Payload:
    """Marker for a field carried in its own frame (bytes or memoryview, zero-copy)."""


Blob = Annotated[Any, Payload]


class Struct:
    """Base of nested records (not messages): frozen dataclasses with wire fields."""

    __slots__ = ()


class Message:
    """Base of every wire message; subclasses set ``OP`` and are registered by it."""

    __slots__ = ()

    OP: ClassVar[int] = 0
    # a request the receiver may get twice with the same effect as once (a read):
    # the peer endpoint sends it again when a connection reset cut it off
    IDEMPOTENT: ClassVar[bool] = False
    REGISTRY: ClassVar[dict[int, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        known = Message.REGISTRY.get(cls.OP)
        # dataclass(slots=True) builds the class twice; only a *different* class clashes
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"op {cls.OP} used by {known.__name__} and {cls.__name__}")
        Message.REGISTRY[cls.OP] = cls


# -- nested records -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberInfo(Struct):
    """A node as the membership protocol knows it."""

    node_id: str
    peer_addr: str
    http_addr: str
    incarnation: U64
    state: Annotated[U8, MemberState]
    heartbeat: U64


@dataclass(frozen=True, slots=True)
class HomeRecord(Struct):
    """Where an object lives: its home node, the version it saw, the record's epoch."""

    object_id: ObjectId
    home: str
    version: U64
    epoch: U64


@dataclass(frozen=True, slots=True)
class TxOp(Struct):
    """One operation of a transaction run at an object's home (see ``Transact``).

    ``kind``: WRITE data at offset; APPEND data (result: offset); POINTER store at
    offset a pointer to target+target_offset (result: pointer word); ALLOC size
    bytes (result: offset); NAME_POINTER store at offset a late-bound pointer to
    the name in data (an absolute path) + target_offset, through a new FOT name
    entry (result: pointer word).
    """

    kind: Annotated[U8, TxOpKind]
    object_id: ObjectId
    offset: U64
    data: bytes = b""
    target: ObjectId = ZERO_ID
    target_offset: U64 = 0
    size: U64 = 0


@dataclass(frozen=True, slots=True)
class ObjectVersion(Struct):
    object_id: ObjectId
    version: U64


# -- messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """Any request may be answered with an error; ``kind`` names a dtwz.errors class."""

    OP = 1
    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Ack(Message):
    OP = 2
    count: U32 = 0


@dataclass(frozen=True, slots=True)
class Ping(Message):
    OP = 3
    sender: str


@dataclass(frozen=True, slots=True)
class Join(Message):
    """A node asks a seed to admit it; the reply is ``Members``."""

    OP = 10
    member: MemberInfo


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Periodic gossip: the sender's view of the members (reply: the receiver's)."""

    OP = 11
    sender: MemberInfo
    members: list[MemberInfo]


@dataclass(frozen=True, slots=True)
class Members(Message):
    OP = 12
    members: list[MemberInfo]


@dataclass(frozen=True, slots=True)
class Leave(Message):
    OP = 13
    node_id: str
    incarnation: U64


@dataclass(frozen=True, slots=True)
class Locate(Message):
    """Ask a directory holder for an object's record (reply: ``Location``)."""

    OP = 20
    IDEMPOTENT = True
    object_id: ObjectId


@dataclass(frozen=True, slots=True)
class Location(Message):
    OP = 21
    found: bool
    record: HomeRecord
    copies: list[str] = field(default_factory=list)  # filled in by the home only


@dataclass(frozen=True, slots=True)
class Publish(Message):
    """A home (re)publishes records to a directory holder (reply: ``Ack``)."""

    OP = 22
    records: list[HomeRecord]


@dataclass(frozen=True, slots=True)
class Fetch(Message):
    """Read bytes of an object at its home (reply: ``ObjectData``).

    The range is clipped to the object's data area (bytes past ``data_end`` are
    zero anyway); ``length == 0`` asks for the layout only. ``with_fot`` adds the
    whole FOT. With ``register_copy`` the home remembers ``requester`` as holding
    a copy and invalidates it on the next commit.
    """

    OP = 30
    IDEMPOTENT = True
    object_id: ObjectId
    offset: U64
    length: U64
    with_fot: bool
    register_copy: bool
    requester: str


@dataclass(frozen=True, slots=True)
class ObjectData(Message):
    OP = 31
    object_id: ObjectId
    version: U64
    max_size: U64
    data_end: U64
    fot_start: U64
    offset: U64
    header: bytes
    data: Blob = field(default=b"")
    fot: Blob = field(default=b"")


@dataclass(frozen=True, slots=True)
class Transact(Message):
    """Run ops atomically at the home of every object they write.

    ``txn_id`` makes retries safe: a home that has run ``txn_id`` answers again
    with the first result and does not apply it twice.
    """

    OP = 40
    txn_id: bytes
    ops: list[TxOp]


@dataclass(frozen=True, slots=True)
class TransactResult(Message):
    OP = 41
    results: list[U64]
    versions: list[ObjectVersion]


@dataclass(frozen=True, slots=True)
class Invalidate(Message):
    """The home committed ``version``: drop copies older than that (reply: ``Ack``)."""

    OP = 42
    object_id: ObjectId
    version: U64


@dataclass(frozen=True, slots=True)
class Create(Message):
    """Create an object at the receiving node, which becomes its home (reply: ``Created``)."""

    OP = 43
    txn_id: bytes
    max_size: U64
    flags: U16
    default_prot: U16
    data: Blob = field(default=b"")
    kuid: ObjectId = ZERO_ID  # the owner's key object (the requester's, checked where it came in)


@dataclass(frozen=True, slots=True)
class Created(Message):
    OP = 44
    object_id: ObjectId
    version: U64
    data_offset: U64


@dataclass(frozen=True, slots=True)
class DirOp(Message):
    """Change a directory of the namespace at its home (reply: ``DirResult``).

    ``action``: BIND ``name`` to ``target`` as ``kind`` (1 object, 2 directory;
    ``replace`` allows replacing an object binding); UNBIND ``name`` (``target``:
    the binding expected, zero for any); MKDIR ``name`` as a new directory homed
    here, owned by ``target`` (result: its ID); SYMLINK ``name`` to the path
    ``text``; RENAME ``name`` to ``text`` in directory ``other`` (same home;
    ``target``: as for UNBIND).
    ``txn_id`` makes a retry apply once, as for ``Transact``. ``kind`` here and in
    ``DirResult`` is a directory entry's kind (``EntryKind`` of the resolver's
    directory objects).
    """

    OP = 50
    txn_id: bytes
    action: Annotated[U8, DirAction]
    directory: ObjectId
    name: str
    kind: U8 = 0
    target: ObjectId = ZERO_ID
    other: ObjectId = ZERO_ID
    text: str = ""
    replace: bool = False


@dataclass(frozen=True, slots=True)
class DirResult(Message):
    """The binding a ``DirOp`` made, replaced or removed, and the versions it produced."""

    OP = 51
    target: ObjectId
    kind: U8
    text: str
    versions: list[ObjectVersion]


@dataclass(frozen=True, slots=True)
class ObjectImage(Struct):
    """Everything a node needs to hold an object: its header record, data and FOT,
    all from one commit (``version``)."""

    object_id: ObjectId
    version: U64
    header: bytes
    data: Blob = field(default=b"")
    fot: Blob = field(default=b"")


@dataclass(frozen=True, slots=True)
class FetchMany(Message):
    """Whole images of several objects homed at the receiver, in one round trip
    (reply: ``ObjectBatch``). With ``register_copy`` the requester is remembered as
    holding copies, as for ``Fetch``. Objects the receiver does not home are listed
    in the reply's ``missing``."""

    OP = 32
    IDEMPOTENT = True
    object_ids: list[ObjectId]
    register_copy: bool
    requester: str


@dataclass(frozen=True, slots=True)
class ObjectBatch(Message):
    OP = 33
    images: list[ObjectImage]
    missing: list[ObjectId] = field(default_factory=list)


# -- the object graph ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalkStart(Struct):
    """An object to expand, and its distance from the walk's root."""

    object_id: ObjectId
    depth: U32


@dataclass(frozen=True, slots=True)
class GraphObject(Struct):
    """One object as a walk saw it at its home (docs/GRAPH.md, node attributes)."""

    object_id: ObjectId
    home: str
    max_size: U64
    data_len: U64
    fot_count: U32
    version: U64
    flags: U16
    depth: U32
    copies: list[str]
    directory: bool = False  # a directory of the namespace: never migrated


@dataclass(frozen=True, slots=True)
class GraphEdge(Struct):
    """One FOT entry of a walked object. ``target`` is zero when a name entry did
    not resolve (``error`` says why)."""

    source: ObjectId
    target: ObjectId
    fot_index: U32
    flags: U8
    name: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class GraphExpand(Message):
    """Expand objects homed at the receiver (reply: ``GraphPart``).

    The receiver walks on from ``starts`` through every object it homes, to
    ``max_depth`` and about ``budget`` bytes, and hands back what it saw plus the
    frontier: targets homed elsewhere. ``walk_id`` lets it skip objects it already
    expanded for the same walk. An object ``accessor`` may not read is answered as
    hidden and not expanded.
    """

    OP = 60
    walk_id: bytes
    starts: list[WalkStart]
    max_depth: U32
    budget: U64
    summary: bool = False  # answer with counts only (``counted``, ``counted_bytes``)
    # who the walk is for, as the entry node authenticated them (docs/SECURITY.md §9):
    # the receiver expands only objects this caller may read; zero is nobody
    accessor: ObjectId = ZERO_ID
    capabilities: list[bytes] = field(default_factory=list)  # encoded chains of the request


@dataclass(frozen=True, slots=True)
class GraphPart(Message):
    OP = 61
    objects: list[GraphObject]
    edges: list[GraphEdge]
    frontier: list[WalkStart]
    truncated: bool = False
    more: list[WalkStart] = field(default_factory=list)  # homed here, not expanded yet
    counted: U32 = 0  # objects expanded
    counted_bytes: U64 = 0  # their image bytes
    hidden: list[WalkStart] = field(default_factory=list)  # homed here, not readable by the caller


@dataclass(frozen=True, slots=True)
class EdgeUse(Struct):
    source: ObjectId
    target: ObjectId
    count: U64


@dataclass(frozen=True, slots=True)
class EdgeUses(Message):
    """Ask a node how often it dereferenced pointers from ``sources`` to objects
    homed elsewhere (reply: ``EdgeCounts``)."""

    OP = 62
    sources: list[ObjectId]


@dataclass(frozen=True, slots=True)
class EdgeCounts(Message):
    OP = 63
    counts: list[EdgeUse]


@dataclass(frozen=True, slots=True)
class AppliedTxn(Struct):
    """A transaction already applied to a migrating object, and the reply it got,
    so that a retry reaching the new home is answered, not applied again."""

    txn_id: bytes
    results: list[U64]
    versions: list[ObjectVersion]


@dataclass(frozen=True, slots=True)
class Migrate(Message):
    """Ask the home of ``object_ids`` to move them to ``to_node`` (reply: ``Migrated``)."""

    OP = 70
    txn_id: bytes
    object_ids: list[ObjectId]
    to_node: str


@dataclass(frozen=True, slots=True)
class Migrated(Message):
    OP = 71
    versions: list[ObjectVersion]
    epoch: U64


@dataclass(frozen=True, slots=True)
class MigrateIn(Message):
    """The old home ships objects to their new home (reply: ``Ack``): their images,
    the directory epoch the new home publishes them under, the nodes holding copies
    (to invalidate on the next commit) and the transactions already applied."""

    OP = 72
    txn_id: bytes
    epoch: U64
    images: list[ObjectImage]
    holders: list[str]
    applied: list[AppliedTxn]


@dataclass(frozen=True, slots=True)
class RunCode(Message):
    """Run the function of code object ``code_id`` against ``root`` here (reply:
    ``CodeResult``). ``args`` and the result are JSON text. The run acts as
    ``caller`` with its ``capabilities`` (encoded chains), as the node the caller
    asked authenticated it."""

    OP = 80
    code_id: ObjectId
    root: ObjectId
    args: bytes
    timeout_ms: U32
    caller: ObjectId = ZERO_ID
    capabilities: list[bytes] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CodeResult(Message):
    OP = 81
    result: bytes
    stats: bytes
    elapsed_us: U64
