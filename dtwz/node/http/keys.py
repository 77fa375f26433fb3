"""The key routes: store a public key as its key object, open a session.

Routes::

    POST /keys       body: a key record -> {"kuid", "created"}
    POST /session    body: the client's ephemeral X25519 public key -> {"session", ...}

``POST /keys`` is signed by the key it stores: the authentication middleware
reads the record from the body to check that signature (``app.authenticate``).
Sessions are described in docs/SECURITY.md §5.
"""

from __future__ import annotations

from aiohttp import web

from dtwz import errors
from dtwz.errors import InvalidArgument
from dtwz.node.http.context import accessor, node_of, txn_id_header
from dtwz.security.auth import SESSION_HEADER
from dtwz.security.keys import KEY_OBJECT_FLAGS, KEY_OBJECT_PROT, KeyRecord, key_object_nonce


async def register_key(request: web.Request) -> web.Response:
    """Store a public key as its key object (idempotent): the key's owner can then
    sign requests on any node, and own objects. The request is signed by that key."""
    service = node_of(request).service
    record = KeyRecord.decode(await request.read())
    kuid = record.object_id
    try:
        await service.header_of(kuid)
        created = False
    except errors.ObjectNotFound:
        await service.create(
            4096 * 2,
            int(KEY_OBJECT_FLAGS),
            int(KEY_OBJECT_PROT),
            record.encode(),
            txn_id_header(request),
            nonce=key_object_nonce(record.public_key),
        )
        created = True
    return web.json_response(
        {"kuid": kuid.hex(), "created": created}, status=201 if created else 200
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
