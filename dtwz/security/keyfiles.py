"""A cluster's keys folder: who the cluster admits, and each node's own keys.

One folder, shared by the nodes of a cluster (a local cluster's ``keys/``, a
compose volume), made on first start and never rewritten wholesale::

    admin.id              the admin identity (Ed25519, mode 0600)
    node-<id>.id          each node's identity, trusted as the admin is (no code worker
                          holds it: code runs as its caller, docs/SECURITY.md §11)
    curve-server.key      the cluster's CurveZMQ server key pair, shared by every ROUTER
    node-<id>.curve       each node's CurveZMQ client key pair (DEALER side)
    admitted.json         public halves only: the admin kuid, the trusted Ed25519
                          keys (admin and nodes), the curve server key and the
                          curve client key of every admitted node

**Enrollment** (docs/SECURITY.md §10): a key other than the admin's and the nodes'
is known to the cluster once its key object is stored (``POST /keys``), and that
needs the admin's consent: an *enrollment capability*, an ordinary capability
(§2) on the key's own object (whose ID is the kuid) for that kuid, with WRITE,
signed by the admin itself (``enrollment_capability``; ``check_enrollment`` is
the node's check). It names one key, so it enrolls that key and no other, and it
expires like any capability.

Invariants: secrets are written 0600, atomically, and never replaced; a node is
admitted by adding its public keys to ``admitted.json`` under an exclusive
``flock``, so nodes of a compose cluster may add themselves concurrently. Curve
keys are made by a function the caller passes in (``dtwz.node.peer.curve_keypair``:
only that module imports zmq). docs/SECURITY.md §8 has the layout and the trust model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtwz.errors import AccessDenied, FormatError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.security.capabilities import Capability, Rights, grant, verify
from dtwz.security.keys import Identity, PublicKey

ADMITTED_FILE = "admitted.json"
ADMIN_FILE = "admin.id"
CURVE_SERVER_FILE = "curve-server.key"
_LOCK_FILE = ".lock"
_NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_Z85_KEY = re.compile(r"[\x21-\x7e]{40}")

CurveKeypair = tuple[bytes, bytes]  # (public, secret), Z85 text as bytes
MakeCurveKeypair = Callable[[], CurveKeypair]


@dataclass(frozen=True)
class Admitted:
    """The public side of a cluster's keys: what every node checks against."""

    admin: ObjectId
    trusted: dict[ObjectId, PublicKey]  # admin and node identities: no key object needed
    node_kuids: frozenset[ObjectId]
    curve_server: bytes
    curve_clients: dict[str, bytes]  # node ID -> curve public key

    @classmethod
    def load(cls, folder: Path) -> Admitted:
        path = folder / ADMITTED_FILE
        try:
            doc = json.loads(path.read_text())
            admin = ObjectId.parse(str(doc["admin"]))
            trusted = {}
            for raw in doc["ed25519"].values():
                key = PublicKey(bytes.fromhex(str(raw)))
                trusted[key.kuid] = key
            nodes = frozenset(ObjectId.parse(str(k)) for k in doc.get("node_kuids", []))
            server = str(doc["curve_server"]).encode("ascii")
            clients = {str(n): str(k).encode("ascii") for n, k in doc["curve_clients"].items()}
        except FileNotFoundError as exc:
            raise InvalidArgument(
                f"no {ADMITTED_FILE} in {folder}: create the cluster's keys with "
                f"`dtwz keys init --keys-dir {folder}`"
            ) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError, FormatError) as exc:
            raise FormatError(f"{path} is not a dtwz admitted-keys file: {exc}") from exc
        if admin not in trusted:
            raise FormatError(f"{path}: the admin key is not among the trusted keys")
        return cls(admin, trusted, nodes, server, clients)


@dataclass(frozen=True)
class NodeKeys:
    """One node's secrets: its identity, its curve client pair, the curve server pair."""

    identity: Identity
    curve: CurveKeypair
    curve_server: CurveKeypair

    @classmethod
    def load(cls, folder: Path, node_id: str) -> NodeKeys:
        return cls(
            Identity.load(node_identity_file(folder, node_id)),
            _read_curve(folder / f"node-{node_id}.curve"),
            _read_curve(folder / CURVE_SERVER_FILE),
        )


ENROLL_RIGHTS = Rights.WRITE  # an enrollment capability's rights: store the key object


def enrollment_capability(admin: Identity, kuid: ObjectId, expiry: int) -> Capability:
    """The admin's consent that the key ``kuid`` may register (store its key object)
    until ``expiry`` (unix seconds): a capability on the object ``kuid`` for ``kuid``."""
    return grant(admin, kuid, kuid, ENROLL_RIGHTS, expiry)


