"""Transactions a client sends: ``Op``, ``TransactResult`` and ``RemoteTransaction``.

A transaction is a list of ops that the home of the objects they change runs all
or nothing (``Client.transact``). Ops name objects by ``ObjectRef``: an ID, its
32 hex digits, or a name of the namespace. A name's syntax is checked when the op
is built, and the name is resolved to the ID it stands for when the op is sent
(``Op.resolved``), except in ``Op.name_pointer``, whose name is stored as it is
and resolved at every dereference (docs/NAMES.md).

Nothing here does I/O: ``RemoteTransaction`` gathers ops and hands them to
whatever ``transact`` it was given when its block ends.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.format.names import is_name, split_path

__all__ = ["ObjectRef", "Op", "RemoteTransaction", "TransactResult", "as_object_id", "as_ref"]

ObjectRef = ObjectId | str
"""An object ID, its 32 hex digits, or a name of the namespace ("/kvs/index")."""


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction; build it with the class methods."""

    kind: str
    object_id: ObjectRef  # an ID, or a name the client resolves when it sends the op
    offset: int = 0
    data: bytes = b""
    target: ObjectRef | None = None
    target_offset: int = 0
    size: int = 0

    @classmethod
    def write(cls, oid: ObjectRef, offset: int, data: bytes) -> Op:
        return cls("write", as_ref(oid), offset, bytes(data))

    @classmethod
    def append(cls, oid: ObjectRef, data: bytes) -> Op:
        return cls("append", as_ref(oid), 0, bytes(data))

    @classmethod
    def pointer(
        cls, src: ObjectRef, at: int, target: ObjectRef, target_offset: int = DATA_START
    ) -> Op:
        """A pointer bound now: a name ``target`` is resolved once, when the op is sent."""
        return cls("pointer", as_ref(src), at, b"", as_ref(target), target_offset)

    @classmethod
    def name_pointer(
        cls, src: ObjectRef, at: int, name: str, target_offset: int = DATA_START
    ) -> Op:
        """A late-bound pointer: ``name`` goes into an FOT name entry of ``src`` and is
        resolved through the namespace each time the pointer is followed."""
        split_path(name)
        return cls("name_pointer", as_ref(src), at, name.encode(), None, target_offset)

    @classmethod
    def alloc(cls, oid: ObjectRef, size: int) -> Op:
        return cls("alloc", as_ref(oid), size=size)

    def resolved(self, resolve: Callable[[ObjectRef], ObjectId]) -> Op:
        """This op with names replaced by the IDs they name now."""
        target = None if self.target is None else resolve(self.target)
        return dataclasses.replace(self, object_id=resolve(self.object_id), target=target)

    def to_json(self) -> dict[str, Any]:
        oid = as_object_id(self.object_id)  # names must have been resolved (``resolved``)
        doc: dict[str, Any] = {"kind": self.kind, "object": oid.hex()}
        if self.offset:
            doc["offset"] = self.offset
        if self.data:
            doc["data"] = base64.b64encode(self.data).decode()
        if self.target is not None:
            doc["target"] = as_object_id(self.target).hex()
            doc["target_offset"] = self.target_offset
        elif self.kind == "name_pointer":
            doc["target_offset"] = self.target_offset
        if self.size:
            doc["size"] = self.size
        return doc


@dataclass(frozen=True, slots=True)
class TransactResult:
    """One result per op (append: offset, pointer: the word, alloc: offset, write: 0)
    and the version each touched object reached."""

    results: list[int]
    versions: dict[ObjectId, int]


class Transactor(Protocol):
    """What runs a ``RemoteTransaction``'s ops: a ``Client``."""

    def transact(self, ops: Sequence[Op]) -> TransactResult: ...


class RemoteTransaction:
    """Ops gathered by a ``with client.transaction() as tx:`` block, run together (all
    or nothing, at the home of the objects they change) when the block ends, unless
    it raised. Each method returns its op's index: ``tx.result.results[i]`` is the
    op's result (append and alloc: the offset; pointers: the word)."""

    def __init__(self, client: Transactor) -> None:
        self._client = client
        self.ops: list[Op] = []
        self.result: TransactResult | None = None

    def __enter__(self) -> RemoteTransaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self.ops:
            self.result = self._client.transact(self.ops)

    def _add(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def write(self, oid: ObjectRef, offset: int, data: bytes) -> int:
        return self._add(Op.write(oid, offset, data))

    def append(self, oid: ObjectRef, data: bytes) -> int:
        return self._add(Op.append(oid, data))

    def alloc(self, oid: ObjectRef, size: int) -> int:
        return self._add(Op.alloc(oid, size))

    def write_pointer(
        self, src: ObjectRef, at: int, target: ObjectRef, offset: int = DATA_START
    ) -> int:
        return self._add(Op.pointer(src, at, target, offset))

    def write_name_pointer(
        self, src: ObjectRef, at: int, name: str, offset: int = DATA_START
    ) -> int:
        return self._add(Op.name_pointer(src, at, name, offset))


def as_ref(value: ObjectRef) -> ObjectRef:
    """An ID, or a name kept for the client to resolve (checked for syntax now)."""
    if isinstance(value, str) and is_name(value):
        split_path(value)
        return value
    return as_object_id(value)


def as_object_id(value: ObjectRef) -> ObjectId:
    """The ID an ``ObjectId`` or its hex digits stand for (a name is refused: resolve
    it first)."""
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str):
        try:
            return ObjectId.parse(value)
        except DtwzError as exc:
            raise InvalidArgument(f"{exc}, or a name such as /kvs/index") from exc
    raise InvalidArgument(f"an object is an ObjectId, 32 hex digits or a name, got {value!r}")
