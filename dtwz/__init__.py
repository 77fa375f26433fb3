"""dtwz: a distributed, data-centric object space in the spirit of Twizzler.

The names below are the public API; ``tests/test_public_api.py`` keeps the list
honest. They load on first use (PEP 562), so importing a pure module such as
``dtwz.format.layout`` does not pull in the client, the store or their libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtwz.client.local import connect
    from dtwz.errors import DtwzError
    from dtwz.format.ids import ZERO_ID, ObjectId, derive_object_id
    from dtwz.format.layout import FotEntry, FotFlags, ObjectFlags, ObjectHeader, Protection
    from dtwz.format.pointers import PersistentPointer, make_pointer, split_pointer
    from dtwz.format.views import F64, I64, U8, U16, U32, U64, Bytes, Layout, Pointer, Ref
    from dtwz.store.objects import StoredObject
    from dtwz.store.store import Store
    from dtwz.store.transaction import DEFAULT_OBJECT_SIZE, Transaction

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Bytes": "dtwz.format.views",
    "DEFAULT_OBJECT_SIZE": "dtwz.store.transaction",
    "DtwzError": "dtwz.errors",
    "F64": "dtwz.format.views",
    "FotEntry": "dtwz.format.layout",
    "FotFlags": "dtwz.format.layout",
    "I64": "dtwz.format.views",
    "Layout": "dtwz.format.views",
    "ObjectFlags": "dtwz.format.layout",
    "ObjectHeader": "dtwz.format.layout",
    "ObjectId": "dtwz.format.ids",
    "PersistentPointer": "dtwz.format.pointers",
    "Pointer": "dtwz.format.views",
    "Protection": "dtwz.format.layout",
    "Ref": "dtwz.format.views",
    "Store": "dtwz.store.store",
    "StoredObject": "dtwz.store.objects",
    "Transaction": "dtwz.store.transaction",
    "U16": "dtwz.format.views",
    "U32": "dtwz.format.views",
    "U64": "dtwz.format.views",
    "U8": "dtwz.format.views",
    "ZERO_ID": "dtwz.format.ids",
    "connect": "dtwz.client.local",
    "derive_object_id": "dtwz.format.ids",
    "make_pointer": "dtwz.format.pointers",
    "split_pointer": "dtwz.format.pointers",
}

__all__ = [
    "DEFAULT_OBJECT_SIZE",
    "F64",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "ZERO_ID",
    "Bytes",
    "DtwzError",
    "FotEntry",
    "FotFlags",
    "Layout",
    "ObjectFlags",
    "ObjectHeader",
    "ObjectId",
    "PersistentPointer",
    "Pointer",
    "Protection",
    "Ref",
    "Store",
    "StoredObject",
    "Transaction",
    "connect",
    "derive_object_id",
    "make_pointer",
    "split_pointer",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dtwz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])  # the public names, loaded or not