def check_enrollment(cap: Capability, kuid: ObjectId, admin: PublicKey, now: int) -> None:
    """Raise ``AccessDenied`` (``InvalidCapability``, ``CapabilityExpired``) unless
    ``cap`` is the admin's consent that ``kuid`` registers: one link, signed by the
    admin, on ``kuid`` for ``kuid`` with WRITE, not expired. No key is looked up but
    the admin's."""
    if cap.depth != 1 or cap.issuer != admin.kuid:
        raise AccessDenied(
            "an enrollment capability is signed by the cluster's admin itself "
            f"(admin {admin.kuid}), not delegated"
        )

    def lookup(issuer: ObjectId) -> PublicKey:
        if issuer != admin.kuid:
            raise KeyError(issuer)
        return admin

    verify(
        cap,
        target=kuid,
        accessor_kuid=kuid,
        rights_needed=ENROLL_RIGHTS,
        offset=None,
        length=None,
        now=now,
        owner_kuid_of_target=admin.kuid,
        key_lookup=lookup,
    )


def node_identity_file(folder: Path, node_id: str) -> Path:
    return folder / f"node-{_check_node_id(node_id)}.id"


def admin_identity_file(folder: Path) -> Path:
    return folder / ADMIN_FILE


def ensure_keys(
    folder: Path,
    node_ids: Iterable[str],
    make_curve: MakeCurveKeypair,
    admin: Identity | None = None,
) -> Admitted:
    """Make whatever is missing of the cluster's keys and admit ``node_ids``.

    Idempotent; safe to run from several processes at once (one ``flock``).
    Existing secrets are kept: a restart keeps every identity. ``admin`` becomes
    the admin of a new folder (default: a new identity); an existing one is kept.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(folder):
        doc = _read_admitted(folder)
        if admin is not None and not (folder / ADMIN_FILE).exists():
            admin.save(folder / ADMIN_FILE)
        admin = _ensure_identity(folder / ADMIN_FILE, "admin")
        server_public, _ = _ensure_curve(folder / CURVE_SERVER_FILE, make_curve)
        doc["admin"] = admin.kuid.hex()
        doc.setdefault("ed25519", {})["admin"] = admin.public_key.raw.hex()
        doc["curve_server"] = server_public.decode("ascii")
        clients = doc.setdefault("curve_clients", {})
        node_kuids = set(doc.get("node_kuids", []))
        for node_id in node_ids:
            identity = _ensure_identity(node_identity_file(folder, node_id), f"node {node_id}")
            public, _ = _ensure_curve(folder / f"node-{node_id}.curve", make_curve)
            doc["ed25519"][f"node-{node_id}"] = identity.public_key.raw.hex()
            node_kuids.add(identity.kuid.hex())
            clients[node_id] = public.decode("ascii")
        doc["node_kuids"] = sorted(node_kuids)
        doc["version"] = 1
        _write_private(folder / ADMITTED_FILE, json.dumps(doc, indent=2) + "\n", mode=0o644)
    return Admitted.load(folder)


def _check_node_id(node_id: str) -> str:
    if not _NODE_ID.fullmatch(node_id):
        raise InvalidArgument(f"a node ID for key files is 1-64 of [A-Za-z0-9._-]: {node_id!r}")
    return node_id


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_admitted(folder: Path) -> dict[str, Any]:
    try:
        doc = json.loads((folder / ADMITTED_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise FormatError(f"{folder / ADMITTED_FILE} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"{folder / ADMITTED_FILE} is not a JSON object")
    return doc


def _ensure_identity(path: Path, label: str) -> Identity:
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate(label)
    identity.save(path)
    return identity


def _ensure_curve(path: Path, make_curve: MakeCurveKeypair) -> CurveKeypair:
    if path.exists():
        return _read_curve(path)
    public, secret = make_curve()
    _write_private(path, f"{public.decode('ascii')}\n{secret.decode('ascii')}\n")
    return public, secret


def _read_curve(path: Path) -> CurveKeypair:
    try:
        mode = path.stat().st_mode & 0o777
        lines = path.read_text().split()
    except OSError as exc:
        raise InvalidArgument(f"cannot read curve key file {path}: {exc}") from exc
    if mode & 0o077:
        raise InvalidArgument(f"curve key file {path} is mode {mode:04o}: chmod 600 {path}")
    if len(lines) != 2 or not all(_Z85_KEY.fullmatch(line) for line in lines):
        raise FormatError(f"{path} is not a curve key pair (two Z85 lines)")
    return lines[0].encode("ascii"), lines[1].encode("ascii")


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Atomically (re)place ``path`` with ``text``, created with ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
