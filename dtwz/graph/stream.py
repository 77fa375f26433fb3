"""The prefetch stream: how a node sends a client many objects in one response.

Pure encode/decode, no I/O. A stream is a sequence of frames::

    kind u8 | length u32 | payload[length]          (little-endian)

- kind 1, EVENT: UTF-8 JSON, an object with an ``event`` key: ``plan`` (objects
  and bytes to come), ``progress``, ``done`` (final counts) or ``error`` (``kind``
  and ``message`` of a dtwz error; the stream ends after it).
- kind 2, IMAGE: one object, as the node holds it::

      object_id[16] | version u64 | home_len u16 | home | header_len u32 |
      data_len u32 | fot_len u32 | header | data | fot

The receiver checks every image like any fetched copy (the header's ID is
recomputed from its metadata), so a node cannot slip in a forged object.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from dtwz.errors import ProtocolError
from dtwz.format.ids import ObjectId

EVENT, IMAGE = 1, 2
FRAME = struct.Struct("<BI")
_IMAGE_HEAD = struct.Struct("<16sQH")
_IMAGE_LENS = struct.Struct("<III")
MAX_FRAME = 256 << 20


@dataclass(frozen=True, slots=True)
class StreamImage:
    object_id: ObjectId
    version: int
    home: str
    header: bytes | memoryview
    data: bytes | memoryview
    fot: bytes | memoryview


def event(doc: dict[str, Any]) -> bytes:
    payload = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return FRAME.pack(EVENT, len(payload)) + payload


def image(
    oid: bytes,
    version: int,
    home: str,
    header: bytes,
    data: bytes | memoryview,
    fot: bytes | memoryview,
) -> list[bytes | memoryview]:
    """The frame of one object, as parts to write one after another (no joining)."""
    raw_home = home.encode("utf-8")
    head = (
        _IMAGE_HEAD.pack(bytes(oid), version, len(raw_home))
        + raw_home
        + _IMAGE_LENS.pack(len(header), len(data), len(fot))
    )
    size = len(head) + len(header) + len(data) + len(fot)
    return [FRAME.pack(IMAGE, size) + head + header, data, fot]


def decode_event(payload: bytes | memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(payload))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"a stream event is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
        raise ProtocolError("a stream event must be an object with an 'event' key")
    return doc


def decode_image(payload: bytes | memoryview) -> StreamImage:
    view = memoryview(payload)
    try:
        oid, version, home_len = _IMAGE_HEAD.unpack_from(view, 0)
        at = _IMAGE_HEAD.size
        home = bytes(view[at : at + home_len]).decode("utf-8")
        at += home_len
        header_len, data_len, fot_len = _IMAGE_LENS.unpack_from(view, at)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed image frame: {exc}") from exc
    at += _IMAGE_LENS.size
    if at + header_len + data_len + fot_len != len(view):
        raise ProtocolError("image frame lengths do not add up")
    header = view[at : at + header_len]
    data = view[at + header_len : at + header_len + data_len]
    fot = view[at + header_len + data_len :]
    return StreamImage(ObjectId(oid), version, home, header, data, fot)


def frame_head(raw: bytes) -> tuple[int, int]:
    """(kind, payload length) of a frame's first five bytes."""
    if len(raw) != FRAME.size:
        raise ProtocolError("stream ended inside a frame header")
    kind, length = FRAME.unpack(raw)
    if kind not in (EVENT, IMAGE) or length > MAX_FRAME:
        raise ProtocolError(f"bad stream frame (kind {kind}, {length} bytes)")
    return kind, length
