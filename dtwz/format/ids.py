"""Object IDs: 128 bits, derived from an object's metadata, never from a location.

``id = fold(SHA-256(nonce[16] || kuid[16] || flags[2] || default_prot[2] || zero[12]))``
where ``fold`` XORs the two 16-byte halves of the digest and ``flags`` and
``default_prot`` are little-endian u16. Because the ID is a function of metadata
that travels with the object, any node can check that an object is the one its ID
names (``verify_object_id``).
"""

from __future__ import annotations

import hashlib
import os
import struct

from dtwz.errors import FormatError

ID_BYTES = 16


class ObjectId(bytes):
    """A 128-bit object ID: exactly 16 bytes, shown as 32 lowercase hex digits.

    It subclasses ``bytes`` so that it hashes and compares at C speed: object IDs are
    dictionary keys on every pointer dereference.
    """

    __slots__ = ()

    def __new__(cls, raw: bytes | bytearray | memoryview) -> ObjectId:
        if len(raw) != ID_BYTES:
            raise FormatError(f"an object ID is {ID_BYTES} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str) -> ObjectId:
        """Parse 32 hex digits (an optional ``0x`` prefix is accepted)."""
        digits = text.strip().lower().removeprefix("0x")
        if len(digits) != 2 * ID_BYTES:
            raise FormatError(f"an object ID is 32 hex digits, got {text!r}")
        try:
            return cls(bytes.fromhex(digits))
        except ValueError as exc:
            raise FormatError(f"an object ID is 32 hex digits, got {text!r}") from exc

    @property
    def value(self) -> int:
        return int.from_bytes(self, "big")

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"ObjectId({self.hex()!r})"


ZERO_ID = ObjectId(bytes(ID_BYTES))

_ID_INPUT = struct.Struct("<16s16sHH12x")


def fold(digest: bytes) -> ObjectId:
    """XOR the two 16-byte halves of a 32-byte digest (Twizzler's rule)."""
    a = int.from_bytes(digest[:16], "big")
    b = int.from_bytes(digest[16:32], "big")
    return ObjectId((a ^ b).to_bytes(16, "big"))


def derive_object_id(nonce: bytes, kuid: bytes, flags: int, default_prot: int) -> ObjectId:
    """The ID an object with this metadata must have."""
    if len(nonce) != 16 or len(kuid) != 16:
        raise FormatError("nonce and kuid are 16 bytes each")
    if not (0 <= flags <= 0xFFFF and 0 <= default_prot <= 0xFFFF):
        raise FormatError(f"flags {flags} and default_prot {default_prot} are u16 each")
    return fold(hashlib.sha256(_ID_INPUT.pack(nonce, kuid, flags, default_prot)).digest())


def content_object_id(kuid: bytes, flags: int, default_prot: int, contents: bytes) -> ObjectId:
    """A content ID for immutable objects: the same fold, over metadata and a content hash.

    The nonce is replaced by the first 16 bytes of SHA-256(contents), so equal
    contents with equal metadata get equal IDs on every node.
    """
    return derive_object_id(hashlib.sha256(contents).digest()[:16], kuid, flags, default_prot)


def new_nonce() -> bytes:
    return os.urandom(16)


def verify_object_id(
    object_id: bytes, nonce: bytes, kuid: bytes, flags: int, default_prot: int
) -> bool:
    """True when ``object_id`` is the ID derived from this metadata."""
    return derive_object_id(nonce, kuid, flags, default_prot) == object_id
