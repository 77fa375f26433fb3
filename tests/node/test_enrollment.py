"""Enrollment against real node processes (docs/SECURITY.md §10): a key is known to
the cluster only with the admin's consent (an enrollment capability naming it, or
the admin storing it), or when the nodes run with ``--open-enrollment``; the number
of enrolled keys is bounded. Every refusal is checked to leave the key unknown on
every node and to store nothing."""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from dtwz.client.api import Client
from dtwz.errors import (
    AccessDenied,
    CapabilityExpired,
    InvalidCapability,
    QuotaExceeded,
)
from dtwz.format.ids import ObjectId
from dtwz.node.launcher import LocalCluster
from dtwz.security.auth import body_sha256, encode_capability_header, sign_request
from dtwz.security.capabilities import Rights, delegate, grant
from dtwz.security.keyfiles import enrollment_capability
from dtwz.security.keys import Identity
from tests.helpers import ClusterFactory, running_cluster


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(2, tmp_path_factory.mktemp("enroll")) as started:
        yield started


def soon(seconds: int = 600) -> int:
    return int(time.time()) + seconds


def raw(
    cluster: LocalCluster,
    node: str,
    who: Identity | None,
    method: str,
    path: str,
    body: bytes = b"",
    cap: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """One request, signed by ``who`` for ``node`` (no client: no retry, no repair)."""
    headers = {"X-Dtwz-Txn": os.urandom(16).hex()}
    if who is not None:
        digest = body_sha256(body)
        headers.update(sign_request(who, method, path, digest, time.time(), audience=node))
    if cap is not None:
        headers["X-Dtwz-Capability"] = cap
    url = urlsplit(cluster.node(node).url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        doc = json.loads(text)
    except ValueError:
        doc = {"raw": text.decode("utf-8", "replace")}
    return response.status, doc if isinstance(doc, dict) else {"doc": doc}


def objects_on(cluster: LocalCluster, node: str) -> int:
    with cluster.client(node) as admin:
        return int(admin.cluster_status()["objects"])


def assert_unknown_everywhere(cluster: LocalCluster, who: Identity) -> None:
    """Requests signed by ``who`` fail as an unknown key on every node."""
    for node in cluster.node_ids:
        status, doc = raw(cluster, node, who, "POST", "/objects?size=8192", b"x")
        assert (status, doc.get("error")) == (401, "UnknownKey"), (node, doc)
        assert "dtwz identity enroll" in doc["message"]


def test_an_unenrolled_key_is_refused_and_stays_unknown(two: LocalCluster) -> None:
    stranger = Identity.generate("stranger")
    before = [objects_on(two, n) for n in two.node_ids]
    status, doc = raw(two, "n1", stranger, "POST", "/keys", stranger.record.encode())
    assert (status, doc["error"]) == (403, "AccessDenied")
    assert (
        "not enrolled" in doc["message"]
        and f"dtwz identity enroll {stranger.kuid}" in (doc["message"])
    )
    assert_unknown_everywhere(two, stranger)
    # through the client: its repair of UnknownKey is refused with the same advice
    with (
        Client(two.node("n2").url, identity=stranger, audience="n2") as client,
        pytest.raises(AccessDenied, match=r"not enrolled.*dtwz identity enroll"),
    ):
        client.create(8192, b"x")
    assert [objects_on(two, n) for n in two.node_ids] == before  # no key object, nothing
    # unsigned: refused before anything is read
    status, doc = raw(two, "n1", None, "POST", "/keys", stranger.record.encode())
    assert status == 403 and "not signed" in doc["message"]


def test_the_admins_enrollment_capability_enrolls_the_key(two: LocalCluster) -> None:
    newcomer = Identity.generate("newcomer")
    cap = enrollment_capability(two.admin, newcomer.kuid, soon())
    with Client(two.node("n1").url, identity=newcomer, audience="n1", enrollment=cap) as client:
        oid = client.create(8192, b"mine")  # UnknownKey, then POST /keys with the capability
        assert client.info(oid)["kuid"] == newcomer.kuid.hex()
    # known on every node now, with no capability any more
    with Client(two.node("n2").url, identity=newcomer, audience="n2") as client:
        assert client.read(oid, 4096, 4) == b"mine"
        assert client.register_key() is False  # enrolled already: nothing new is stored


def test_an_enrollment_capability_enrolls_its_own_key_only(two: LocalCluster) -> None:
    alice, mallory = Identity.generate("alice"), Identity.generate("mallory")
    for_alice = enrollment_capability(two.admin, alice.kuid, soon())
    text = encode_capability_header(for_alice)
    # mallory presents alice's capability: it does not name mallory's key
    status, doc = raw(two, "n1", mallory, "POST", "/keys", mallory.record.encode(), text)
    assert status == 403 and "not enrolled" in doc["message"]
    # nor does the admin's capability for alice help mallory store alice's key and then
    # sign as alice: the requests are still checked against alice's key
    status, doc = raw(two, "n1", alice, "POST", "/keys", alice.record.encode(), text)
    assert status == 201 and doc["created"] is True
    status, doc = raw(two, "n1", alice, "POST", "/keys", alice.record.encode(), text)
    assert status == 200 and doc["created"] is False  # used again: nothing more
    assert_unknown_everywhere(two, mallory)


@pytest.mark.parametrize(
    ("why", "error"),
    [
        ("expired", CapabilityExpired),
        ("not the admin's", AccessDenied),
        ("delegated", AccessDenied),
        ("read only", AccessDenied),
        ("forged", InvalidCapability),
    ],
)
def test_a_bad_enrollment_capability_is_refused(
    two: LocalCluster, why: str, error: type[AccessDenied]
) -> None:
    newcomer, other = Identity.generate("newcomer"), Identity.generate("other")
    admin = two.admin
    if why == "expired":
        cap = enrollment_capability(admin, newcomer.kuid, int(time.time()) - 1)
    elif why == "not the admin's":
        cap = enrollment_capability(other, newcomer.kuid, soon())
    elif why == "delegated":
        parent = grant(admin, newcomer.kuid, other.kuid, Rights.WRITE | Rights.DELEGATE, soon())
        cap = delegate(other, parent, newcomer.kuid, Rights.WRITE, soon())
    elif why == "read only":
        cap = grant(admin, newcomer.kuid, newcomer.kuid, Rights.READ, soon())
    else:  # signed by someone else under the admin's name
        cap = grant(other, newcomer.kuid, newcomer.kuid, Rights.WRITE, soon())
        cap = type(cap).decode(cap.encode()[:40] + admin.kuid + cap.encode()[56:])
    with (
        Client(two.node("n1").url, identity=newcomer, audience="n1", enrollment=cap) as client,
        pytest.raises(error, match="enrollment capability") as caught,
    ):
        client.register_key()
    if why == "expired":
        assert type(caught.value) is CapabilityExpired
    assert_unknown_everywhere(two, newcomer)


def test_the_admin_may_store_a_key_itself(two: LocalCluster) -> None:
    newcomer = Identity.generate("handed over")
    status, doc = raw(two, "n2", two.admin, "POST", "/keys", newcomer.record.encode())
    assert status == 201 and doc["kuid"] == newcomer.kuid.hex()
    with Client(two.node("n1").url, identity=newcomer, audience="n1") as client:
        client.create(8192, b"x")


def test_open_enrollment_lets_any_key_register(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(2, "--open-enrollment")
    anyone = Identity.generate("anyone")
    with Client(cluster.node("n2").url, identity=anyone, audience="n2") as client:
        oid = client.create(8192, b"open")
    with Client(cluster.node("n1").url, identity=anyone, audience="n1") as client:
        assert client.read(oid, 4096, 4) == b"open"


def test_the_enrolled_keys_are_bounded(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(1, "--open-enrollment", "--max-keys", "3")
    url = cluster.node("n1").url
    for i in range(3):
        with Client(url, identity=Identity.generate(f"k{i}"), audience="n1") as client:
            assert client.register_key() is True
    late = Identity.generate("one too many")
    with (
        Client(url, identity=late, audience="n1") as client,
        pytest.raises(QuotaExceeded, match="at most 3 keys"),
    ):
        client.create(8192, b"x")
    assert_unknown_everywhere(cluster, late)
    with cluster.client("n1") as admin:  # the admin and the nodes are not counted
        admin.create(8192, b"admin")
        assert admin.cluster_status()["quotas"]["keys"] == 3
    # the count is taken from the store again at start
    cluster.stop()
    cluster.start()
    with (
        Client(url, identity=late, audience="n1") as client,
        pytest.raises(QuotaExceeded),
    ):
        client.register_key()
    assert_unknown_everywhere(cluster, late)


def test_a_refused_key_is_not_learnt_by_the_node(two: LocalCluster) -> None:
    """The signature of POST /keys is checked with the key it brings; the node must
    not keep that key unless the key is enrolled."""
    stranger = Identity.generate("stranger")
    for _ in range(2):
        status, _ = raw(two, "n1", stranger, "POST", "/keys", stranger.record.encode())
        assert status == 403
    status, doc = raw(two, "n1", stranger, "GET", f"/objects/{ObjectId(os.urandom(16))}")
    assert (status, doc["error"]) == (401, "UnknownKey")


def test_an_enrolled_key_needs_no_consent_again(two: LocalCluster) -> None:
    """Once enrolled, a key works from a fresh client on any node: a prefetch stream
    (which cannot be sent twice) and a registration without a capability included."""
    who = Identity.generate("enrolled once")
    two.enroll(who, "n1")
    with Client(two.node("n1").url, identity=who, audience="n1") as client:
        root = client.create(8192, b"root")
    # n2 has never seen the key: it learns it from its key object
    with Client(two.node("n2").url, identity=who, audience="n2") as client:
        client.prefetch(root)
        assert client.read(root, 4096, 4) == b"root"
    status, doc = raw(two, "n2", who, "POST", "/keys", who.record.encode())
    assert (status, doc["created"]) == (200, False)
