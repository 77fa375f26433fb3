"""Fixtures of the client tests: fake nodes, for what a real node cannot be made to do."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator

import pytest

from dtwz.client import Client

FakeNode = Callable[[type[http.server.BaseHTTPRequestHandler]], Client]
"""What the ``fake_node`` fixture gives: ``fake_node(handler)``, a client of a server
answering with ``handler``."""


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    """Start HTTP servers that misbehave on purpose; each comes with a client of it.
    Servers and clients are closed at teardown."""
    stack = contextlib.ExitStack()

    def start(handler: type[http.server.BaseHTTPRequestHandler]) -> Client:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

        stack.callback(stop)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        return stack.enter_context(Client(url, timeout=5.0))

    with stack:
        yield start
