"""The security commands: ``dtwz keys``, ``dtwz identity`` and ``dtwz cap``
(docs/SECURITY.md: identities §1, capabilities §2-4, a cluster's keys §8).

``keys init`` makes what is missing of a cluster's keys folder. ``identity
new/show`` make and describe Ed25519 identity files (mode 0600). ``identity
enroll KUID`` (run by the admin) prints an enrollment capability, the admin's
consent that the key KUID may register; its holder presents it with ``identity
register --enrollment CAP`` (docs/SECURITY.md §10). ``cap grant``
signs a root capability with the target owner's identity, ``cap delegate`` a
narrower one below a capability the signer holds; both print the capability as
one line of unpadded base64url, the form ``X-Dtwz-Capability``, ``dtwz remote
--capability`` and ``DTWZ_CAPABILITY`` take. ``cap show`` prints a capability's
links; ``cap verify`` checks it against the cluster (the target's owner from its
header, issuers' keys from their key objects). There is no revocation list: to
revoke, let it expire, so grant with short expiries.

The signing identity is ``--identity FILE``, else ``$DTWZ_IDENTITY``, else the
admin of the local cluster (``$DTWZ_CLUSTER`` or ./data/cluster).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from dtwz.cli.common import CliConfig, RemoteConfig, json_option, pass_config
from dtwz.client.api import Client
from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node import launcher as local_cluster
from dtwz.node.access import run_code_object
from dtwz.security.auth import decode_capability_header, encode_capability_header
from dtwz.security.capabilities import Capability, Gate, Rights, delegate, grant, verify
from dtwz.security.keys import Identity, PublicKey, check_key_object


def _identity(path: Path | None) -> Identity:
    if path is not None:
        return Identity.load(path)
    found = local_cluster.default_identity()
    if found is None:
        raise InvalidArgument(
            "no identity: pass --identity FILE, set DTWZ_IDENTITY or start a local cluster"
        )
    return found


def _oid(text: str, what: str) -> ObjectId:
    try:
        return ObjectId.parse(text)
    except DtwzError as exc:
        raise InvalidArgument(f"{what}: {exc}") from exc


def _gate(text: str | None) -> Gate | None:
    if text is None:
        return None
    try:
        offset, length = (int(part, 0) for part in text.split(":"))
    except ValueError as exc:
        raise InvalidArgument(f"a gate is OFFSET:LENGTH (e.g. 0x1000:4096), got {text!r}") from exc
    return Gate(offset, length)


def _cap_doc(cap: Capability, now: float) -> dict[str, Any]:
    return {
        "target": cap.target.hex(),
        "accessor": cap.accessor.hex(),
        "issuer": cap.issuer.hex(),
        "rights": cap.rights.names,
        "expiry": cap.expiry,
        "expires_in": int(cap.expiry - now),
        "gate": None if cap.gate is None else [cap.gate.offset, cap.gate.length],
        "links": cap.depth,
    }


def _cap_text(doc: dict[str, Any]) -> str:
    left = doc["expires_in"]
    when = f"in {left} s" if left > 0 else f"EXPIRED {-left} s ago"
    gate = "whole object" if doc["gate"] is None else f"[{doc['gate'][0]:#x}, +{doc['gate'][1]})"
    return (
        f"target {doc['target']}\naccessor {doc['accessor']}\nissuer {doc['issuer']}\n"
        f"rights {doc['rights']}  expires {time.ctime(doc['expiry'])} ({when})\n"
        f"gate {gate}  links {doc['links']}"
    )


_identity_option = click.option(
    "--identity",
    "identity_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Identity file that signs.  [default: $DTWZ_IDENTITY, else the local cluster's admin]",
)
_grant_options = [
    click.option("--to", "accessor", required=True, help="kuid of the identity it is for."),
    click.option("--rights", required=True, help="Letters from rwxd (d: may delegate)."),
    click.option(
        "--expires",
        type=click.IntRange(1),
        default=3600,
        show_default=True,
        help="Seconds from now until it expires (revoke = let it expire).",
    ),
    click.option("--gate", default=None, help="Only bytes OFFSET:LENGTH of the target."),
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _with(options: list[Any]) -> Callable[[_F], _F]:
    """Several click options as one decorator (grant and delegate share theirs)."""

    def apply(fn: _F) -> _F:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


@click.group()
def keys() -> None:
    """A cluster's keys folder (local clusters and nodes make it on first start)."""


