"""Ed25519 identities, and public keys as dtwz objects.

An ``Identity`` is a private key that signs capabilities and requests; it lives
in a file only its owner can read. A ``PublicKey`` is the half anyone may hold.
Public keys are objects: a key object's data is a ``KeyRecord`` and its ID is a
content ID over the algorithm and the public key, so ``kuid_of(key)`` is a pure
function of the key and anyone can check a key object against its ID. The label
in a record is a hint for people and is *not* covered by the ID: never decide
anything from it. docs/SECURITY.md has the formats byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dtwz.errors import CorruptObject, FormatError, InvalidArgument
from dtwz.format.ids import ZERO_ID, ObjectId, content_object_id
from dtwz.format.layout import ObjectFlags, Protection

ALG_ED25519 = 1
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32
SIGNATURE_BYTES = 64
MAX_LABEL_BYTES = 1024

KEY_MAGIC = b"DTWZKEY\x00"
KEY_FORMAT_VERSION = 1
SECRET_MAGIC = b"DTWZSEC\x00"
SECRET_FORMAT_VERSION = 1

# Key objects are immutable, readable by all, and owned by nobody: a key is where
# ownership starts, so it cannot name an owner key of its own.
KEY_OBJECT_FLAGS = ObjectFlags.IMMUTABLE
KEY_OBJECT_PROT = Protection.READ
KEY_ID_DOMAIN = b"dtwz-key\x00"

# magic, version, algorithm, reserved, public key, label length; the label follows
_RECORD = struct.Struct("<8sHBB32sH")
# magic, version, algorithm, reserved, seed; a KeyRecord (the public half) follows
_SECRET = struct.Struct("<8sHBB32s")


def _id_contents(raw_public: bytes) -> bytes:
    return KEY_ID_DOMAIN + bytes([ALG_ED25519]) + raw_public


class PublicKey:
    """An Ed25519 public key: 32 raw bytes, with its kuid worked out once."""

    __slots__ = ("_key", "_kuid", "raw")

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        raw = bytes(raw)
        if len(raw) != PUBLIC_KEY_BYTES:
            raise FormatError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise FormatError(f"not an Ed25519 public key: {exc}") from exc
        self.raw = raw
        self._kuid = content_object_id(
            ZERO_ID, KEY_OBJECT_FLAGS, KEY_OBJECT_PROT, _id_contents(raw)
        )

    @property
    def kuid(self) -> ObjectId:
        """The ID of this key's object: what objects this key owns carry as kuid."""
        return self._kuid

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message``."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.raw.hex()!r}, kuid={self._kuid})"


def kuid_of(public_key: PublicKey | bytes) -> ObjectId:
    """The kuid of a key: its key object's content ID (docs/SECURITY.md §1)."""
    key = public_key if isinstance(public_key, PublicKey) else PublicKey(public_key)
    return key.kuid


def key_object_nonce(public_key: PublicKey) -> bytes:
    """The nonce a key object's header carries, so the usual header check
    (``derive_object_id(nonce, ZERO_ID, KEY_OBJECT_FLAGS, KEY_OBJECT_PROT)``)
    gives ``kuid_of(public_key)``."""
    return hashlib.sha256(_id_contents(public_key.raw)).digest()[:16]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """The data of a key object: a public key and a label for people."""

    public_key: PublicKey
    label: str = ""

    def __post_init__(self) -> None:
        if len(self.label.encode("utf-8")) > MAX_LABEL_BYTES:
            raise InvalidArgument(f"a key label is at most {MAX_LABEL_BYTES} UTF-8 bytes")

    @property
    def object_id(self) -> ObjectId:
        return self.public_key.kuid

    def encode(self) -> bytes:
        label = self.label.encode("utf-8")
        head = _RECORD.pack(
            KEY_MAGIC, KEY_FORMAT_VERSION, ALG_ED25519, 0, self.public_key.raw, len(label)
        )
        return head + label

    @classmethod
    def decode(cls, data: bytes | memoryview) -> KeyRecord:
        """Decode exactly one record; ``FormatError`` for anything else."""
        data = bytes(data)
        if len(data) < _RECORD.size:
            raise FormatError(f"a key record is at least {_RECORD.size} bytes, got {len(data)}")
        magic, version, alg, reserved, raw, label_len = _RECORD.unpack_from(data)
        if magic != KEY_MAGIC:
            raise FormatError("not a key record (bad magic)")
        if version != KEY_FORMAT_VERSION:
            raise FormatError(f"unknown key record version {version}")
        if alg != ALG_ED25519:
            raise FormatError(f"unknown key algorithm {alg}")
        if reserved:
            raise FormatError("non-zero reserved byte in key record")
        if label_len > MAX_LABEL_BYTES or len(data) != _RECORD.size + label_len:
            raise FormatError(
                f"key record label of {label_len} bytes does not fit its {len(data)} bytes"
            )
        try:
            label = data[_RECORD.size :].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError("key record label is not UTF-8") from exc
        return cls(PublicKey(raw), label)


