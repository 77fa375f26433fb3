"""Capability and request verification per second, beside a raw Ed25519 verify (same run);
and a remote 4 KiB read with security on beside the same read with it off.

    python -m bench.bench_security [--quick] [--repeat N] [--json PATH] [--dir DIR]

Every figure starts from bytes, as a node sees a request: ``Capability.decode`` of
the blob, then ``verify`` against the target's owner, the requester, rights and a
byte range. "cold" passes no cache, so every link's signature is checked;
"cached" shares one ``VerifiedCache``, so only the cheap checks (and a SHA-256 of
the blob) are left. The baseline is what a cold check cannot avoid: one
``Ed25519PublicKey.verify`` of a 64-byte message through ``cryptography``.
A 3-link chain is owner -> alice -> bob -> carol. For information: a signed
request checked by ``RequestVerifier`` (one signature, plus the nonce memory).
No I/O: the key lookup is a dict.

The cluster figure starts two local clusters of two node processes each, one with
security on (signed requests, access checks, CurveZMQ between the nodes) and one
with ``--no-security``. A client of n2 reads 4 KiB of objects homed on n1, a
different object per read (so each read is a fetch from n1 over the peer
endpoint), taking turns between the clusters; on the secure one the reader is the
objects' owner (not the admin), so the access check runs (target at most 1.15x).
For information: re-reading one object n2 holds a copy of (HTTP and checks only).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console

from bench.common import check_dir, parser, scratch_dir
from bench.report import Report, Row, Target
from bench.timing import Batch, measure_interleaved
from dtwz.client.api import Client
from dtwz.format.ids import derive_object_id
from dtwz.format.layout import DATA_START
from dtwz.node import launcher as local_cluster
from dtwz.security.auth import RequestVerifier, body_sha256, sign_request
from dtwz.security.capabilities import (
    Capability,
    Gate,
    Rights,
    VerifiedCache,
    delegate,
    grant,
    verify,
)
from dtwz.security.keys import Identity

_LOG = Console(stderr=True)
_NOW = 1_700_000_000
_EXPIRY = _NOW + 86_400


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    ops: int  # verifications per batch


FULL = Scale(repeat=7, ops=2000)
QUICK = Scale(repeat=3, ops=300)
REMOTE_READS = {True: 100, False: 400}  # per batch, by --quick


def main(argv: list[str] | None = None) -> None:
    opts = parser(__doc__.splitlines()[0]).parse_args(sys.argv[1:] if argv is None else argv)
    scale = QUICK if opts.quick else FULL
    repeat = opts.repeat or scale.repeat
    settings: dict[str, object] = {"quick": opts.quick, "repeat": repeat, "ops": scale.ops}
    report = Report("dtwz capability verification vs raw Ed25519 verify (same run)", settings)
    bench = SecurityBench(scale.ops)
    _LOG.log(f"measuring {scale.ops} verifications x {repeat} repetitions ...")
    timings = measure_interleaved(bench.batches(), ops=scale.ops, repeat=repeat)
    baseline, name = timings["ed25519"], "Ed25519 verify, 64 bytes"

    def row(figure: str, key: str) -> Row:
        return Row(figure, timings[key], name, baseline, rate=True, unit="verify")

    report.add(
        row("grant: decode + verify, cold (no cache)", "grant cold"),
        row("grant: decode + verify, cached", "grant cached"),
        row("3-link chain: decode + verify, cold", "chain cold"),
        row("3-link chain: decode + verify, cached", "chain cached"),
        row("  (signed request: RequestVerifier.verify)", "request"),
    )
    report.notes["sizes"] = (
        f"grant {len(bench.grant_blob)} bytes, 3-link chain {len(bench.chain_blob)} bytes"
    )
    base = Path(opts.dir) if opts.dir else Path(tempfile.gettempdir())
    report.notes["file system"] = check_dir(base)
    with scratch_dir(base, "security") as root:
        remote_reads(report, root, REMOTE_READS[opts.quick], repeat)
    report.print()
    if opts.json:
        report.write_json(opts.json)


class SecurityBench:
    def __init__(self, ops: int) -> None:
        self.ops = ops
        self.owner, alice, bob, carol = (Identity.generate(n) for n in ("o", "a", "b", "c"))
        self.keys = {i.kuid: i.public_key for i in (self.owner, alice, bob, carol)}
        self.target = derive_object_id(os.urandom(16), self.owner.kuid, 0, 0)
        gate = Gate(0x1000, 0x10000)
        root = grant(self.owner, self.target, alice.kuid, Rights.parse("rwd"), _EXPIRY, gate)
        self.grant_blob = root.encode()
        middle = delegate(alice, root, bob.kuid, Rights.parse("rwd"), _EXPIRY)
        self.chain_blob = delegate(bob, middle, carol.kuid, Rights.READ, _EXPIRY).encode()
        self.alice, self.carol = alice, carol
        message = os.urandom(64)
        signature = self.owner.sign(message)
        raw_key = Ed25519PublicKey.from_public_bytes(self.owner.public_key.raw)
        self._raw_verify: Callable[[], None] = lambda: raw_key.verify(signature, message)

    def _verify_blob(self, blob: bytes, accessor: Identity, cache: VerifiedCache | None) -> Batch:
        target, owner, lookup = self.target, self.owner.kuid, self.keys.__getitem__
        kuid, ops = accessor.kuid, self.ops
        if cache is not None:  # warm, untimed
            verify(
                Capability.decode(blob),
                target=target,
                accessor_kuid=kuid,
                rights_needed=Rights.READ,
                offset=0x1000,
                length=64,
                now=_NOW,
                owner_kuid_of_target=owner,
                key_lookup=lookup,
                cache=cache,
            )

        def batch() -> None:
            for _ in range(ops):
                verify(
                    Capability.decode(blob),
                    target=target,
                    accessor_kuid=kuid,
                    rights_needed=Rights.READ,
                    offset=0x1000,
                    length=64,
                    now=_NOW,
                    owner_kuid_of_target=owner,
                    key_lookup=lookup,
                    cache=cache,
                )

        return batch

    def _ed25519(self) -> None:
        check = self._raw_verify
        for _ in range(self.ops):
            check()

    def _requests(self) -> int:
        """Self-timed: signing the requests (fresh nonces each time) is setup."""
        verifier = RequestVerifier()
        digest, path = body_sha256(b""), f"/objects/{self.target}?offset=4096&length=64"
        signed = [sign_request(self.carol, "GET", path, digest, _NOW) for _ in range(self.ops)]
        lookup = self.keys.__getitem__
        start = time.perf_counter_ns()
        for headers in signed:
            verifier.verify(headers, "GET", path, digest, _NOW, lookup)
        return time.perf_counter_ns() - start

    def batches(self) -> dict[str, Batch]:
        return {
            "ed25519": self._ed25519,
            "grant cold": self._verify_blob(self.grant_blob, self.alice, None),
            "grant cached": self._verify_blob(self.grant_blob, self.alice, VerifiedCache()),
            "chain cold": self._verify_blob(self.chain_blob, self.carol, None),
            "chain cached": self._verify_blob(self.chain_blob, self.carol, VerifiedCache()),
            "request": self._requests,
        }


def remote_reads(report: Report, root: Path, ops: int, repeat: int) -> None:
    """Security on vs off: a client of n2 reading 4 KiB of objects homed on n1."""
    _LOG.log(f"starting two 2-node clusters; {ops} remote reads x {repeat} repetitions ...")
    owner = Identity.generate("bench reader")
    secure = local_cluster.up(2, root / "secure", timeout=60)
    try:
        secure.enroll(owner)  # with the admin's consent (docs/SECURITY.md §10)
        open_ = local_cluster.up(2, root / "open", node_args=["--no-security"], timeout=60)
        try:
            readers = {
                "secure": _Reader(secure, owner, ops, repeat),
                "open": _Reader(open_, None, ops, repeat),
            }
            batches: dict[str, Batch] = {}
            for name, reader in readers.items():
                batches[name] = reader.batch
                batches[f"{name} hot"] = reader.hot
            timings = measure_interleaved(batches, ops=ops, repeat=repeat)
        finally:
            open_.stop()
    finally:
        secure.stop()
    report.add(
        Row(
            "remote read 4 KiB, security on (owner, n2 -> n1)",
            timings["secure"],
            "the same, security off",
            timings["open"],
            target=Target("max_ratio", 1.15),
        ),
        Row(
            "  (re-read of a copy at n2, security on)",
            timings["secure hot"],
            "security off",
            timings["open hot"],
        ),
    )


class _Reader:
    """A client of n2 and, per timed batch, ``ops`` objects on n1 it has not read."""

    def __init__(
        self, cluster: local_cluster.LocalCluster, who: Identity | None, ops: int, repeat: int
    ) -> None:
        # security off: no identity at all; on: the reader owns what it reads (not admin)
        with cluster.client("n1", identity=who) as at_n1:
            count = (repeat + 2) * ops  # warm-up and hot batch too
            data = os.urandom(4096)
            self.objects = [at_n1.create(8192, data) for _ in range(count)]
        self.client: Client = cluster.client("n2", identity=who)
        self.ops = ops
        self.next = 0

    def batch(self) -> None:
        read = self.client.read
        for oid in self.objects[self.next : self.next + self.ops]:
            read(oid, DATA_START, 4096)
        self.next += self.ops

    def hot(self) -> None:
        read, oid = self.client.read, self.objects[-1]
        for _ in range(self.ops):
            read(oid, DATA_START, 4096)


if __name__ == "__main__":
    main()
