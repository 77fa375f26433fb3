"""Clients in sessions with a real node (the shared 1-node cluster): one handshake,
then MACs; a session the node lost is reopened; a stolen session ID is refused. The
session rules on their own: tests/security/test_sessions.py."""

from __future__ import annotations

import os
import time

import pytest

from dtwz.client.api import Client
from dtwz.errors import AccessDenied
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.node.launcher import LocalCluster
from dtwz.security.keys import Identity


def test_clients_work_in_sessions_and_reopen_a_lost_one(cluster1: LocalCluster) -> None:
    alice, thief = Identity.generate("alice"), Identity.generate("mallory")
    for who in (alice, thief):
        cluster1.enroll(who)  # with the admin's consent (docs/SECURITY.md §10)
    url = cluster1.node("n1").url
    with Client(url, identity=alice, audience="n1") as client:
        before = client.cluster_status()["access"]
        oid = client.create(8192, b"in a session")
        for _ in range(20):
            assert client.read(oid, DATA_START, 12) == b"in a session"
        after = client.cluster_status()["access"]
        assert after["sessions_opened"] - before["sessions_opened"] == 1
        assert after["session_requests"] - before["session_requests"] >= 20
        # a session the node does not have (expired, or the node restarted): reopened
        client._channel.session = (ObjectId(os.urandom(16)), os.urandom(32), time.time() + 300)
        assert client.read(oid, DATA_START, 12, latest=True) == b"in a session"
        assert client.cluster_status()["access"]["sessions_opened"] == after["sessions_opened"] + 1
    # someone else's session ID with a key of one's own gets nothing
    with Client(url, identity=thief, audience="n1") as mallory:
        assert client._channel.session is not None
        stolen_id = client._channel.session[0]
        mallory._channel.session = (stolen_id, os.urandom(32), time.time() + 300)
        mallory._channel.sessions = True
        with pytest.raises(AccessDenied):
            mallory.read(oid, DATA_START, 12)
