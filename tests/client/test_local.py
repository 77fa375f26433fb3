"""``dtwz.client.local``: how ``dtwz.connect()`` finds a node and an identity through
the local cluster folder, without starting one (``tests/cli`` starts real ones)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtwz
from dtwz.client import local
from dtwz.errors import ClusterError
from dtwz.node import launcher
from dtwz.security import keyfiles
from dtwz.security.keys import Identity


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "node_id": "n2"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def healthy_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DTWZ_CLUSTER", str(tmp_path))
    monkeypatch.delenv("DTWZ_NODE", raising=False)
    monkeypatch.delenv("DTWZ_IDENTITY", raising=False)
    return tmp_path


def _write(folder: Path, doc: Any) -> None:
    (folder / local.CLUSTER_FILE).write_text(json.dumps(doc))


def test_connect_is_one_function_under_its_old_names() -> None:
    assert dtwz.connect is local.connect
    assert launcher.connect is local.connect
    assert launcher.default_identity is local.default_identity


def test_no_folder_is_a_clear_error(folder: Path) -> None:
    with pytest.raises(ClusterError, match="dtwz cluster up"):
        local.connect()


def test_the_first_node_that_answers_is_chosen(folder: Path, healthy_url: str) -> None:
    _write(folder, {"nodes": [{"url": "http://127.0.0.1:9"}, {"url": healthy_url}]})
    with local.connect() as client:
        assert client.url == healthy_url
        assert client.identity is None  # no $DTWZ_IDENTITY, no admin in the folder


def test_a_folder_whose_nodes_are_all_down(folder: Path) -> None:
    _write(folder, {"nodes": [{"url": "http://127.0.0.1:9"}]})
    with pytest.raises(ClusterError, match="answers"):
        local.connect()


@pytest.mark.parametrize(
    ("text", "why"),
    [("{", "not a cluster description"), ('{"nodes": []}', "lists no nodes"), ("[]", "nodes")],
)
def test_a_malformed_cluster_file_is_a_clear_error(folder: Path, text: str, why: str) -> None:
    (folder / local.CLUSTER_FILE).write_text(text)
    with pytest.raises(ClusterError, match=why):
        local.read_cluster_file(folder)
    with pytest.raises(ClusterError, match=why):
        launcher.LocalCluster.load(folder)


def test_the_identity_is_the_env_one_else_the_folders_admin(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local.default_identity() is None
    admin = Identity.generate("admin")
    path = keyfiles.admin_identity_file(folder / local.KEYS_DIR)
    path.parent.mkdir(parents=True)
    admin.save(path)
    assert getattr(local.default_identity(), "kuid", None) == admin.kuid
    mine = Identity.generate("me")
    mine.save(folder / "me.id")
    monkeypatch.setenv("DTWZ_IDENTITY", str(folder / "me.id"))
    assert getattr(local.default_identity(), "kuid", None) == mine.kuid
