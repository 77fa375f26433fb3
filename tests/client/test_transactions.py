"""``dtwz.client.transactions`` and the pure parts of ``dtwz.client.graph``: ops as
they go on the wire, names kept until they are resolved, no node needed."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import pytest

from dtwz.client import Op, RemoteTransaction, TransactResult
from dtwz.client.graph import code_object
from dtwz.client.transactions import ObjectRef, as_object_id
from dtwz.errors import InvalidArgument, InvalidName
from dtwz.format.ids import ObjectId
from dtwz.format.layout import DATA_START
from dtwz.graph.code import decode_code

A = ObjectId(b"\x0a" * 16)
B = ObjectId(b"\x0b" * 16)


def test_ops_as_json() -> None:
    assert Op.write(A, DATA_START, b"hi").to_json() == {
        "kind": "write",
        "object": A.hex(),
        "offset": DATA_START,
        "data": base64.b64encode(b"hi").decode(),
    }
    assert Op.alloc(A.hex(), 64).to_json() == {"kind": "alloc", "object": A.hex(), "size": 64}
    assert Op.pointer(A, 8, B).to_json()["target_offset"] == DATA_START
    late = Op.name_pointer(A, 8, "/kvs/index").to_json()
    assert late["data"] == base64.b64encode(b"/kvs/index").decode() and "target" not in late


def test_names_are_checked_when_built_and_resolved_when_sent() -> None:
    op = Op.pointer("/a/b", 8, "/c")
    assert op.object_id == "/a/b" and op.target == "/c"
    ids = {"/a/b": A, "/c": B}
    sent = op.resolved(lambda ref: ids[ref] if isinstance(ref, str) else ref)
    assert sent.to_json()["object"] == A.hex() and sent.to_json()["target"] == B.hex()
    with pytest.raises(InvalidName):
        Op.append("/a//../\0", b"x")
    with pytest.raises(InvalidArgument):
        Op.append("not an id", b"x")
    with pytest.raises(InvalidArgument):
        as_object_id("/a/b")  # a name must be resolved first


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[list[Op]] = []

    def transact(self, ops: Sequence[Op]) -> TransactResult:
        self.sent.append(list(ops))
        return TransactResult(list(range(len(ops))), {})


def test_a_remote_transaction_runs_its_ops_once_at_the_end_unless_it_raised() -> None:
    recorder = _Recorder()
    with RemoteTransaction(recorder) as tx:
        assert tx.append(A, b"x") == 0
        assert tx.write_pointer(A, 8, B) == 1
        assert recorder.sent == []
    assert len(recorder.sent) == 1 and tx.result is not None and tx.result.results == [0, 1]
    with pytest.raises(RuntimeError), RemoteTransaction(recorder) as failed:
        failed.alloc(A, 8)
        raise RuntimeError
    assert len(recorder.sent) == 1


def _double(api: object, root: ObjectRef, x: int) -> int:
    return 2 * x


def test_a_code_object_holds_the_functions_source() -> None:
    size, data = code_object(_double)
    assert decode_code(data).entry == "_double" and size >= DATA_START + len(data)
    assert size & (size - 1) == 0  # a power of two
    with pytest.raises(InvalidArgument):
        code_object("def f(): pass")  # source text needs its entry
