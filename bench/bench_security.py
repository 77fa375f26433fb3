"""Capability and request verification per second, beside a raw Ed25519 verify (same run).

    python -m bench.bench_security [--quick] [--repeat N] [--json PATH]

Every figure starts from bytes, as a node sees a request: ``Capability.decode`` of
the blob, then ``verify`` against the target's owner, the requester, rights and a
byte range. "cold" passes no cache, so every link's signature is checked;
"cached" shares one ``VerifiedCache``, so only the cheap checks (and a SHA-256 of
the blob) are left. The baseline is what a cold check cannot avoid: one
``Ed25519PublicKey.verify`` of a 64-byte message through ``cryptography``.
A 3-link chain is owner -> alice -> bob -> carol. For information: a signed
request checked by ``RequestVerifier`` (one signature, plus the nonce memory).
No I/O: the key lookup is a dict.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console

from bench.common import parser
from bench.report import Report, Row
from bench.timing import Batch, measure_interleaved
from dtwz.auth import RequestVerifier, body_sha256, sign_request
from dtwz.capabilities import Capability, Gate, Rights, VerifiedCache, delegate, grant, verify
from dtwz.ids import derive_object_id
from dtwz.keys import Identity

_LOG = Console(stderr=True)
_NOW = 1_700_000_000
_EXPIRY = _NOW + 86_400


@dataclass(frozen=True, slots=True)
class Scale:
    repeat: int
    ops: int  # verifications per batch


FULL = Scale(repeat=7, ops=2000)
QUICK = Scale(repeat=3, ops=300)


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
            verify(Capability.decode(blob), target=target, accessor_kuid=kuid,
                   rights_needed=Rights.READ, offset=0x1000, length=64, now=_NOW,
                   owner_kuid_of_target=owner, key_lookup=lookup, cache=cache)  # fmt: skip

        def batch() -> None:
            for _ in range(ops):
                verify(Capability.decode(blob), target=target, accessor_kuid=kuid,
                       rights_needed=Rights.READ, offset=0x1000, length=64, now=_NOW,
                       owner_kuid_of_target=owner, key_lookup=lookup, cache=cache)  # fmt: skip

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


if __name__ == "__main__":
    main()
