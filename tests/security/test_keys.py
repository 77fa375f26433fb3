"""Identities and key objects: Ed25519 pinned to RFC 8032, key IDs, records, key files."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

import pytest

from dtwz.errors import CorruptObject, FormatError, InvalidArgument
from dtwz.format.ids import ZERO_ID, derive_object_id, new_nonce
from dtwz.format.layout import ObjectFlags, ObjectHeader, Protection
from dtwz.security.keys import (
    KEY_OBJECT_FLAGS,
    KEY_OBJECT_PROT,
    MAX_LABEL_BYTES,
    Identity,
    KeyRecord,
    PublicKey,
    check_key_object,
    key_object_nonce,
    kuid_of,
)

# RFC 8032 §7.1, test 1
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def reference_kuid(public: bytes) -> bytes:
    """docs/SECURITY.md §1, written out independently of dtwz.security.keys."""
    nonce = hashlib.sha256(b"dtwz-key\x00" + b"\x01" + public).digest()[:16]
    message = nonce + bytes(16) + struct.pack("<HH", 1, 1) + bytes(12)
    digest = hashlib.sha256(message).digest()
    return bytes(a ^ b for a, b in zip(digest[:16], digest[16:], strict=True))


def test_ed25519_is_rfc_8032() -> None:
    identity = Identity.from_seed(RFC_SEED)
    assert identity.public_key.raw == RFC_PUBLIC
    assert identity.sign(b"") == RFC_SIGNATURE
    assert PublicKey(RFC_PUBLIC).verify(RFC_SIGNATURE, b"")


def test_signatures_verify_only_for_their_key_and_message() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"message")
    assert alice.public_key.verify(signature, b"message")
    assert not alice.public_key.verify(signature, b"messagE")
    assert not bob.public_key.verify(signature, b"message")
    assert not alice.public_key.verify(signature[:-1], b"message")
    assert not alice.public_key.verify(bytes(64), b"message")


def test_kuid_is_the_documented_content_id() -> None:
    key = PublicKey(RFC_PUBLIC)
    assert bytes(kuid_of(key)) == reference_kuid(RFC_PUBLIC)
    assert kuid_of(RFC_PUBLIC) == key.kuid == Identity.from_seed(RFC_SEED).kuid


def test_kuid_depends_on_the_key_only() -> None:
    a, b = Identity.generate("one"), Identity.generate("one")
    assert a.kuid != b.kuid
    assert KeyRecord(a.public_key, "x").object_id == KeyRecord(a.public_key, "y").object_id


def test_a_key_object_header_checks_like_any_other() -> None:
    key = Identity.generate().public_key
    nonce = key_object_nonce(key)
    assert derive_object_id(nonce, ZERO_ID, KEY_OBJECT_FLAGS, KEY_OBJECT_PROT) == key.kuid
    header = ObjectHeader(
        key.kuid, nonce, bytes(ZERO_ID), ObjectFlags.IMMUTABLE, Protection.READ, 13, data_len=60
    )
    assert ObjectHeader.decode(header.encode()) == header


def test_public_key_rejects_wrong_lengths() -> None:
    for raw in [b"", bytes(31), bytes(33)]:
        with pytest.raises(FormatError, match="32 bytes"):
            PublicKey(raw)


def test_public_keys_compare_by_value() -> None:
    assert PublicKey(RFC_PUBLIC) == PublicKey(bytearray(RFC_PUBLIC))
    assert hash(PublicKey(RFC_PUBLIC)) == hash(PublicKey(RFC_PUBLIC))
    assert PublicKey(RFC_PUBLIC) != PublicKey(bytes(32))
    assert PublicKey(RFC_PUBLIC) != RFC_PUBLIC


# --- key records --------------------------------------------------------------------------


def test_key_record_bytes_are_the_documented_ones() -> None:
    record = KeyRecord(PublicKey(RFC_PUBLIC), "alice")
    expected = b"DTWZKEY\x00" + b"\x01\x00" + b"\x01" + b"\x00" + RFC_PUBLIC + b"\x05\x00"
    assert record.encode() == expected + b"alice"
    assert KeyRecord.decode(record.encode()) == record


def test_key_record_round_trips_unicode_labels() -> None:
    record = KeyRecord(Identity.generate().public_key, "ålice ✓")
    assert KeyRecord.decode(memoryview(record.encode())) == record


def valid_record() -> bytes:
    return KeyRecord(PublicKey(RFC_PUBLIC), "ab").encode()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-1], "does not fit"),
        (lambda b: b + b"x", "does not fit"),
        (lambda b: b[:45], "at least"),
        (lambda b: b"X" + b[1:], "magic"),
        (lambda b: b[:8] + b"\x02" + b[9:], "version"),
        (lambda b: b[:10] + b"\x02" + b[11:], "algorithm"),
        (lambda b: b[:11] + b"\x01" + b[12:], "reserved"),
        (lambda b: b[:-2] + b"\xff\xfe", "UTF-8"),
        (lambda b: b[:44] + struct.pack("<H", 2000) + b[46:], "does not fit"),
    ],
)
def test_key_record_rejects_malformed_bytes(mutate: object, message: str) -> None:
    assert callable(mutate)
    with pytest.raises(FormatError, match=message):
        KeyRecord.decode(mutate(valid_record()))


def test_labels_are_bounded() -> None:
    key = PublicKey(RFC_PUBLIC)
    KeyRecord(key, "x" * MAX_LABEL_BYTES)
    with pytest.raises(InvalidArgument):
        KeyRecord(key, "x" * (MAX_LABEL_BYTES + 1))
    with pytest.raises(InvalidArgument):
        Identity.generate("é" * MAX_LABEL_BYTES)


def test_check_key_object_catches_a_substituted_key() -> None:
    alice, mallory = Identity.generate("alice"), Identity.generate("alice")
    assert check_key_object(alice.kuid, alice.record.encode()).public_key == alice.public_key
    with pytest.raises(CorruptObject, match="holds the key of"):
        check_key_object(alice.kuid, mallory.record.encode())
    with pytest.raises(CorruptObject):
        check_key_object(new_nonce(), alice.record.encode())


# --- identity files -----------------------------------------------------------------------


def test_identity_files_round_trip_with_mode_0600(tmp_path: Path) -> None:
    identity = Identity.generate("admin")
    path = tmp_path / "admin.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Identity.load(path)
    assert loaded.kuid == identity.kuid and loaded.label == "admin"
    assert loaded.sign(b"m") == identity.sign(b"m")  # the same private key
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_identity_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        Identity.generate().save(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o610])
def test_load_refuses_a_key_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(InvalidArgument, match=f"mode {mode:04o}.*chmod 600"):
        Identity.load(path)


def test_load_accepts_owner_only_modes(tmp_path: Path) -> None:
    path = tmp_path / "k"
    Identity.generate().save(path)
    path.chmod(0o400)
    Identity.load(path)


def test_save_does_not_clobber_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first, second = Identity.generate(), Identity.generate()
    first.save(path)
    with pytest.raises(InvalidArgument, match="exists already"):
        second.save(path)
    assert Identity.load(path).kuid == first.kuid
    second.save(path, overwrite=True)
    assert Identity.load(path).kuid == second.kuid
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="cannot read"):
        Identity.load(tmp_path / "absent")
    path = tmp_path / "k"
    good = Identity.generate("abc").encode_secret()
    for bad, message in [
        (b"garbage", "not a dtwz identity"),
        (good[:-1] + b"!", None),  # label changed: still loads, label is not secret
        (good[:20] + bytes([good[20] ^ 1]) + good[21:], "does not match its seed"),
        (good + b"x", "does not fit"),
    ]:
        path.write_bytes(bad)
        path.chmod(0o600)
        if message is None:
            Identity.load(path)
            continue
        with pytest.raises(FormatError, match=message):
            Identity.load(path)


def test_repr_never_shows_the_secret() -> None:
    identity = Identity.from_seed(RFC_SEED, "x")
    assert RFC_SEED.hex() not in repr(identity)
    assert str(identity.kuid) in repr(identity)


def test_seeds_are_32_bytes() -> None:
    with pytest.raises(InvalidArgument):
        Identity.from_seed(bytes(31))
