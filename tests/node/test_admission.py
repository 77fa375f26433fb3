"""Nodes authenticate each other with CurveZMQ: a peer whose curve key the cluster has
not admitted cannot join nor fetch, even when it knows the cluster's server key, and
the cluster keeps serving meanwhile."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dtwz.client.api import Client
from dtwz.errors import PeerUnavailable
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import HOST, LocalCluster, free_ports
from dtwz.node.peer import Curve, PeerEndpoint, curve_keypair
from dtwz.security import keyfiles
from dtwz.wire.messages import Ack, Fetch, Message, ObjectData


async def _ignore(message: Message) -> Message:
    return Ack()


async def _fetch(cluster: LocalCluster, curve: Curve | None, oid: bytes) -> Message:
    endpoint = PeerEndpoint(f"tcp://{HOST}:0", _ignore, timeout=1.5, curve=curve)
    await endpoint.start()
    try:
        fetch = Fetch(oid, DATA_START, 64, False, False, "stranger")
        return await endpoint.request(cluster.node("n1").peer_addr, fetch)
    finally:
        await endpoint.close()


def _curve(server: tuple[bytes, bytes], client: tuple[bytes, bytes]) -> Curve:
    return Curve(server[0], server[1], client[0], client[1], lambda key: False)


async def test_a_peer_with_an_unadmitted_key_cannot_fetch(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(2)
    with cluster.client("n1") as client:
        oid = client.create(8192, b"secret")
    server = keyfiles.NodeKeys.load(cluster.keys_dir, "n2").curve_server
    admitted_pair = keyfiles.NodeKeys.load(cluster.keys_dir, "n2").curve
    # control: the same request with an admitted key is answered
    reply = await _fetch(cluster, _curve(server, admitted_pair), oid)
    assert isinstance(reply, ObjectData) and bytes(reply.data).startswith(b"secret")
    # a key not in admitted.json, even with the cluster's server key pair: no answer
    with pytest.raises(PeerUnavailable):
        await _fetch(cluster, _curve(server, curve_keypair()), oid)
    # no encryption at all: the handshake never completes
    with pytest.raises(PeerUnavailable):
        await _fetch(cluster, None, oid)
    with cluster.client("n2") as client:  # the cluster keeps serving
        assert client.read(oid) == b"secret"


@pytest.mark.timeout(60)
def test_a_node_with_an_unknown_key_cannot_join(
    make_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = make_cluster(2)
    keys = tmp_path / "intruder-keys"
    keys.mkdir(mode=0o700)
    # the worst case: it even holds the cluster's curve server key pair
    shutil.copy2(cluster.keys_dir / keyfiles.CURVE_SERVER_FILE, keys / keyfiles.CURVE_SERVER_FILE)
    http_port, peer_port = free_ports(2)
    log = (tmp_path / "intruder.log").open("wb")
    argv = [
        sys.executable,
        "-m",
        "dtwz",
        "node",
        "run",
        "--node-id",
        "intruder",
        "--data-dir",
        str(tmp_path / "intruder"),
        "--bind-host",
        HOST,
        "--peer-port",
        str(peer_port),
        "--http-port",
        str(http_port),
        "--seeds",
        cluster.seeds[0],
        "--keys-dir",
        str(keys),
    ]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{HOST}:{http_port}"
        deadline = time.monotonic() + 20
        answered = False
        while time.monotonic() < deadline and not answered:
            with Client(url, timeout=1.0) as probe:
                try:
                    probe.health()
                    answered = True
                except PeerUnavailable:
                    time.sleep(0.2)
        assert answered, (tmp_path / "intruder.log").read_text()
        time.sleep(3.0)  # many join attempts and heartbeats' worth
        with Client(url, timeout=2.0) as probe:
            assert not probe.ready(), "the intruder joined"
        with cluster.client("n1") as client:
            members = {m["node_id"] for m in client.cluster_status()["members"]}
            assert "intruder" not in members
            oid = client.create(8192, b"still serving")
        with cluster.client("n2") as client:
            assert client.read(oid) == b"still serving"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()
