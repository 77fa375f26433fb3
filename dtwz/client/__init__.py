"""The Python client of a dtwz cluster (docs/ARCHITECTURE.md).

``dtwz.connect()`` gives a ``Client``; everything a user touches is re-exported
here, so ``from dtwz.client import Client`` is the path to use. The modules, from
the bottom up:

- ``transport``: connections to one node, retries, the node's errors raised again;
- ``auth``: the channel requests go through, signed or in a session;
- ``transactions``: ``Op``, ``TransactResult``, ``RemoteTransaction``;
- ``graph``: walks, prefetch, migration and code runs, over the channel;
- ``api``: ``Client``, the methods a user calls, and its cache of copies;
- ``local``: ``connect()``, which finds a node through the local cluster folder.
"""

from dtwz.client.api import Binding, Client, ObjectLocation
from dtwz.client.auth import identity_from_env
from dtwz.client.graph import PrefetchResult
from dtwz.client.local import connect, default_identity
from dtwz.client.transactions import ObjectRef, Op, RemoteTransaction, TransactResult
from dtwz.client.transport import DEFAULT_TIMEOUT

__all__ = [
    "DEFAULT_TIMEOUT",
    "Binding",
    "Client",
    "ObjectLocation",
    "ObjectRef",
    "Op",
    "PrefetchResult",
    "RemoteTransaction",
    "TransactResult",
    "connect",
    "default_identity",
    "identity_from_env",
]
