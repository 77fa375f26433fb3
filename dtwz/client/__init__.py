"""The Python client of a dtwz cluster (docs/ARCHITECTURE.md).

``dtwz.connect()`` gives a ``Client``; everything a user touches is re-exported
here, so ``from dtwz.client import Client`` is the path to use.
"""

from dtwz.client.api import (
    DEFAULT_TIMEOUT,
    Binding,
    Client,
    ObjectLocation,
    ObjectRef,
    Op,
    RemoteTransaction,
    TransactResult,
    identity_from_env,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "Binding",
    "Client",
    "ObjectLocation",
    "ObjectRef",
    "Op",
    "RemoteTransaction",
    "TransactResult",
    "identity_from_env",
]