def check_key_object(object_id: bytes, data: bytes | memoryview) -> KeyRecord:
    """Decode a key object's data and check that it is the key ``object_id`` names.

    ``CorruptObject`` when the record is well formed but holds another key: a node
    that serves the wrong key for a kuid is caught here.
    """
    record = KeyRecord.decode(data)
    if record.object_id != object_id:
        raise CorruptObject(
            f"key object {bytes(object_id).hex()} holds the key of {record.object_id}"
        )
    return record


class Identity:
    """A private Ed25519 key and its label: who signs capabilities and requests."""

    __slots__ = ("_private", "label", "public_key")

    def __init__(self, private: Ed25519PrivateKey, label: str = "") -> None:
        self._private = private
        self.public_key = PublicKey(private.public_key().public_bytes_raw())
        KeyRecord(self.public_key, label)  # checks the label
        self.label = label

    @classmethod
    def generate(cls, label: str = "") -> Identity:
        return cls(Ed25519PrivateKey.generate(), label)

    @classmethod
    def from_seed(cls, seed: bytes, label: str = "") -> Identity:
        """The identity of a 32-byte Ed25519 seed (RFC 8032's private key)."""
        if len(seed) != SEED_BYTES:
            raise InvalidArgument(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed), label)

    @property
    def kuid(self) -> ObjectId:
        return self.public_key.kuid

    @property
    def record(self) -> KeyRecord:
        """The data of this identity's public-key object."""
        return KeyRecord(self.public_key, self.label)

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)

    def __repr__(self) -> str:  # never the secret
        return f"Identity(kuid={self.kuid}, label={self.label!r})"

    def encode_secret(self) -> bytes:
        """The identity file's bytes: seed, then the public record (checked on load)."""
        seed = self._private.private_bytes_raw()
        head = _SECRET.pack(SECRET_MAGIC, SECRET_FORMAT_VERSION, ALG_ED25519, 0, seed)
        return head + self.record.encode()

    @classmethod
    def decode_secret(cls, data: bytes) -> Identity:
        if len(data) < _SECRET.size or data[:8] != SECRET_MAGIC:
            raise FormatError("not a dtwz identity file (bad magic or too short)")
        _, version, alg, reserved, seed = _SECRET.unpack_from(data)
        if version != SECRET_FORMAT_VERSION or alg != ALG_ED25519 or reserved:
            raise FormatError(f"unknown identity file version {version} or algorithm {alg}")
        record = KeyRecord.decode(data[_SECRET.size :])
        identity = cls.from_seed(seed, record.label)
        if identity.public_key != record.public_key:
            raise FormatError("identity file is corrupt: its public key does not match its seed")
        return identity

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the identity to ``path``, mode 0600, atomically and durably.

        The file is complete or absent, never half written; without ``overwrite``
        an existing file is left alone (``InvalidArgument``).
        """
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask, never wider
                os.write(fd, self.encode_secret())
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if ``path`` exists: no clobbering race
            _fsync_dir(path.parent)
        except FileExistsError as exc:
            raise InvalidArgument(f"identity file {path} exists already") from exc
        except OSError as exc:
            raise InvalidArgument(f"cannot write identity file {path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read an identity file; refuses one that group or others may access."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise InvalidArgument(f"cannot read identity file {path}: {exc}") from exc
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)  # of the opened file: no check/use race
            if mode & 0o077:
                raise InvalidArgument(
                    f"identity file {path} is accessible by group or others (mode {mode:04o});"
                    f" a private key must be mode 0600: chmod 600 {path}"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(_SECRET.size + _RECORD.size + MAX_LABEL_BYTES + 1)
        except OSError as exc:
            raise InvalidArgument(f"cannot read identity file {path}: {exc}") from exc
        finally:
            os.close(fd)
        try:
            return cls.decode_secret(data)
        except FormatError as exc:
            raise FormatError(f"{path}: {exc}") from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
