"""The node-to-node wire protocol: messages and their binary frames. Pure, no I/O.

Theory of operation
-------------------
A message travels as ZeroMQ frames::

    frame 0   envelope: magic "DZ" | version u8 | op u8 | flags u16 | zero u16 | request_id u64
    frame 1   body: the message's fields, in declaration order (below)
    frame 2+  payloads: large byte fields, one frame each, never copied into the body

Each message is a frozen dataclass naming its ``OP``; its fields' annotations say
how they are encoded (all integers little-endian)::

    U8 U16 U32 U64   fixed-size unsigned integers
    bool             one byte, 0 or 1
    ObjectId         16 bytes
    str              u16 length + UTF-8
    bytes            u32 length + bytes (small values: they are copied)
    Payload          an index into the payload frames (zero-copy for big data)
    list[T]          u32 count + items
    a Struct         its fields, recursively

``encode(message, request_id, reply) -> frames`` and ``decode(frames) -> (message,
request_id, reply)``. The decoder rejects every malformed input with
``ProtocolError``: wrong magic or version, unknown op, short or trailing bytes,
bad UTF-8 or bool, counts that could not fit in what is left, a payload index
that is missing or a payload frame nobody refers to. docs/PROTOCOL.md documents
each message byte for byte.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, get_args, get_origin

from dtwz import errors
from dtwz.errors import ProtocolError
from dtwz.format.ids import ZERO_ID, ObjectId

PROTOCOL_VERSION = 1
MAGIC = b"DZ"
_ENVELOPE = struct.Struct("<2sBBHHQ")
FLAG_REPLY = 1
MAX_LIST = 1 << 20


class _Int:
    def __init__(self, fmt: str) -> None:
        self.struct = struct.Struct("<" + fmt)


U8 = Annotated[int, _Int("B")]
U16 = Annotated[int, _Int("H")]
U32 = Annotated[int, _Int("I")]
U64 = Annotated[int, _Int("Q")]


class Payload:
    """Marker for a field carried in its own frame (bytes or memoryview, zero-copy)."""


Blob = Annotated[Any, Payload]
Frame = bytes | memoryview


class Struct:
    """Base of nested records (not messages): frozen dataclasses with wire fields."""

    __slots__ = ()


class Message:
    """Base of every wire message; subclasses set ``OP`` and are registered by it."""

    __slots__ = ()

    OP: ClassVar[int] = 0
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
    state: U8  # dtwz.resolver.membership.MemberState
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

    kind: 1 WRITE data at offset; 2 APPEND data (result: offset); 3 POINTER store at
    offset a pointer to target+target_offset (result: pointer word); 4 ALLOC size
    bytes (result: offset); 5 NAME_POINTER store at offset a late-bound pointer to
    the name in data (an absolute path) + target_offset, through a new FOT name
    entry (result: pointer word).
    """

    kind: U8
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

    ``action``: 1 BIND ``name`` to ``target`` as ``kind`` (1 object, 2 directory;
    ``replace`` allows replacing an object binding); 2 UNBIND ``name`` (``target``:
    the binding expected, zero for any); 3 MKDIR ``name`` as a new directory homed
    here (result: its ID); 4 SYMLINK ``name`` to the path ``text``; 5 RENAME ``name``
    to ``text`` in directory ``other`` (same home; ``target``: as for UNBIND).
    ``txn_id`` makes a retry apply once, as for ``Transact``.
    """

    OP = 50
    txn_id: bytes
    action: U8
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
    expanded for the same walk.
    """

    OP = 60
    walk_id: bytes
    starts: list[WalkStart]
    max_depth: U32
    budget: U64
    summary: bool = False  # answer with counts only (``counted``, ``counted_bytes``)


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
    ``CodeResult``). ``args`` and the result are JSON text."""

    OP = 80
    code_id: ObjectId
    root: ObjectId
    args: bytes
    timeout_ms: U32


@dataclass(frozen=True, slots=True)
class CodeResult(Message):
    OP = 81
    result: bytes
    stats: bytes
    elapsed_us: U64


# -- codec ----------------------------------------------------------------------

_U8, _U16, _U32 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I")


_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, annotation) of a message's fields, in wire order (computed once per class)."""
    known = _FIELDS.get(cls)
    if known is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        known = _FIELDS[cls] = tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))
    return known


_KINDS: dict[Any, Any] = {}


