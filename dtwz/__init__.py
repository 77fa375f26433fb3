"""dtwz: a distributed, data-centric object space in the spirit of Twizzler.

The names below are the public API; ``tests/test_public_api.py`` keeps the list
honest.
"""

from dtwz.cluster import connect
from dtwz.errors import DtwzError
from dtwz.ids import ZERO_ID, ObjectId, derive_object_id
from dtwz.layout import FotEntry, FotFlags, ObjectFlags, ObjectHeader, Protection
from dtwz.node.objects import StoredObject
from dtwz.node.store import Store
from dtwz.node.transaction import DEFAULT_OBJECT_SIZE, Transaction
from dtwz.pointers import PersistentPointer, make_pointer, split_pointer
from dtwz.views import F64, I64, U8, U16, U32, U64, Bytes, Layout, Pointer, Ref

__version__ = "0.1.0"

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
