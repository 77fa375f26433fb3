"""The object routes: create, read, write and locate objects. JSON for metadata,
raw bytes for object contents.

Routes::

    POST /objects?size=&flags=&prot=&node=       body: initial data -> {"id", ...}
    GET  /objects/{id}                           metadata, FOT, home, version
    GET  /objects/{id}/data?offset=&length=&latest=1   raw bytes
    GET  /objects/{id}/image?latest=1            header record + data + FOT (client copies)
    PUT  /objects/{id}/data?offset=              body: bytes -> {"version"}
    POST /objects/{id}/append                    body: bytes -> {"offset", "version"}
    POST /objects/{id}/pointer                   {"at", "target", "target_offset"}
    POST /transact                               {"txn_id", "ops": [...]}
    GET  /locate/{id}                            home, version, epoch, copies

A new object's default protections are ``prot`` (``Protection`` bits), 0 when not
given: it grants nothing to anyone but its owner, the requester, until the owner
says otherwise (docs/SECURITY.md §9). Writes take the ``X-Dtwz-Txn`` header as their
transaction ID: a retry with the same ID is applied once. A directory of the
namespace takes no write, append or pointer at all (its home refuses them with
``AccessDenied``): its bytes change only through ``/names`` operations. Every
change is a transaction of ``TxOp`` at the objects' homes
(``ObjectService.transact``), and needs WRITE on the bytes it changes; a read
needs READ, checked once the copy's header is here (it comes with the fetch, so
the check costs no round trip of its own).
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from dtwz import errors
from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START, HEADER_RECORD_SIZE, FotEntry, ObjectHeader
from dtwz.node.http.context import (
    accessor,
    allow,
    flag_query,
    int_query,
    json_body,
    node_of,
    object_id,
    parse_txn_id,
    txn_id_header,
    visible,
)
from dtwz.security.capabilities import Rights
from dtwz.wire.kinds import TxOpKind
from dtwz.wire.messages import Create, Created, TransactResult, TxOp


async def create(request: web.Request) -> web.Response:
    node = node_of(request)
    size = int_query(request, "size", 1 << 20)
    flags = int_query(request, "flags", 0)
    prot = int_query(request, "prot", 0)  # owner-only unless the creator says otherwise
    data = await request.read()
    target = request.query.get("node", node.node_id)
    if not node.is_member(target):  # a member that is down answers HomeUnreachable (503)
        raise InvalidArgument(f"node={target!r} names no member of the cluster (GET /cluster)")
    txn_id = txn_id_header(request) or b""
    kuid = accessor(request)  # the requester owns what it creates
    if target == node.node_id:
        created = await node.service.create(size, flags, prot, data, txn_id, kuid=kuid)
    else:
        reply = await node.request(target, Create(txn_id, size, flags, prot, data, kuid))
        assert isinstance(reply, Created)
        created = reply
    return web.json_response(
        {
            "id": created.object_id.hex(),
            "version": created.version,
            "home": target,
            "offset": created.data_offset,
            "length": len(data),
        },
        status=201,
    )


async def info(request: web.Request) -> web.Response:
    node = node_of(request)
    oid = object_id(request)
    obj, _, home = await node.service.open_whole(oid, latest=flag_query(request, "latest"))
    await allow(request, oid, Rights.READ)  # after the fetch: the copy's header, no extra trip
    header = obj.header()
    fot = []
    for index in range(1, header.fot_count + 1):
        try:
            entry = obj.fot_entry(index)
            fot.append(_fot_json(index, entry, obj))
        except DtwzError as exc:
            fot.append({"index": index, "error": str(exc)})
    return web.json_response({**_header_json(header), "home": home, "fot": fot})


def _header_json(h: ObjectHeader) -> dict[str, Any]:
    return {
        "id": h.object_id.hex(),
        "max_size": h.max_size,
        "flags": int(h.flags),
        "default_prot": int(h.default_prot),
        "data_len": h.data_len,
        "data_end": h.data_end,
        "version": h.version,
        "fot_count": h.fot_count,
        "free": h.free_bytes,
        "kuid": h.kuid.hex(),
    }


def _fot_json(index: int, entry: FotEntry, obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index, "flags": int(entry.flags), "valid": entry.is_valid}
    if entry.is_name:
        out["name"] = obj.entry_name(entry)
    elif entry.target is not None:
        out["target"] = entry.target.hex()
    return out


async def read(request: web.Request) -> web.Response:
    node = node_of(request)
    oid = object_id(request)
    latest = flag_query(request, "latest")
    offset = int_query(request, "offset", DATA_START)
    if "length" in request.query:  # a range: large remote objects are read by range
        # checked after the fetch (nothing is answered before): a copy fetched whole
        # brings its ID-checked header, so the check costs no round trip of its own
        length = int_query(request, "length")
        data, version, home = await node.service.read(oid, offset, length, latest=latest)
        await allow(request, oid, Rights.READ, offset, length)
    else:  # everything up to the end of the data
        obj, version, home = await node.service.open_whole(oid, latest=latest)
        await allow(request, oid, Rights.READ)
        data = obj.read(offset, max(0, obj.header().data_end - offset))
    return web.Response(
        body=bytes(data),
        content_type="application/octet-stream",
        headers={"X-Dtwz-Version": str(version), "X-Dtwz-Home": home},
    )


async def image(request: web.Request) -> web.Response:
    """Everything a client needs to build its own copy: header record, data, FOT."""
    node = node_of(request)
    oid = object_id(request)
    via: ObjectId | None = None
    if "via" in request.query:  # a client followed a pointer to here (edge use counts)
        try:
            via = ObjectId.parse(request.query["via"])
        except DtwzError as exc:
            raise InvalidArgument(f"via: {exc}") from exc
    obj, _, home = await node.service.open_whole(oid, latest=flag_query(request, "latest"))
    await allow(request, oid, Rights.READ)
    if via is not None:  # counted only once the requester may read what it reached
        node.service.note_edge(via, oid)
    for _ in range(100):  # the layout must come from the same commit as the bytes
        header = ObjectHeader.decode(obj.view[:HEADER_RECORD_SIZE], check_id=False)
        header_raw, data, fot = obj.snapshot(
            [
                (0, HEADER_RECORD_SIZE),
                (DATA_START, header.data_end),
                (header.fot_start, header.max_size),
            ]
        )
        if ObjectHeader.decode(header_raw, check_id=False).version == header.version:
            break
    return web.Response(
        body=header_raw + data + fot,
        content_type="application/octet-stream",
        headers={
            "X-Dtwz-Version": str(header.version),
            "X-Dtwz-Home": home,
            "X-Dtwz-Data-Len": str(len(data)),
            "X-Dtwz-Fot-Len": str(len(fot)),
        },
    )


# -- changes: each one a transaction -------------------------------------------------


async def _run(
    request: web.Request, ops: list[TxOp], txn_id: bytes | None = None
) -> TransactResult:
    for op in ops:  # every object a transaction changes needs WRITE, on the bytes it changes
        offset, length = await _op_range(request, op)
        await allow(request, op.object_id, Rights.WRITE, offset, length)
    return await node_of(request).service.transact(ops, txn_id)


async def _op_range(request: web.Request, op: TxOp) -> tuple[int | None, int | None]:
    if op.kind == TxOpKind.WRITE:
        return op.offset, len(op.data)
    if op.kind in (TxOpKind.POINTER, TxOpKind.NAME_POINTER):
        # a pointer may add a FOT entry, at the object's end: a write to the whole
        # object, so a gated capability allows it only if its gate covers the object
        # (the size is looked up only then; without a gate the whole object is asked)
        caps = request.get("caps", ())
        if any(c.target == op.object_id and c.gate is not None for c in caps):
            header = await node_of(request).service.header_of(op.object_id)
            return 0, header.max_size
        return None, None
    return None, None  # appends and allocations land where the home decides


def _versions(result: TransactResult) -> dict[str, int]:
    return {ov.object_id.hex(): ov.version for ov in result.versions}


async def write(request: web.Request) -> web.Response:
    oid = object_id(request)
    data = await request.read()
    op = TxOp(TxOpKind.WRITE, oid, int_query(request, "offset"), data)
    result = await _run(request, [op], txn_id_header(request))
    return web.json_response({"version": _versions(result).get(oid.hex(), 0), "length": len(data)})


async def append(request: web.Request) -> web.Response:
    oid = object_id(request)
    data = await request.read()
    result = await _run(request, [TxOp(TxOpKind.APPEND, oid, 0, data)], txn_id_header(request))
    return web.json_response(
        {
            "offset": result.results[0],
            "length": len(data),
            "version": _versions(result).get(oid.hex(), 0),
        }
    )


async def pointer(request: web.Request) -> web.Response:
    oid = object_id(request)
    body = await json_body(request)
    op = _tx_op(
        {
            "kind": "pointer",
            "object": oid.hex(),
            "offset": body.get("at"),
            "target": body.get("target"),
            "target_offset": body.get("target_offset", DATA_START),
        }
    )
    result = await _run(request, [op], txn_id_header(request))
    return web.json_response({"pointer": result.results[0], "versions": _versions(result)})


async def transact(request: web.Request) -> web.Response:
    body = await json_body(request)
    ops = body.get("ops")
    if not isinstance(ops, list) or not ops:
        raise InvalidArgument("'ops' must be a non-empty list")
    txn = body.get("txn_id")
    txn_id = parse_txn_id(txn) if txn else None
    result = await _run(request, [_tx_op(op) for op in ops], txn_id)
    return web.json_response({"results": list(result.results), "versions": _versions(result)})


def _tx_op(raw: Any) -> TxOp:
    """One op of the JSON form: {"kind", "object", "offset", "data" (base64),
    "target", "target_offset", "size"}."""
    if not isinstance(raw, dict):
        raise InvalidArgument("each op must be a JSON object")
    try:
        kind = TxOpKind.from_name(str(raw.get("kind")))
    except ValueError:
        raise InvalidArgument(f"op kind must be one of {TxOpKind.names()}") from None
    try:
        data = base64.b64decode(raw.get("data", ""), validate=True)
        target = raw.get("target")
        return TxOp(
            kind,
            ObjectId.parse(str(raw.get("object"))),
            int(raw.get("offset") or 0),
            data,
            ObjectId.parse(target) if target else ObjectId(bytes(16)),
            int(raw.get("target_offset") or 0),
            int(raw.get("size") or 0),
        )
    except (ValueError, TypeError, errors.FormatError) as exc:
        raise InvalidArgument(f"bad op {raw!r}: {exc}") from exc


async def locate(request: web.Request) -> web.Response:
    oid = object_id(request)
    await visible(request, oid)  # to a requester who may not read it: as if missing
    where = await node_of(request).describe(oid, refresh=flag_query(request, "refresh"))
    record = where.record
    return web.json_response(
        {
            "id": oid.hex(),
            "home": record.home,
            "version": record.version,
            "epoch": record.epoch,
            "copies": where.copies,
        }
    )