def _kind(tp: Any) -> Any:
    """Normalise an annotation to what the codec switches on (typing calls are slow:
    each annotation is worked out once)."""
    try:
        return _KINDS[tp]
    except KeyError:
        pass
    kind = tp
    if get_origin(tp) is Annotated:
        _, kind = get_args(tp)[:2]
    elif get_origin(tp) is list:
        kind = _ListOf(_kind(get_args(tp)[0]))
    _KINDS[tp] = kind
    return kind


class _ListOf:
    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item


# A plan is the class's fields compiled once: runs of fixed-size fields (integers,
# bools, object IDs) become one struct.Struct each, so a typical message encodes
# and decodes with one or two pack/unpack calls instead of one per field.
_BOOL, _OID = 1, 2
_Step = tuple[Any, ...]  # ("fixed", Struct, names, posts) | ("var", name, annotation)
_PLANS: dict[type, tuple[_Step, ...]] = {}


def _plan(cls: type) -> tuple[_Step, ...]:
    known = _PLANS.get(cls)
    if known is not None:
        return known
    steps: list[_Step] = []
    run: list[tuple[str, str, int]] = []  # (name, struct code, post-processing)

    def close_run() -> None:
        if run:
            fmt = "<" + "".join(code for _, code, _ in run)
            names = tuple(name for name, _, _ in run)
            steps.append(("fixed", struct.Struct(fmt), names, tuple(p for _, _, p in run)))
            run.clear()

    for name, tp in _fields(cls):
        kind = _kind(tp)
        if isinstance(kind, _Int):
            run.append((name, kind.struct.format.lstrip("<"), 0))
        elif kind is bool:
            run.append((name, "B", _BOOL))
        elif kind is ObjectId:
            run.append((name, "16s", _OID))
        else:
            close_run()
            steps.append(("var", name, kind))
    close_run()
    _PLANS[cls] = plan = tuple(steps)
    return plan


class _Writer:
    __slots__ = ("body", "payloads")

    def __init__(self) -> None:
        self.body = bytearray()
        self.payloads: list[Frame] = []

    def value(self, tp: Any, v: Any) -> None:
        kind = _kind(tp)
        body = self.body
        if isinstance(kind, _Int):
            try:
                body += kind.struct.pack(v)
            except struct.error as exc:
                raise ProtocolError(f"{v!r} does not fit its field: {exc}") from exc
        elif kind is Payload:
            body += _U32.pack(len(self.payloads))
            self.payloads.append(v)
        elif kind is bool:
            body.append(1 if v else 0)
        elif kind is ObjectId:
            if len(v) != 16:
                raise ProtocolError("an object ID is 16 bytes")
            body += v
        elif kind is str:
            try:
                raw = v.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates, e.g. from os.fsdecode
                raise ProtocolError(f"string is not valid UTF-8: {exc}") from exc
            if len(raw) > 0xFFFF:
                raise ProtocolError("string longer than 65535 bytes")
            body += _U16.pack(len(raw))
            body += raw
        elif kind is bytes:
            body += _U32.pack(len(v))
            body += v
        elif isinstance(kind, _ListOf):
            body += _U32.pack(len(v))
            for x in v:
                self.value(kind.item, x)
        elif isinstance(kind, type) and issubclass(kind, Struct):
            self.fields(kind, v)
        else:  # pragma: no cover - a programming error in a message definition
            raise TypeError(f"no wire encoding for {tp!r}")

    def fields(self, cls: type, obj: Any) -> None:
        for step in _plan(cls):
            if step[0] == "var":
                self.value(step[2], getattr(obj, step[1]))
                continue
            _, packer, names, posts = step
            values = [getattr(obj, n) for n in names]
            for i, post in enumerate(posts):
                if post == _BOOL:
                    values[i] = 1 if values[i] else 0
                elif post == _OID and len(values[i]) != 16:
                    raise ProtocolError("an object ID is 16 bytes")
            try:
                self.body += packer.pack(*values)
            except struct.error as exc:
                raise ProtocolError(f"{cls.__name__}: a value does not fit: {exc}") from exc


