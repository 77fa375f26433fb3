"""Signed requests: the canonical string, tampering, replays, the window, bounded memory."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtwz.errors import AccessDenied, InvalidArgument, InvalidCapability, ReplayedRequest
from dtwz.format.ids import ObjectId, derive_object_id
from dtwz.security.auth import (
    AUDIENCE_HEADER,
    CAPABILITY_HEADER,
    KEY_HEADER,
    MAX_CAPABILITY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RequestVerifier,
    body_sha256,
    canonical_request,
    decode_capability_header,
    encode_capability_header,
    sign_request,
)
from dtwz.security.capabilities import Rights, grant
from dtwz.security.keys import Identity, PublicKey

ALICE = Identity.from_seed(bytes(range(1, 33)), "alice")
BOB = Identity.from_seed(bytes(range(2, 34)), "bob")
KEYS = {i.kuid: i.public_key for i in (ALICE, BOB)}
NOW = 1_700_000_000
PATH = "/objects/0123456789abcdef0123456789abcdef?offset=4096&length=16"
BODY = body_sha256(b"payload")
NONCE = bytes(range(16))


def signed(
    identity: Identity = ALICE, *, now: float = NOW, nonce: bytes | None = None, **kw: Any
) -> dict[str, str]:
    args: dict[str, Any] = {"method": "PUT", "path": PATH, "body_digest": BODY}
    args.update(kw)
    return sign_request(identity, now=now, nonce=nonce, **args)


def accept(
    verifier: RequestVerifier, headers: dict[str, str], *, now: float = NOW, **kw: Any
) -> ObjectId:
    args: dict[str, Any] = {"method": "PUT", "path": PATH, "body_digest": BODY}
    args.update(kw)
    return verifier.verify(headers, now=now, key_lookup=KEYS.__getitem__, **args)


def test_canonical_string_is_the_documented_one() -> None:
    message = canonical_request("PUT", PATH, BODY, NOW, NONCE, ALICE.kuid, "node-b")
    expected = "\n".join(
        [
            "dtwz-request-v1",
            "PUT",
            PATH,
            hashlib.sha256(b"payload").hexdigest(),
            str(NOW),
            NONCE.hex(),
            ALICE.kuid.hex(),
            "node-b",
        ]
    )
    assert message == expected.encode("ascii")


def test_headers_carry_the_documented_fields() -> None:
    headers = signed(nonce=NONCE, audience="node-b")
    assert headers == {
        KEY_HEADER: ALICE.kuid.hex(),
        TIMESTAMP_HEADER: str(NOW),
        NONCE_HEADER: NONCE.hex(),
        AUDIENCE_HEADER: "node-b",
        SIGNATURE_HEADER: headers[SIGNATURE_HEADER],
    }
    signature = bytes.fromhex(headers[SIGNATURE_HEADER])
    message = canonical_request("PUT", PATH, BODY, NOW, NONCE, ALICE.kuid, "node-b")
    assert ALICE.public_key.verify(signature, message)
    assert AUDIENCE_HEADER not in signed()


def test_a_signed_request_names_its_signer() -> None:
    verifier = RequestVerifier()
    assert accept(verifier, signed(ALICE)) == ALICE.kuid
    assert accept(verifier, signed(BOB)) == BOB.kuid
    assert accept(verifier, signed(now=NOW + 0.9), now=NOW + 0.5) == ALICE.kuid
    assert len(verifier) == 3


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in signed().items()}
    assert accept(RequestVerifier(), headers) == ALICE.kuid


def test_a_replay_is_refused() -> None:
    verifier = RequestVerifier()
    headers = signed(nonce=NONCE)
    accept(verifier, headers)
    with pytest.raises(ReplayedRequest, match="used before"):
        accept(verifier, headers)
    with pytest.raises(ReplayedRequest):
        accept(verifier, headers, now=NOW + 59)
    accept(verifier, signed(BOB, nonce=NONCE))  # nonces are per key


@pytest.mark.parametrize(
    ("age", "message"), [(61, "61 s old"), (3600, "old"), (-61, "future"), (-3600, "future")]
)
def test_stale_and_future_timestamps_are_refused(age: int, message: str) -> None:
    with pytest.raises(ReplayedRequest, match=message):
        accept(RequestVerifier(window_s=60), signed(now=NOW - age))


@pytest.mark.parametrize("age", [60, 0, -60])
def test_the_window_is_inclusive(age: int) -> None:
    accept(RequestVerifier(window_s=60), signed(now=NOW - age))


@pytest.mark.parametrize(
    "change",
    [
        {"method": "POST"},
        {"path": "/objects/0123456789abcdef0123456789abcdef?offset=4096&length=17"},
        {"path": "/objects/0123456789abcdef0123456789abcdef"},
        {"body_digest": body_sha256(b"payloaD")},
    ],
)
def test_a_request_other_than_the_signed_one_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(AccessDenied, match="bad request signature"):
        accept(RequestVerifier(), signed(), **change)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (TIMESTAMP_HEADER, str(NOW + 1)),
        (NONCE_HEADER, "ff" * 16),
        (KEY_HEADER, BOB.kuid.hex()),
        (AUDIENCE_HEADER, "node-c"),
        (SIGNATURE_HEADER, BOB.sign(b"x").hex()),
        (SIGNATURE_HEADER, "00" * 64),
    ],
)
def test_tampered_headers_are_refused(header: str, value: str) -> None:
    headers = signed(audience="node-b")
    headers[header] = value
    with pytest.raises(AccessDenied, match="bad request signature"):
        accept(RequestVerifier(), headers)


@pytest.mark.parametrize("header", [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER])
def test_missing_headers_are_refused(header: str) -> None:
    headers = signed()
    del headers[header]
    with pytest.raises(AccessDenied, match=f"no {header} header"):
        accept(RequestVerifier(), headers)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (KEY_HEADER, "xyz"),
        (KEY_HEADER, ""),
        (TIMESTAMP_HEADER, "0" + str(NOW)),
        (TIMESTAMP_HEADER, "-5"),
        (TIMESTAMP_HEADER, "1e9"),
        (TIMESTAMP_HEADER, "9" * 40),
        (NONCE_HEADER, "00" * 15),
        (NONCE_HEADER, "AA" * 16),
        (SIGNATURE_HEADER, "00" * 63),
        (SIGNATURE_HEADER, "zz" * 64),
    ],
)
def test_malformed_headers_are_refused(header: str, value: str) -> None:
    headers = signed()
    headers[header] = value
    with pytest.raises(AccessDenied, match="malformed"):
        accept(RequestVerifier(), headers)


def test_malformed_requests_are_refused_not_crashed() -> None:
    changes: list[dict[str, Any]] = [
        {"path": "/a\nb"},
        {"method": "get"},
        {"body_digest": b"short"},
    ]
    for change in changes:
        with pytest.raises(AccessDenied, match="malformed signed request"):
            accept(RequestVerifier(), signed(), **change)
    headers = signed()
    headers[AUDIENCE_HEADER] = "a\nb"
    with pytest.raises(AccessDenied, match="malformed"):
        accept(RequestVerifier(), headers)


def test_unknown_and_lying_keys_are_refused() -> None:
    stranger = Identity.generate()
    with pytest.raises(AccessDenied, match="unknown key"):
        accept(RequestVerifier(), signed(stranger))

    def lying(kuid: ObjectId) -> PublicKey:
        return stranger.public_key

    with pytest.raises(AccessDenied, match="bad request signature"):  # not alice's key
        RequestVerifier().verify(signed(ALICE), "PUT", PATH, BODY, NOW, lying)
    headers = signed(stranger)
    headers[KEY_HEADER] = ALICE.kuid.hex()  # a real key's ID, stranger's signature
    with pytest.raises(AccessDenied, match="bad request signature"):
        accept(RequestVerifier(), headers)


def test_a_forgery_does_not_burn_the_real_requests_nonce() -> None:
    verifier = RequestVerifier()
    real = signed(nonce=NONCE)
    forged = dict(real, **{SIGNATURE_HEADER: "00" * 64})
    with pytest.raises(AccessDenied):
        accept(verifier, forged)
    assert accept(verifier, real) == ALICE.kuid


def test_audiences() -> None:
    verifier = RequestVerifier(audience="node-b")
    accept(verifier, signed(audience="node-b"))
    accept(verifier, signed())  # addressed to any node
    with pytest.raises(AccessDenied, match="addressed to 'node-a'"):
        accept(verifier, signed(audience="node-a"))
    accept(RequestVerifier(), signed(audience="node-a"))  # no audience of its own: any


def test_nonce_memory_expires_with_the_window() -> None:
    verifier = RequestVerifier(window_s=60)
    for i in range(10):
        accept(verifier, signed(now=NOW + i), now=NOW + i)
    assert len(verifier) == 10
    accept(verifier, signed(now=NOW + 65), now=NOW + 65)
    assert len(verifier) == 6  # NOW+5 .. NOW+9 are still replayable, and the new one
    old = signed(now=NOW + 5, nonce=NONCE)
    accept(verifier, old, now=NOW + 65)
    with pytest.raises(ReplayedRequest):
        accept(verifier, old, now=NOW + 65)


def test_nonce_memory_is_bounded_and_fails_closed() -> None:
    verifier = RequestVerifier(window_s=60, max_nonces=3)
    sent = [signed(now=NOW + i) for i in range(10)]
    for headers in sent:
        accept(verifier, headers, now=NOW + 10)
        assert len(verifier) <= 3
    for headers in sent:  # nothing is accepted twice: forgotten ones are too old now
        with pytest.raises(ReplayedRequest):
            accept(verifier, headers, now=NOW + 10)
    with pytest.raises(ReplayedRequest, match="too old to tell"):
        accept(verifier, signed(now=NOW + 5), now=NOW + 10)  # fresh, but not newer than memory
    accept(verifier, signed(now=NOW + 10), now=NOW + 10)  # newer requests still get through


def test_a_clock_that_steps_back_reopens_nothing() -> None:
    verifier = RequestVerifier(window_s=60)
    headers = signed(now=NOW)
    accept(verifier, headers)
    accept(verifier, signed(now=NOW + 100), now=NOW + 100)  # NOW's nonce is forgotten
    with pytest.raises(ReplayedRequest):
        accept(verifier, headers, now=NOW)  # the clock went back: still refused


def test_verifier_arguments() -> None:
    with pytest.raises(InvalidArgument):
        RequestVerifier(window_s=0)
    with pytest.raises(InvalidArgument):
        RequestVerifier(max_nonces=0)


def test_random_nonces_by_default() -> None:
    assert signed()[NONCE_HEADER] != signed()[NONCE_HEADER]


def test_capability_headers_round_trip() -> None:
    target = derive_object_id(bytes(16), ALICE.kuid, 0, 0)
    cap = grant(ALICE, target, BOB.kuid, Rights.READ, NOW + 60)
    value = encode_capability_header(cap)
    assert CAPABILITY_HEADER == "X-Dtwz-Capability"
    assert "=" not in value and "+" not in value and "/" not in value
    assert decode_capability_header(value) == cap


@pytest.mark.parametrize("value", ["", "!!!!", "a", "A" * (MAX_CAPABILITY_HEADER + 4), "AAAA=="])
def test_bad_capability_headers(value: str) -> None:
    with pytest.raises(InvalidCapability):
        decode_capability_header(value)


def test_capability_headers_have_one_spelling() -> None:
    target = derive_object_id(bytes(16), ALICE.kuid, 0, 0)
    value = encode_capability_header(grant(ALICE, target, BOB.kuid, Rights.READ, NOW))
    assert len(value) % 4 == 2  # 148 bytes: the last character has 4 unused low bits
    other = value[:-1] + chr(ord(value[-1]) + 1)
    with pytest.raises(InvalidCapability, match="non-canonical"):
        decode_capability_header(other)


GOOD = signed(nonce=NONCE, audience="node-b")


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(sorted(GOOD)),
    value=st.text(max_size=200),
)
def test_no_header_mutation_is_accepted(header: str, value: str) -> None:
    headers = dict(GOOD, **{header: value})
    if value == GOOD[header]:
        return
    with pytest.raises(AccessDenied):
        accept(RequestVerifier(audience="node-b"), headers)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(0, 127), header=st.sampled_from(sorted(GOOD)))
def test_no_single_character_change_is_accepted(position: int, header: str) -> None:
    value = GOOD[header]
    at = position % len(value)
    swapped = "0" if value[at] != "0" else "1"
    headers = dict(GOOD, **{header: value[:at] + swapped + value[at + 1 :]})
    with pytest.raises(AccessDenied):
        accept(RequestVerifier(audience="node-b"), headers)
