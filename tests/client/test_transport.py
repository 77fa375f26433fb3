"""``dtwz.client.transport`` against nodes that fail on purpose: one that is not
there, one that never answers, one that drops connections and answers; and the
one place the node's error documents become exceptions."""

from __future__ import annotations

import http.server
import json
import re
import socket
from typing import Any

import pytest

from dtwz.client import Client, Op
from dtwz.client.transport import Response, error_from
from dtwz.errors import ClusterError, HomeUnreachable, PeerUnavailable
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from tests.client.conftest import FakeNode


def test_an_unreachable_node_is_a_clear_error_with_its_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", timeout=2.0) as client,
        pytest.raises(PeerUnavailable, match=re.escape(f"127.0.0.1:{port}")),
    ):
        client.read(ObjectId(bytes(16)))


@pytest.mark.timeout(30)
def test_a_silent_node_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        with Client(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) as client:
            with pytest.raises(PeerUnavailable, match=r"no answer within 0\.5s"):
                client.cluster_status()
            with pytest.raises(PeerUnavailable):  # a mutation is retried once, then fails
                client.write(ObjectId(bytes(16)), DATA_START, b"x")


class _FlakyNode(http.server.BaseHTTPRequestHandler):
    """Closes every connection after one answer (as if its keep-alive timer ran out)
    and drops the first request of each transaction ID without answering."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str]] = []  # (method and path, transaction ID)

    def _answer(self, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # no "Connection: close": the client believes it may reuse it
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:
        self.seen.append((f"GET {self.path}", ""))
        self._answer({"status": "ok", "node_id": "flaky"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        is_transact = self.path == "/transact"
        txn = json.loads(body)["txn_id"] if is_transact else self.headers["X-Dtwz-Txn"]
        request = (f"POST {self.path.split('?')[0]}", txn)
        first = request not in self.seen
        self.seen.append(request)
        if first:
            self.close_connection = True  # applied, say, but the answer is lost
        elif is_transact:
            self._answer({"results": [DATA_START], "versions": {}})
        else:
            self._answer({"id": "11" * 16})

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_retries_after_connection_errors_reuse_the_transaction_id(fake_node: FakeNode) -> None:
    _FlakyNode.seen = []
    client = fake_node(_FlakyNode)
    assert client.health()["node_id"] == "flaky"
    assert client.health()["node_id"] == "flaky"  # the kept connection was closed
    assert client.create(8192) == ObjectId(b"\x11" * 16)
    oid = ObjectId(b"\x22" * 16)
    assert client.transact([Op.append(oid, b"x")]).results == [DATA_START]
    for what in ("POST /objects", "POST /transact"):
        txns = [txn for request, txn in _FlakyNode.seen if request == what]
        assert len(txns) == 2 and txns[0] == txns[1] and len(txns[0]) == 32, what


def test_error_json_from_a_node_keeps_its_class() -> None:
    body = json.dumps({"error": "HomeUnreachable", "message": "n9 is down"}).encode()
    error = error_from(Response(503, {}, body), "http://x")
    assert type(error) is HomeUnreachable and str(error) == "n9 is down"
    unknown = error_from(Response(500, {}, b"<html>oops</html>"), "http://x")
    assert type(unknown) is ClusterError and "HTTP 500" in str(unknown)