class _Reader:
    __slots__ = ("buf", "payloads", "pos", "used")

    def __init__(self, buf: memoryview, payloads: Sequence[Frame]) -> None:
        self.buf = buf
        self.pos = 0
        self.payloads = payloads
        self.used: set[int] = set()

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError("message body is too short")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def unpack(self, s: struct.Struct) -> int:
        return int(s.unpack(self.take(s.size))[0])

    def value(self, tp: Any) -> Any:
        kind = _kind(tp)
        if isinstance(kind, _Int):
            return self.unpack(kind.struct)
        if kind is Payload:
            index = self.unpack(_U32)
            if index >= len(self.payloads) or index in self.used:
                raise ProtocolError(f"payload frame {index} is missing or used twice")
            self.used.add(index)
            return self.payloads[index]
        if kind is bool:
            b = self.unpack(_U8)
            if b > 1:
                raise ProtocolError("a bool is 0 or 1")
            return bool(b)
        if kind is ObjectId:
            return ObjectId(self.take(16))
        if kind is str:
            raw = self.take(self.unpack(_U16))
            try:
                return str(raw, "utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError("string is not UTF-8") from exc
        if kind is bytes:
            return bytes(self.take(self.unpack(_U32)))
        if isinstance(kind, _ListOf):
            count = self.unpack(_U32)
            # every item takes at least one byte: refuse counts the body cannot hold
            if count > MAX_LIST or count > len(self.buf) - self.pos:
                raise ProtocolError(f"list of {count} items cannot fit in the message")
            item = kind.item
            return [self.value(item) for _ in range(count)]
        if isinstance(kind, type) and issubclass(kind, Struct):
            return kind(**self.fields(kind))
        raise TypeError(f"no wire encoding for {tp!r}")  # pragma: no cover

    def fields(self, cls: type) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in _plan(cls):
            if step[0] == "var":
                out[step[1]] = self.value(step[2])
                continue
            _, unpacker, names, posts = step
            end = self.pos + unpacker.size
            if end > len(self.buf):
                raise ProtocolError("message body is too short")
            values = unpacker.unpack_from(self.buf, self.pos)
            self.pos = end
            for name, value, post in zip(names, values, posts, strict=True):
                if post == _BOOL:
                    if value > 1:
                        raise ProtocolError("a bool is 0 or 1")
                    value = bool(value)
                elif post == _OID:
                    value = ObjectId(value)
                out[name] = value
        return out


def encode(message: Message, request_id: int = 0, *, reply: bool = False) -> list[Frame]:
    """Frames for ``message``: envelope, body, then any payload frames."""
    writer = _Writer()
    writer.fields(type(message), message)
    envelope = _ENVELOPE.pack(
        MAGIC, PROTOCOL_VERSION, message.OP, FLAG_REPLY if reply else 0, 0, request_id
    )
    return [envelope, bytes(writer.body), *writer.payloads]


def decode_envelope(frame: Frame) -> tuple[int, int, bool]:
    """``(op, request_id, is_reply)`` of an envelope frame."""
    if len(frame) != _ENVELOPE.size:
        raise ProtocolError(f"envelope is {len(frame)} bytes, expected {_ENVELOPE.size}")
    magic, version, op, flags, zero, request_id = _ENVELOPE.unpack(frame)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a dtwz peer message")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this node speaks {PROTOCOL_VERSION}")
    if flags & ~FLAG_REPLY or zero:
        raise ProtocolError("unknown envelope flags")
    return op, request_id, bool(flags & FLAG_REPLY)


def decode(frames: Sequence[Frame]) -> tuple[Message, int, bool]:
    """Decode frames into ``(message, request_id, is_reply)`` or raise ProtocolError."""
    if len(frames) < 2:
        raise ProtocolError(f"a message has at least 2 frames, got {len(frames)}")
    op, request_id, is_reply = decode_envelope(frames[0])
    cls = Message.REGISTRY.get(op)
    if cls is None:
        raise ProtocolError(f"unknown op {op}")
    reader = _Reader(memoryview(frames[1]), frames[2:])
    try:
        values = reader.fields(cls)
    except errors.FormatError as exc:  # e.g. an ObjectId of the wrong length
        raise ProtocolError(str(exc)) from exc
    if reader.pos != len(reader.buf):
        raise ProtocolError(f"{len(reader.buf) - reader.pos} trailing bytes in {cls.__name__}")
    if len(reader.used) != len(frames) - 2:
        raise ProtocolError("payload frames that no field refers to")
    return cls(**values), request_id, is_reply


def error_reply(exc: BaseException) -> ErrorReply:
    """The wire form of an exception (``errors.describe``): dtwz errors keep their
    type, others become DtwzError; the text always fits the reply."""
    kind, message, _ = errors.describe(exc)
    return ErrorReply(kind, message)


def raise_error(reply: ErrorReply) -> typing.NoReturn:
    """Raise on the caller the error a peer sent, as the same dtwz.errors type."""
    raise errors.rebuild(reply.kind, reply.message)
