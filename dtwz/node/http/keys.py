"""The key routes: store a public key as its key object, open a session.

Routes::

    POST /keys       body: a key record -> {"kuid", "created"}
    POST /session    body: the client's ephemeral X25519 public key -> {"session", ...}

``POST /keys`` is signed by the key it stores: the authentication middleware
reads the record from the body to check that signature (``app.authenticate``),
without the node learning the key. Storing a key is *enrolling* it, and needs
the admin's consent (docs/SECURITY.md §10): the request is the admin's or a
node's, or it carries an enrollment capability for that key
(``dtwz.security.keyfiles.check_enrollment``), or the cluster runs with
``--open-enrollment``. Without it nothing is stored and the key stays unknown (a
key enrolled before is found, as for any signed request, and answered as such).
A new key object counts against the node's share of the enrolled keys
(``Quotas.reserve_key``). Sessions are described in docs/SECURITY.md §5.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from dtwz import errors
from dtwz.errors import AccessDenied, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.node.access import Access
from dtwz.node.http.context import NodeApi, accessor, node_of, txn_id_header
from dtwz.security.auth import SESSION_HEADER
from dtwz.security.keyfiles import check_enrollment
from dtwz.security.keys import KEY_OBJECT_FLAGS, KEY_OBJECT_PROT, KeyRecord, key_object_nonce


async def register_key(request: web.Request) -> web.Response:
    """Store a public key as its key object (idempotent), with the admin's consent:
    the key's owner can then sign requests on any node, and own objects."""
    node = node_of(request)
    service = node.service
    record = KeyRecord.decode(await request.read())
    kuid = record.object_id
    access = node.access
    if access is not None and not _consented(request, node, access, kuid):
        # enrolled already (its key object found: header first, never a copy), or not
        if not await access.keys.load(kuid):
            raise AccessDenied(_not_enrolled(kuid))
        return web.json_response({"kuid": kuid.hex(), "created": False})
    try:
        await service.header_of(kuid)
        created = False
    except errors.ObjectNotFound:
        release: Callable[[], None] | None = None
        if node.quotas is not None:
            release = node.quotas.reserve_key()  # QuotaExceeded: the cluster has enough keys
        try:
            await service.create(
                4096 * 2,
                int(KEY_OBJECT_FLAGS),
                int(KEY_OBJECT_PROT),
                record.encode(),
                txn_id_header(request),
                nonce=key_object_nonce(record.public_key),
            )
        except BaseException:
            if release is not None:
                release()
            raise
        created = True
    if access is not None:
        access.keys.add(record.public_key)
    return web.json_response(
        {"kuid": kuid.hex(), "created": created}, status=201 if created else 200
    )


def _consented(request: web.Request, node: NodeApi, access: Access, kuid: ObjectId) -> bool:
    """Whether the admin consents to ``kuid``'s enrollment: open enrollment, a request
    of the admin or a node, or the admin's enrollment capability for ``kuid``
    (``AccessDenied`` and its subclasses when one came and does not hold)."""
    if node.quotas is not None and node.quotas.open_enrollment:
        return True
    if access.is_trusted(accessor(request)):
        return True
    cap = next((c for c in request["caps"] if c.target == kuid), None)
    if cap is None:
        return False
    admitted = access.admitted
    try:
        check_enrollment(cap, kuid, admitted.trusted[admitted.admin], int(time.time()))
    except AccessDenied as exc:
        raise type(exc)(f"the enrollment capability for key {kuid} is refused: {exc}") from exc
    return True


def _not_enrolled(kuid: ObjectId) -> str:
    return (
        f"key {kuid} is not enrolled in this cluster, and enrolling it needs the admin's "
        f"consent (docs/SECURITY.md §10): the admin runs `dtwz identity enroll {kuid}` "
        "and gives the key's holder the enrollment capability it prints, which the holder "
        "presents: `dtwz identity register --enrollment CAP`, DTWZ_ENROLLMENT=CAP, or "
        "Client(..., enrollment=CAP). A cluster whose nodes run with --open-enrollment "
        "lets any key register"
    )


async def open_session(request: web.Request) -> web.Response:
    """Open an HMAC session for the identity that signed this request; the body is
    the client's ephemeral X25519 public key (docs/SECURITY.md §5)."""
    access = node_of(request).access
    if access is None:
        raise InvalidArgument("security is off: there are no sessions")
    body = await request.read()
    if request.headers.get(SESSION_HEADER):
        raise InvalidArgument("a session is opened with a signed request, not in a session")
    return web.json_response(access.open_session(accessor(request), body), status=201)
