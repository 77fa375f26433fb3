"""The access rule on its own (``dtwz.node.access``): who may do what, as a table,
with headers and key objects served from memory."""

from __future__ import annotations

import time

import pytest

from dtwz.errors import AccessDenied, CorruptObject, ObjectNotFound, UnknownKey
from dtwz.format.ids import ZERO_ID, ObjectId, new_nonce
from dtwz.format.layout import ObjectHeader, new_header
from dtwz.node.access import Access, KeyRing, parse_capabilities
from dtwz.security.auth import body_sha256, encode_capability_header, sign_request
from dtwz.security.capabilities import Gate, Rights, grant
from dtwz.security.keyfiles import Admitted
from dtwz.security.keys import Identity

ADMIN, NODE, OWNER, OTHER = (Identity.generate(n) for n in ("admin", "node", "owner", "other"))


class Objects:
    """Headers and key objects by ID, counting header reads."""

    def __init__(self) -> None:
        self.headers: dict[ObjectId, ObjectHeader] = {}
        self.keys: dict[ObjectId, bytes] = {OTHER.kuid: OTHER.record.encode()}
        self.header_reads = 0

    def add(self, kuid: ObjectId, prot: int) -> ObjectId:
        header = new_header(new_nonce(), kuid, 0, prot, 8192)
        self.headers[header.object_id] = header
        return header.object_id

    async def header_of(self, oid: ObjectId) -> ObjectHeader:
        self.header_reads += 1
        if oid not in self.headers:
            raise ObjectNotFound(str(oid))
        return self.headers[oid]

    async def read_key(self, kuid: ObjectId) -> bytes:
        if kuid not in self.keys:
            raise ObjectNotFound(str(kuid))
        return self.keys[kuid]


def make_access(objects: Objects) -> Access:
    admitted = Admitted(
        ADMIN.kuid, {i.kuid: i.public_key for i in (ADMIN, NODE)}, frozenset({NODE.kuid}), b"", {}
    )
    keys = KeyRing(admitted.trusted, objects.read_key)
    keys.add(OWNER.public_key)
    return Access("n1", admitted, keys, objects.header_of)


READ, WRITE, RW = Rights.READ, Rights.WRITE, Rights.READ | Rights.WRITE
ROWS = [  # who, object's default protections, rights asked, capability rights, allowed
    (ADMIN, 0, RW, None, True),
    (NODE, 0, RW, None, True),
    (OWNER, 0, RW, None, True),
    (OTHER, 0, READ, None, False),
    (OTHER, int(READ), READ, None, True),
    (OTHER, int(READ), WRITE, None, False),
    (OTHER, 0, READ, READ, True),
    (OTHER, 0, WRITE, READ, False),
    (OTHER, 0, RW, RW, True),
]


@pytest.mark.parametrize(("who", "prot", "asked", "cap_rights", "allowed"), ROWS)
async def test_the_access_rule(
    who: Identity, prot: int, asked: Rights, cap_rights: Rights | None, allowed: bool
) -> None:
    objects = Objects()
    access = make_access(objects)
    oid = objects.add(OWNER.kuid, prot)
    caps = []
    if cap_rights is not None:
        caps = [grant(OWNER, oid, who.kuid, cap_rights, int(time.time()) + 60)]
    if allowed:
        await access.check(who.kuid, oid, asked, caps)
    else:
        with pytest.raises(AccessDenied):
            await access.check(who.kuid, oid, asked, caps)


async def test_protections_are_read_once_and_checked_against_the_id() -> None:
    objects = Objects()
    access = make_access(objects)
    oid = objects.add(OWNER.kuid, int(READ))
    for _ in range(3):
        await access.check(OTHER.kuid, oid, READ)
    assert objects.header_reads == 1
    other = objects.add(ZERO_ID, 0)
    objects.headers[oid] = objects.headers[other]  # a node answering with another header
    access = make_access(objects)
    with pytest.raises(CorruptObject):
        await access.check(OTHER.kuid, oid, READ)


async def test_a_capability_for_another_object_or_outside_its_gate_does_not_count() -> None:
    objects = Objects()
    access = make_access(objects)
    oid, elsewhere = objects.add(OWNER.kuid, 0), objects.add(OWNER.kuid, 0)
    expiry = int(time.time()) + 60
    with pytest.raises(AccessDenied, match="no capability"):
        await access.check(
            OTHER.kuid, oid, READ, [grant(OWNER, elsewhere, OTHER.kuid, READ, expiry)]
        )
    gated = grant(OWNER, oid, OTHER.kuid, READ, expiry, Gate(0x1000, 16))
    await access.check(OTHER.kuid, oid, READ, [gated], 0x1000, 16)
    with pytest.raises(AccessDenied, match="gate"):
        await access.check(OTHER.kuid, oid, READ, [gated], 0x1000, 17)


async def test_requests_are_signed_by_a_known_key() -> None:
    objects = Objects()
    access = make_access(objects)
    path, digest = "/objects", body_sha256(b"")
    headers = sign_request(OTHER, "GET", path, digest, time.time(), audience="n1")
    assert await access.authenticate(headers, "GET", path, digest) == OTHER.kuid  # key object
    stranger = Identity.generate()
    headers = sign_request(stranger, "GET", path, digest, time.time(), audience="n1")
    with pytest.raises(UnknownKey):
        await access.authenticate(headers, "GET", path, digest)
    # the request that stores a key brings the key itself
    again = sign_request(stranger, "POST", "/keys", digest, time.time(), audience="n1")
    assert (
        await access.authenticate(again, "POST", "/keys", digest, stranger.public_key)
        == stranger.kuid
    )
    objects.keys[OWNER.kuid] = OTHER.record.encode()  # a node serving the wrong key
    ring = KeyRing({}, objects.read_key)
    assert not await ring.load(OWNER.kuid)


def test_capability_headers_hold_several_chains() -> None:
    oid = ObjectId(bytes(range(16)))
    caps = [grant(OWNER, oid, OTHER.kuid, READ, 10), grant(OWNER, oid, OTHER.kuid, WRITE, 10)]
    value = ",".join(encode_capability_header(c) for c in caps)
    assert parse_capabilities(value) == caps
    assert parse_capabilities(None) == [] and parse_capabilities("") == []
    with pytest.raises(AccessDenied):
        parse_capabilities(",".join([encode_capability_header(caps[0])] * 17))
