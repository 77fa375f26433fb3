"""The prefetch stream codec: frames in, the same frames out; anything else refused."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtwz.errors import ProtocolError
from dtwz.format.ids import ObjectId
from dtwz.graph import stream


def _frames(raw: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(raw):
        kind, length = stream.frame_head(raw[at : at + stream.FRAME.size])
        at += stream.FRAME.size
        out.append((kind, raw[at : at + length]))
        at += length
    return out


def test_events_and_images_round_trip() -> None:
    oid = ObjectId(os.urandom(16))
    raw = stream.event({"event": "plan", "objects": 3})
    raw += b"".join(bytes(p) for p in stream.image(oid, 7, "n2é", b"h" * 92, b"data", b"f" * 32))
    (k1, p1), (k2, p2) = _frames(raw)
    assert k1 == stream.EVENT and stream.decode_event(p1) == {"event": "plan", "objects": 3}
    image = stream.decode_image(p2)
    assert k2 == stream.IMAGE and image.object_id == oid and image.version == 7
    assert image.home == "n2é" and bytes(image.header) == b"h" * 92
    assert bytes(image.data) == b"data" and bytes(image.fot) == b"f" * 32


@pytest.mark.parametrize("payload", [b"", b"[]", b"{}", b'{"event": 1}', b"\xff", b"nope"])
def test_bad_events_are_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        stream.decode_event(payload)


def test_bad_frame_heads_are_refused() -> None:
    with pytest.raises(ProtocolError):
        stream.frame_head(b"\x01\x00")  # cut short
    with pytest.raises(ProtocolError):
        stream.frame_head(stream.FRAME.pack(9, 1))  # unknown kind
    with pytest.raises(ProtocolError):
        stream.frame_head(stream.FRAME.pack(stream.IMAGE, stream.MAX_FRAME + 1))


@given(st.binary(max_size=200))
def test_no_bytes_crash_the_image_decoder(raw: bytes) -> None:
    try:
        image = stream.decode_image(raw)
    except ProtocolError:
        return
    total = len(image.header) + len(image.data) + len(image.fot)
    assert total <= len(raw)


def test_lengths_that_do_not_add_up_are_refused() -> None:
    parts = stream.image(ObjectId(os.urandom(16)), 1, "n1", b"h" * 92, b"data", b"")
    payload = b"".join(bytes(p) for p in parts)[stream.FRAME.size :]
    with pytest.raises(ProtocolError):
        stream.decode_image(payload + b"x")
    with pytest.raises(ProtocolError):
        stream.decode_image(payload[:-1])
