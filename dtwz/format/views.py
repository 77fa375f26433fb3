"""Typed views: declare a struct once, then read and write it in place.

    class ListNode(Layout):
        value = U64()
        next = Pointer("ListNode")

    with store.transaction() as tx:
        node = tx.new(ListNode, oid, value=1)      # allocates in object ``oid``
        node.next = tx.new(ListNode, other_oid, value=2)   # cross-object: adds an FOT entry

    head = store.view(ListNode, oid, offset)       # read-only, zero-copy
    while head is not None:
        print(head.value)
        head = head.next                           # follows the persistent pointer

A view is just (object, offset): reading a field unpacks it straight from the
mapping, and a view bound to a transaction reads its own writes and writes
through the transaction. Fields are little-endian and naturally aligned
(docs/FORMAT.md).

Views sit below the store: what they need of it is said here as three small
protocols, ``ObjectBytes`` (a mapped object's bytes and pointer dereference),
``ObjectReader`` (where read-only views find objects) and ``ViewWriter`` (a
transaction's reads, writes and pointers). ``dtwz.store`` satisfies them; so
does a client's cache of copies.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, NamedTuple, Protocol

from dtwz.errors import InvalidArgument, PointerOutOfBounds
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, ObjectHeader
from dtwz.format.layout import FotFlags as FotFlags


class ObjectBytes(Protocol):
    """One object's committed bytes, as a read-only view reads them (``StoredObject``)."""

    @property
    def object_id(self) -> ObjectId: ...

    @property
    def max_size(self) -> int: ...

    @property
    def view(self) -> memoryview:
        """The whole object, read-only and zero-copy."""
        ...

    def follow(self, word: int) -> tuple[ObjectBytes, int]:
        """Dereference a pointer word stored in this object: (target, offset)."""
        ...


class ObjectReader(Protocol):
    """Where read-only views find objects by ID (a ``Store``, a client's cache)."""

    def get(self, oid: ObjectId) -> ObjectBytes: ...


class ViewWriter(Protocol):
    """What a writable view asks of its transaction (``Transaction``): reads that
    see the transaction's own writes, writes, allocation and pointers."""

    def header(self, oid: ObjectId) -> ObjectHeader: ...

    def read(self, oid: ObjectId, offset: int, length: int) -> bytes: ...

    def read_u64(self, oid: ObjectId, offset: int) -> int: ...

    def write(self, oid: ObjectId, offset: int, data: bytes) -> None: ...

    def alloc(self, oid: ObjectId, size: int, align: int = 8) -> int: ...

    def follow(self, source: ObjectId, word: int) -> tuple[ObjectId, int]: ...

    def pointer_to(
        self, source: ObjectId, target: ObjectId, offset: int, flags: FotFlags
    ) -> int: ...


class Ref(NamedTuple):
    """A location in the object space: object ID and offset (what a pointer resolves to)."""

    object_id: ObjectId
    offset: int


class Field:
    """A fixed-size field of a ``Layout``; a data descriptor on the view class."""

    size: int = 0
    align: int = 1
    offset: int = 0
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, view: Layout | None, owner: type | None = None) -> Any:
        if view is None:
            return self
        return self.decode(view._read(self.offset, self.size))

    def __set__(self, view: Layout, value: Any) -> None:
        view._write(self.offset, self.encode(view, value))

    def decode(self, raw: bytes | memoryview) -> Any:
        raise NotImplementedError

    def encode(self, view: Layout, value: Any) -> bytes:
        raise NotImplementedError


class _Scalar(Field):
    fmt = ""

    def __init__(self) -> None:
        self._struct = struct.Struct("<" + self.fmt)
        self.size = self.align = self._struct.size

    def __get__(self, view: Layout | None, owner: type | None = None) -> Any:
        if view is None:
            return self
        if view._tx is None:  # the hot path: straight from the mapping
            return self._struct.unpack_from(view._obj.view, view._offset + self.offset)[0]
        return self._struct.unpack(view._read(self.offset, self.size))[0]

    def decode(self, raw: bytes | memoryview) -> Any:
        return self._struct.unpack(raw)[0]

    def encode(self, view: Layout, value: Any) -> bytes:
        try:
            return self._struct.pack(value)
        except struct.error as exc:
            raise InvalidArgument(f"{self.name}: {exc}") from exc