@keys.command("init")
@click.option(
    "--keys-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    envvar="DTWZ_KEYS_DIR",
    help="The cluster's keys folder.",
)
@click.option("--node-id", "node_ids", multiple=True, help="Admit this node (repeat).")
@json_option
@pass_config
def keys_init(cfg: CliConfig, keys_dir: Path, node_ids: tuple[str, ...], as_json: bool) -> None:
    """Make whatever is missing of the keys in --keys-dir, admitting the nodes named."""
    from dtwz.node.peer import curve_keypair  # the one module that imports zmq
    from dtwz.security.keyfiles import ensure_keys

    admitted = ensure_keys(keys_dir, node_ids, curve_keypair)
    doc = {
        "keys_dir": str(keys_dir),
        "admin": admitted.admin.hex(),
        "nodes": sorted(admitted.curve_clients),
    }
    cfg.emit(as_json, doc, f"admin {admitted.admin}\nnodes {' '.join(doc['nodes']) or '-'}")


@click.group()
def identity() -> None:
    """Ed25519 identities: who signs requests and capabilities."""


@identity.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--label", default="", help="A name for people (not checked by anything).")
@json_option
@pass_config
def identity_new(cfg: CliConfig, path: Path, label: str, as_json: bool) -> None:
    """Make a new identity file at PATH (mode 0600); prints its kuid."""
    made = Identity.generate(label)
    made.save(path)
    cfg.emit(
        as_json,
        {"path": str(path), "kuid": made.kuid.hex(), "label": label},
        f"{made.kuid}  {path}",
    )


@identity.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
@json_option
@pass_config
def identity_show(cfg: CliConfig, path: Path | None, as_json: bool) -> None:
    """The kuid, public key and label of an identity (default: the one clients use)."""
    who = _identity(path)
    doc = {"kuid": who.kuid.hex(), "public_key": who.public_key.raw.hex(), "label": who.label}
    cfg.emit(
        as_json, doc, f"kuid {doc['kuid']}\npublic key {doc['public_key']}\nlabel {who.label!r}"
    )


@identity.command("enroll")
@click.argument("kuid")
@click.option(
    "--expires",
    type=click.IntRange(1),
    default=600,
    show_default=True,
    help="Seconds from now within which the key must register.",
)
@_identity_option
@json_option
@pass_config
def identity_enroll(
    cfg: CliConfig, kuid: str, expires: int, identity_file: Path | None, as_json: bool
) -> None:
    """Consent, as the cluster's admin, that the key KUID may enroll: prints an
    enrollment capability for its holder (`dtwz identity register --enrollment CAP`).
    It enrolls that key only; nothing else is granted by it."""
    from dtwz.security.keyfiles import enrollment_capability

    admin = _identity(identity_file)
    made = enrollment_capability(admin, _oid(kuid, "kuid"), int(time.time()) + expires)
    text = encode_capability_header(made)
    cfg.emit(as_json, {"capability": text, **_cap_doc(made, time.time())}, text)


@identity.command("register")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--enrollment",
    envvar="DTWZ_ENROLLMENT",
    default=None,
    help="The enrollment capability the admin gave (`dtwz identity enroll`).  "
    "[default: $DTWZ_ENROLLMENT]",
)
@click.option(
    "--node",
    "url",
    envvar="DTWZ_NODE",
    default=None,
    help="URL of any node.  [default: a node of the local cluster]",
)
@json_option
@pass_config
def identity_register(
    cfg: CliConfig, path: Path | None, enrollment: str | None, url: str | None, as_json: bool
) -> None:
    """Enroll an identity (PATH, default the one clients use) in the cluster: store its
    public key, with the admin's consent (--enrollment)."""
    who = _identity(path)
    rc = RemoteConfig(cfg, url, 10.0)
    with rc.client() as found:  # which node: as every remote command finds it
        node_url = found.url
    with Client(node_url, timeout=10.0, identity=who, enrollment=enrollment) as client:
        created = client.register_key()
    doc = {"kuid": who.kuid.hex(), "created": created, "node": node_url}
    state = "enrolled" if created else "enrolled already"
    cfg.emit(as_json, doc, f"{who.kuid}  {state}")


@click.group()
def cap() -> None:
    """Capabilities: grant, delegate, show and verify them."""


