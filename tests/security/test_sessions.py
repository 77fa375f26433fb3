"""Sessions: one Ed25519-signed handshake (X25519 agreement), then an HMAC per
request; the same freshness and replay rules as signed requests. Clients in sessions
with a real node: tests/node/test_sessions.py."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from dtwz.errors import AccessDenied, ReplayedRequest, UnknownSession
from dtwz.format.ids import ObjectId
from dtwz.security.auth import (
    SESSION_HEADER,
    SIGNATURE_HEADER,
    RequestVerifier,
    SessionTable,
    body_sha256,
    client_session_keys,
    mac_request,
    session_key,
)

OWNER = ObjectId(os.urandom(16))
DIGEST = body_sha256(b"")


def _open(table: SessionTable, now: float) -> tuple[ObjectId, bytes]:
    private, public = client_session_keys()
    session_id, node_public, _ = table.open(OWNER, public, "n1", now)
    shared = private.exchange(X25519PublicKey.from_public_bytes(node_public))
    return session_id, session_key(shared, session_id, OWNER, public, node_public, "n1")


def test_both_sides_derive_the_key_and_a_mac_checks() -> None:
    table, verifier, now = SessionTable(), RequestVerifier(audience="n1"), time.time()
    session_id, key = _open(table, now)
    headers = mac_request(session_id, key, "GET", "/x?a=1", DIGEST, now, audience="n1")
    assert headers[SESSION_HEADER] == "1"
    session = table.lookup(session_id, now)
    assert verifier.verify(headers, "GET", "/x?a=1", DIGEST, now, lambda _: session) == session_id
    assert session.owner == OWNER
    with pytest.raises(ReplayedRequest):  # the same request again
        verifier.verify(headers, "GET", "/x?a=1", DIGEST, now, lambda _: session)


@pytest.mark.parametrize("change", ["path", "body", "key", "mac"])
def test_a_changed_request_or_a_wrong_key_is_refused(change: str) -> None:
    table, verifier, now = SessionTable(), RequestVerifier(audience="n1"), time.time()
    session_id, key = _open(table, now)
    used_key = os.urandom(32) if change == "key" else key
    headers = mac_request(session_id, used_key, "GET", "/x", DIGEST, now, audience="n1")
    if change == "mac":
        headers[SIGNATURE_HEADER] = ("0" if headers[SIGNATURE_HEADER][0] != "0" else "1") + headers[
            SIGNATURE_HEADER
        ][1:]
    path = "/y" if change == "path" else "/x"
    digest = body_sha256(b"other") if change == "body" else DIGEST
    session = table.lookup(session_id, now)
    with pytest.raises(AccessDenied):
        verifier.verify(headers, "GET", path, digest, now, lambda _: session)


def test_unknown_and_expired_sessions() -> None:
    table, now = SessionTable(ttl=10), time.time()
    session_id, _ = _open(table, now)
    with pytest.raises(UnknownSession):
        table.lookup(ObjectId(os.urandom(16)), now)
    with pytest.raises(UnknownSession):
        table.lookup(session_id, now + 11)
    with pytest.raises(UnknownSession):  # and it is gone for good
        table.lookup(session_id, now)


def test_the_table_is_bounded() -> None:
    table, now = SessionTable(max_sessions=3), time.time()
    first, _ = _open(table, now)
    for _ in range(3):
        _open(table, now)
    assert len(table) == 3
    with pytest.raises(UnknownSession):
        table.lookup(first, now)
