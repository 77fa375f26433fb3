"""The codec of the node-to-node protocol: messages to frames and back. Pure, no I/O.

Theory of operation
-------------------
A message travels as ZeroMQ frames::

    frame 0   envelope: magic "DZ" | version u8 | op u8 | flags u16 | zero u16 | request_id u64
    frame 1   body: the message's fields, in declaration order (dtwz.wire.messages)
    frame 2+  payloads: large byte fields, one frame each, never copied into the body

``encode(message, request_id, reply) -> frames`` and ``decode(frames) -> (message,
request_id, reply)``. What each field becomes is read off the message's
annotations (``dtwz.wire.messages`` lists the field types), once per class: runs
of fixed-size fields are compiled into one ``struct.Struct`` each.

The decoder rejects every malformed input with ``ProtocolError``: wrong magic or
version, unknown op, short or trailing bytes, bad UTF-8 or bool, counts that
could not fit in what is left, a payload index that is missing or a payload frame
nobody refers to. It checks the framing, not the meaning: the handler of a
message judges its values. The encoder refuses values that do not fit their
field. ``error_reply`` and ``raise_error`` carry an exception across the wire as
the same ``dtwz.errors`` type (``errors.describe`` / ``errors.rebuild``).
docs/PROTOCOL.md documents each message byte for byte.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Sequence
from typing import Annotated, Any, get_args, get_origin

from dtwz import errors
from dtwz.errors import ProtocolError
from dtwz.format.ids import ObjectId
from dtwz.wire.messages import ErrorReply, FixedInt, Message, Payload, Struct

__all__ = [
    "FLAG_REPLY",
    "MAGIC",
    "MAX_LIST",
    "PROTOCOL_VERSION",
    "Frame",
    "decode",
    "decode_envelope",
    "encode",
    "error_reply",
    "raise_error",
]

PROTOCOL_VERSION = 1
MAGIC = b"DZ"
_ENVELOPE = struct.Struct("<2sBBHHQ")
FLAG_REPLY = 1
MAX_LIST = 1 << 20

Frame = bytes | memoryview

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
        if isinstance(kind, FixedInt):
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
        if isinstance(kind, FixedInt):
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
        if isinstance(kind, FixedInt):
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
    """Raise on the caller the error a peer sent, as the same dtwz.errors type.

    A kind this side does not know raises a plain ``DtwzError`` with the message
    as sent (docs/PROTOCOL.md, errors): ``errors.rebuild`` would put the kind in
    front of it, as the HTTP client wants, but the peer protocol keeps the text.
    """
    error = errors.rebuild(reply.kind, reply.message)
    if type(error) is errors.DtwzError and reply.kind != "DtwzError":
        raise errors.DtwzError(reply.message)
    raise error