@cap.command("grant")
@click.argument("target")
@_with(_grant_options)
@click.option(
    "--cluster-id",
    envvar="DTWZ_CLUSTER_ID",
    default="dtwz",
    show_default=True,
    help="With TARGET run-code: the cluster's ID (its nodes' --cluster-id).",
)
@_identity_option
@json_option
@pass_config
def cap_grant(
    cfg: CliConfig,
    target: str,
    accessor: str,
    rights: str,
    expires: int,
    gate: str | None,
    cluster_id: str,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """Grant rights on TARGET (an object ID) to --to, signed by TARGET's owner.

    TARGET run-code is the right to run code on the cluster (docs/SECURITY.md §11):
    x on the cluster's run-code object, which the admin signs (`dtwz cap grant
    run-code --to KUID --rights x`)."""
    owner = _identity(identity_file)
    if target == "run-code":  # the admin's, named after the cluster
        target = run_code_object(owner.kuid, cluster_id).hex()
    made = grant(
        owner,
        _oid(target, "target"),
        _oid(accessor, "--to"),
        Rights.parse(rights),
        int(time.time()) + expires,
        _gate(gate),
    )
    text = encode_capability_header(made)
    cfg.emit(as_json, {"capability": text, **_cap_doc(made, time.time())}, text)


@cap.command("delegate")
@click.argument("capability")
@_with(_grant_options)
@_identity_option
@json_option
@pass_config
def cap_delegate(
    cfg: CliConfig,
    capability: str,
    accessor: str,
    rights: str,
    expires: int,
    gate: str | None,
    identity_file: Path | None,
    as_json: bool,
) -> None:
    """Pass on a narrower part of CAPABILITY (which must carry d) to --to."""
    parent = decode_capability_header(capability)
    expiry = min(parent.expiry, int(time.time()) + expires)
    made = delegate(
        _identity(identity_file),
        parent,
        _oid(accessor, "--to"),
        Rights.parse(rights),
        expiry,
        _gate(gate),
    )
    text = encode_capability_header(made)
    cfg.emit(as_json, {"capability": text, **_cap_doc(made, time.time())}, text)


@cap.command("show")
@click.argument("capability")
@json_option
@pass_config
def cap_show(cfg: CliConfig, capability: str, as_json: bool) -> None:
    """Print a capability's fields, its expiry and its chain (nothing is checked)."""
    parsed = decode_capability_header(capability)
    now = time.time()
    docs = [_cap_doc(link, now) for link in parsed.chain]
    text = "\n--\n".join(_cap_text(d) for d in docs)
    cfg.emit(as_json, {**docs[-1], "chain": docs}, text)


@cap.command("verify")
@click.argument("capability")
@click.option("--rights", default=None, help="Rights to check for.  [default: all it grants]")
@click.option(
    "--node",
    "url",
    envvar="DTWZ_NODE",
    default=None,
    help="URL of any node.  [default: a node of the local cluster]",
)
@json_option
@pass_config
def cap_verify(
    cfg: CliConfig, capability: str, rights: str | None, url: str | None, as_json: bool
) -> None:
    """Check a capability against the cluster: owner, signatures, delegation, expiry."""
    rc = RemoteConfig(cfg, url, 10.0)
    parsed = decode_capability_header(capability)
    needed = Rights.parse(rights) if rights else parsed.rights
    signer = local_cluster.default_identity()
    with rc.client() as client:
        owner = ObjectId.parse(str(client.info(parsed.target)["kuid"]))

        def lookup(kuid: ObjectId) -> PublicKey:
            if signer is not None and signer.kuid == kuid:
                return signer.public_key
            data = client.read(kuid, DATA_START)
            return check_key_object(kuid, data).public_key

        verify(
            parsed,
            target=parsed.target,
            accessor_kuid=parsed.accessor,
            rights_needed=needed,
            offset=parsed.gate.offset if parsed.gate else None,
            length=parsed.gate.length if parsed.gate else None,
            now=int(time.time()),
            owner_kuid_of_target=owner,
            key_lookup=lookup,
        )
    doc = {"valid": True, **_cap_doc(parsed, time.time())}
    rc.emit(
        as_json,
        doc,
        f"valid: {parsed.rights.names} on {parsed.target} for "
        f"{parsed.accessor}, {doc['expires_in']} s left",
    )