class U8(_Scalar):
    fmt = "B"


class U16(_Scalar):
    fmt = "H"


class U32(_Scalar):
    fmt = "I"


class U64(_Scalar):
    fmt = "Q"


class I64(_Scalar):
    fmt = "q"


class F64(_Scalar):
    fmt = "d"


class Bytes(Field):
    """Exactly ``length`` bytes; reads are zero-copy memoryviews outside transactions."""

    def __init__(self, length: int) -> None:
        self.size = length

    def decode(self, raw: bytes | memoryview) -> Any:
        return raw

    def encode(self, view: Layout, value: Any) -> bytes:
        raw = bytes(value)
        if len(raw) > self.size:
            raise InvalidArgument(f"{self.name}: {len(raw)} bytes do not fit in {self.size}")
        return raw.ljust(self.size, b"\0")


class Pointer(Field):
    """A persistent pointer to another view (``None`` is NULL).

    ``target`` is a Layout class, or its name for self-reference and forward
    references; ``Pointer()`` with no target yields ``Ref`` values.
    """

    size = align = 8
    _u64 = struct.Struct("<Q")

    def __init__(self, target: type[Layout] | str | None = None, flags: FotFlags | None = None):
        self._target = target
        self.flags = flags if flags is not None else FotFlags.READ | FotFlags.WRITE

    def __set_name__(self, owner: type, name: str) -> None:
        super().__set_name__(owner, name)
        self._module = owner.__module__

    @property
    def target(self) -> type[Layout] | None:
        if isinstance(self._target, str):
            self._target = Layout.resolve(self._target, getattr(self, "_module", ""))
        return self._target

    def __get__(self, view: Layout | None, owner: type | None = None) -> Any:
        if view is None:
            return self
        at = view._offset + self.offset
        if view._tx is None:
            word = self._u64.unpack_from(view._obj.view, at)[0]
            if not word:
                return None
            obj, offset = view._obj.follow(word)
            target = self.target
            if target is None:
                return Ref(obj.object_id, offset)
            return target._at(obj, offset)
        tx = view._tx
        word = tx.read_u64(view._oid, at)
        if not word:
            return None
        oid, offset = tx.follow(view._oid, word)
        target = self.target
        return Ref(oid, offset) if target is None else target._in_tx(tx, oid, offset)

    def raw(self, view: Layout) -> int:
        """The pointer word itself."""
        return int(self._u64.unpack(view._read(self.offset, 8))[0])

    def encode(self, view: Layout, value: Any) -> bytes:
        if value is None:
            return bytes(8)
        if isinstance(value, Layout):
            ref = value.ref
        elif isinstance(value, Ref):
            ref = value
        else:
            raise InvalidArgument(f"{self.name}: a pointer takes a view, a Ref or None")
        tx = view._tx
        if tx is None:
            raise InvalidArgument("this view is read-only: open it with tx.view() to write")
        return self._u64.pack(tx.pointer_to(view._oid, ref.object_id, ref.offset, self.flags))


