"""Remote reads: small objects are copied whole, large ones are read by range.

Real node processes (the shared 3-node cluster and its ``clients`` of tests/conftest.py).
"""

from __future__ import annotations

import hashlib

from dtwz.client.api import Client
from dtwz.format.layout import DATA_START

MiB = 1 << 20


def test_a_large_object_is_read_by_range_without_a_whole_copy(
    clients: dict[str, Client],
) -> None:
    payload = hashlib.shake_256(b"large").digest(20 * MiB)  # past WHOLE_COPY_MAX (16 MiB)
    oid = clients["n1"].create(32 * MiB, payload)
    reader = clients["n2"]
    copies_before = reader.cluster_status()["copies"]
    before = reader.cluster_status()["service"]

    # a range inside the data, one across its end (zeros past data_end), one of 3 chunks
    assert reader.read(oid, DATA_START + 5 * MiB, 4096) == payload[5 * MiB : 5 * MiB + 4096]
    tail = reader.read(oid, DATA_START + 20 * MiB - 10, 20)
    assert tail == payload[-10:] + bytes(10)
    span = reader.read(oid, DATA_START + MiB // 2, 3 * MiB)
    assert span == payload[MiB // 2 : MiB // 2 + 3 * MiB]

    after = reader.cluster_status()["service"]
    assert after["range_reads"] - before["range_reads"] == 3
    assert after["remote_reads"] == before["remote_reads"]  # no whole copy was made
    assert reader.cluster_status()["copies"] == copies_before


def test_a_small_object_is_copied_once_and_then_read_locally(clients: dict[str, Client]) -> None:
    oid = clients["n1"].create(64 * 1024, b"small and whole")
    reader = clients["n3"]
    before = reader.cluster_status()["service"]
    for _ in range(3):
        assert reader.read(oid, DATA_START, 15) == b"small and whole"
    after = reader.cluster_status()["service"]
    assert after["remote_reads"] - before["remote_reads"] == 1
    assert after["copy_reads"] - before["copy_reads"] >= 2
    assert "n3" in clients["n1"].locate(oid).copies
