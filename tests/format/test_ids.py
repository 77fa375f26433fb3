"""Object IDs: derivation exactly as docs/FORMAT.md states it, text form, bad input."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtwz.errors import DtwzError, FormatError
from dtwz.format.ids import (
    ID_BYTES,
    ZERO_ID,
    ObjectId,
    content_object_id,
    derive_object_id,
    fold,
    new_nonce,
    verify_object_id,
)

sixteen = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)


def reference_id(nonce: bytes, kuid: bytes, flags: int, prot: int) -> bytes:
    """docs/FORMAT.md, written out independently of dtwz.format.ids."""
    message = nonce + kuid + flags.to_bytes(2, "little") + prot.to_bytes(2, "little") + bytes(12)
    assert len(message) == 48
    digest = hashlib.sha256(message).digest()
    return bytes(a ^ b for a, b in zip(digest[:16], digest[16:], strict=True))


@given(nonce=sixteen, kuid=sixteen, flags=u16, prot=u16)
def test_derivation_matches_the_design(nonce: bytes, kuid: bytes, flags: int, prot: int) -> None:
    oid = derive_object_id(nonce, kuid, flags, prot)
    assert isinstance(oid, ObjectId)
    assert bytes(oid) == reference_id(nonce, kuid, flags, prot)
    assert verify_object_id(oid, nonce, kuid, flags, prot)


def test_derivation_known_answer() -> None:
    # a fixed vector, so a change of byte order or padding cannot slip through both sides
    nonce = bytes(range(16))
    kuid = bytes(range(16, 32))
    digest = hashlib.sha256(nonce + kuid + b"\x03\x00\x05\x00" + bytes(12)).digest()
    expected = bytes(x ^ y for x, y in zip(digest[:16], digest[16:], strict=True))
    assert derive_object_id(nonce, kuid, 3, 5) == expected
    # flags and prot are little-endian: swapping their bytes gives another ID
    assert derive_object_id(nonce, kuid, 0x0300, 0x0500) != expected


@given(digest=st.binary(min_size=32, max_size=32))
def test_fold_xors_the_halves(digest: bytes) -> None:
    assert fold(digest) == bytes(a ^ b for a, b in zip(digest[:16], digest[16:], strict=True))


@given(nonce=sixteen, kuid=sixteen, flags=u16, prot=u16, data=st.data())
def test_verify_rejects_any_other_metadata(
    nonce: bytes, kuid: bytes, flags: int, prot: int, data: st.DataObject
) -> None:
    oid = derive_object_id(nonce, kuid, flags, prot)
    field = data.draw(st.sampled_from(["nonce", "kuid", "flags", "prot", "id"]))
    if field == "nonce":
        other = data.draw(sixteen.filter(lambda b: b != nonce))
        assert not verify_object_id(oid, other, kuid, flags, prot)
    elif field == "kuid":
        other = data.draw(sixteen.filter(lambda b: b != kuid))
        assert not verify_object_id(oid, nonce, other, flags, prot)
    elif field == "flags":
        assert not verify_object_id(oid, nonce, kuid, flags ^ 1, prot)
    elif field == "prot":
        assert not verify_object_id(oid, nonce, kuid, flags, prot ^ 0x8000)
    else:
        forged = ObjectId(bytes([oid[0] ^ 0x01]) + oid[1:])
        assert not verify_object_id(forged, nonce, kuid, flags, prot)


def test_content_id_is_deterministic_and_content_sensitive() -> None:
    a = content_object_id(bytes(16), 1, 1, b"hello")
    assert a == content_object_id(bytes(16), 1, 1, b"hello")
    assert a != content_object_id(bytes(16), 1, 1, b"hellO")
    assert a == reference_id(hashlib.sha256(b"hello").digest()[:16], bytes(16), 1, 1)


def test_new_nonce_is_sixteen_fresh_bytes() -> None:
    nonces = {new_nonce() for _ in range(64)}
    assert len(nonces) == 64
    assert all(len(n) == 16 for n in nonces)


@given(raw=sixteen)
def test_text_round_trip(raw: bytes) -> None:
    oid = ObjectId(raw)
    text = str(oid)
    assert len(text) == 32
    assert text == text.lower() == raw.hex()
    assert ObjectId.parse(text) == oid
    assert ObjectId.parse(text.upper()) == oid
    assert ObjectId.parse("0x" + text) == oid
    assert ObjectId.parse(f"  {text}\n") == oid
    assert oid.value == int.from_bytes(raw, "big")
    assert repr(oid) == f"ObjectId({text!r})"


def test_object_id_is_hashable_bytes() -> None:
    oid = ObjectId(bytes(range(16)))
    assert {oid: 1}[bytes(range(16))] == 1
    assert bytes(ID_BYTES) == ZERO_ID
    assert str(ZERO_ID) == "0" * 32


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0" * 31,
        "0" * 33,
        "0x" + "0" * 31,
        "g" * 32,
        "0" * 30 + "zz",
        "00 11 22 33 44 55 66 77 88 99 aa",
        "0" * 30 + " 0",
        "-" + "0" * 31,
        "\uff10" * 32,  # full-width digits are not hex
        "0X" + "0" * 30,
    ],
)
def test_parse_rejects_malformed_text(text: str) -> None:
    with pytest.raises(FormatError):
        ObjectId.parse(text)


@given(text=st.text(max_size=40))
def test_parse_never_raises_anything_but_format_error(text: str) -> None:
    try:
        oid = ObjectId.parse(text)
    except FormatError:
        return
    assert len(oid) == 16
    assert str(oid) == text.strip().lower().removeprefix("0x")


@pytest.mark.parametrize("length", [0, 1, 15, 17, 32])
def test_wrong_length_bytes_are_rejected(length: int) -> None:
    with pytest.raises(FormatError):
        ObjectId(bytes(length))


@pytest.mark.parametrize(
    ("nonce", "kuid"), [(bytes(15), bytes(16)), (bytes(16), bytes(17)), (b"", b"")]
)
def test_derivation_rejects_wrong_length_metadata(nonce: bytes, kuid: bytes) -> None:
    with pytest.raises(FormatError):
        derive_object_id(nonce, kuid, 0, 0)


@pytest.mark.parametrize(("flags", "prot"), [(-1, 0), (0x10000, 0), (0, -1), (0, 1 << 16)])
def test_derivation_rejects_fields_wider_than_u16(flags: int, prot: int) -> None:
    with pytest.raises(DtwzError):
        derive_object_id(bytes(16), bytes(16), flags, prot)
    # the width really is two bytes each: the largest values still derive
    derive_object_id(bytes(16), bytes(16), 0xFFFF, 0xFFFF)


def test_struct_layout_of_the_id_input() -> None:
    # the 48-byte message is exactly what the design lists, in that order
    packed = struct.pack("<16s16sHH12x", b"n" * 16, b"k" * 16, 0x0102, 0x0304)
    assert packed == b"n" * 16 + b"k" * 16 + b"\x02\x01\x04\x03" + bytes(12)
    digest = hashlib.sha256(packed).digest()
    assert derive_object_id(b"n" * 16, b"k" * 16, 0x0102, 0x0304) == fold(digest)