class Layout:
    """Base of typed views. Subclasses declare ``Field``s as class attributes."""

    __slots__ = ("_obj", "_offset", "_oid", "_tx")
    _obj: ObjectBytes
    _offset: int
    _oid: ObjectId
    _tx: ViewWriter | None
    SIZE: ClassVar[int] = 0
    ALIGN: ClassVar[int] = 8
    FIELDS: ClassVar[dict[str, Field]] = {}
    registry: ClassVar[dict[str, type[Layout]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "FIELDS", {}))
        at = max((f.offset + f.size for f in fields.values()), default=0)
        align = 8
        for name, value in list(vars(cls).items()):
            if isinstance(value, Field):
                at = -(-at // value.align) * value.align
                value.offset = at
                at += value.size
                align = max(align, value.align)
                fields[name] = value
        cls.FIELDS = fields
        cls.ALIGN = align
        cls.SIZE = -(-at // align) * align
        Layout.registry[f"{cls.__module__}.{cls.__qualname__}"] = cls

    @staticmethod
    def resolve(name: str, module: str) -> type[Layout]:
        """The Layout a string pointer target names: first in the declaring module,
        then anywhere, provided exactly one class has that name."""
        found = Layout.registry.get(f"{module}.{name}") or Layout.registry.get(name)
        if found is not None:
            return found
        matches = [c for key, c in Layout.registry.items() if key.rsplit(".", 1)[-1] == name]
        if len(matches) != 1:
            raise InvalidArgument(
                f"pointer target {name!r} names {len(matches)} Layout classes; pass the class"
            )
        return matches[0]

    def __init__(self) -> None:
        raise TypeError("create views with store.view(), tx.view() or tx.new()")

    @classmethod
    def _at(cls, obj: ObjectBytes, offset: int) -> Any:
        if offset < DATA_START or offset + cls.SIZE > obj.max_size:
            raise PointerOutOfBounds(
                f"{cls.__name__} of {cls.SIZE} bytes at {offset:#x} does not fit in "
                f"object {obj.object_id.hex()}"
            )
        view = object.__new__(cls)
        view._obj = obj
        view._oid = obj.object_id
        view._offset = offset
        view._tx = None
        return view

    @classmethod
    def _in_tx(cls, tx: ViewWriter, oid: ObjectId, offset: int) -> Any:
        max_size = tx.header(oid).max_size
        if offset < DATA_START or offset + cls.SIZE > max_size:
            raise PointerOutOfBounds(
                f"{cls.__name__} of {cls.SIZE} bytes at {offset:#x} does not fit in "
                f"object {oid.hex()}"
            )
        view = object.__new__(cls)
        view._oid = oid
        view._offset = offset
        view._tx = tx
        return view

    @property
    def ref(self) -> Ref:
        return Ref(self._oid, self._offset)

    @property
    def object_id(self) -> ObjectId:
        return self._oid

    @property
    def offset(self) -> int:
        return self._offset

    def _read(self, at: int, size: int) -> bytes | memoryview:
        if self._tx is None:
            start = self._offset + at
            return self._obj.view[start : start + size]
        return self._tx.read(self._oid, self._offset + at, size)

    def _write(self, at: int, data: bytes) -> None:
        if self._tx is None:
            raise InvalidArgument("this view is read-only: open it with tx.view() to write")
        self._tx.write(self._oid, self._offset + at, data)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, f in self.FIELDS.items():
            value = f.raw(self) if isinstance(f, Pointer) else getattr(self, name)
            out[name] = bytes(value) if isinstance(value, memoryview) else value
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.ref == other.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"{type(self).__name__}@{self._oid.hex()}:{self._offset:#x}"


def view(store: ObjectReader, layout: type[Layout], oid: ObjectId, offset: int = DATA_START) -> Any:
    return layout._at(store.get(oid), offset)


def tx_view(tx: ViewWriter, layout: type[Layout], oid: ObjectId, offset: int = DATA_START) -> Any:
    return layout._in_tx(tx, oid, offset)


def tx_new(tx: ViewWriter, layout: type[Layout], oid: ObjectId, **values: Any) -> Any:
    offset = tx.alloc(oid, layout.SIZE, layout.ALIGN)
    new = layout._in_tx(tx, oid, offset)
    for name, value in values.items():
        if name not in layout.FIELDS:
            raise InvalidArgument(f"{layout.__name__} has no field {name!r}")
        setattr(new, name, value)
    return new
