"""The code object format (dtwz.graph.code): round trips and every malformed case."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtwz.errors import CodeError
from dtwz.graph.code import (
    CODE_FORMAT,
    CODE_HEADER_SIZE,
    CODE_MAGIC,
    MAX_SOURCE_BYTES,
    CodeBody,
    code_from_function,
    decode_code,
    encode_code,
)

SOURCE = "def walk(api, root, limit=10):\n    return [root.hex(), limit]\n"


def raw(
    entry: bytes,
    source: bytes,
    *,
    magic: bytes = CODE_MAGIC,
    version: int = CODE_FORMAT,
    entry_len: int | None = None,
    source_len: int | None = None,
) -> bytes:
    """Code object bytes built by hand, lengths overridable."""
    header = struct.pack(
        "<8sHHI",
        magic,
        version,
        len(entry) if entry_len is None else entry_len,
        len(source) if source_len is None else source_len,
    )
    return header + entry + source


# -- round trips -------------------------------------------------------------------------


def test_layout_is_the_documented_one() -> None:
    data = encode_code(SOURCE, "walk")
    assert CODE_HEADER_SIZE == 16
    assert data[:8] == b"DTWZCODE"
    assert struct.unpack_from("<HHI", data, 8) == (1, 4, len(SOURCE.encode()))
    assert data[16:20] == b"walk"
    assert data[20:] == SOURCE.encode()
    assert data == raw(b"walk", SOURCE.encode())


@pytest.mark.parametrize(
    ("source", "entry"),
    [
        (SOURCE, "walk"),
        ("def f(api, root):\n    return 'ünïcødé ✓'\n", "f"),
        ("import math\n\nX = 2\n\ndef g(a, r): return math.pi * X\n\ndef h(): pass\n", "h"),
        ("# -*- coding: utf-8 -*-\ndef _private(api, root): ...\n", "_private"),
        ("def ƒ(api, root):\n    return 1\n", "ƒ"),
    ],
)
def test_round_trip(source: str, entry: str) -> None:
    body = decode_code(encode_code(source, entry))
    assert body == CodeBody(source, entry)
    assert body.encode() == encode_code(source, entry)


def test_decode_takes_memoryviews_and_bytearrays() -> None:
    data = encode_code(SOURCE, "walk")
    assert decode_code(memoryview(data)) == decode_code(bytearray(data)) == CodeBody(SOURCE, "walk")
    assert decode_code(memoryview(data).cast("c")).entry == "walk"


def test_body_is_frozen() -> None:
    body = CodeBody(SOURCE, "walk")
    with pytest.raises(AttributeError):
        body.entry = "other"  # type: ignore[misc]


# -- malformed bytes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "shorter than its 16-byte header"),
        (CODE_MAGIC, "shorter than its 16-byte header"),
        (raw(b"walk", SOURCE.encode(), magic=b"DTWZCOD3"), "magic"),
        (raw(b"walk", SOURCE.encode(), version=2), "format 2 is not supported"),
        (raw(b"walk", SOURCE.encode(), version=0), "format 0 is not supported"),
        (raw(b"walk", SOURCE.encode(), entry_len=5000), "run past"),
        (raw(b"walk", SOURCE.encode(), source_len=len(SOURCE) + 1), "run past"),
        (raw(b"walk", SOURCE.encode(), source_len=MAX_SOURCE_BYTES + 1), "at most"),
        (raw(b"walk", SOURCE.encode(), source_len=0xFFFFFFFF), "at most"),
        (raw(b"walk", SOURCE.encode()) + b"\0", "1 bytes after its source"),
        (raw(b"walk", SOURCE.encode(), source_len=len(SOURCE) - 3), "3 bytes after"),
        (raw(b"wa\xfflk", SOURCE.encode()), "entry name is not valid UTF-8"),
        (raw(b"walk", b"def walk(a, r):\n    return '\xc3'\n"), "source is not valid UTF-8"),
        (raw(b"walk", b"x = '\xed\xa0\x80'\ndef walk(a, r): pass\n"), "not valid UTF-8"),
        (raw(b"", SOURCE.encode()), "not a valid Python identifier"),
        (raw(b"wa lk", SOURCE.encode()), "not a valid Python identifier"),
        (raw(b"1walk", SOURCE.encode()), "not a valid Python identifier"),
        (raw(b"def", SOURCE.encode()), "not a valid Python identifier"),
        (raw(b"walk", b"def walk(api, root)\n    return 1\n"), "does not compile"),
        (raw(b"walk", b"return 1\ndef walk(a, r): pass\n"), "does not compile"),
        (raw(b"walk", b"def walk(a, r): pass\nx = '\0'\n"), "does not compile"),
        (raw(b"walk", b"x = " + b"(" * 300 + b")" * 300 + b"\ndef walk(a, r): pass\n"), "compile"),
        (raw(b"walk", b"def other(api, root): pass\n"), "no top-level function 'walk'"),
        (raw(b"walk", b"walk = lambda api, root: 1\n"), "no top-level function 'walk'"),
        (raw(b"walk", b"class walk:\n    pass\n"), "no top-level function 'walk'"),
        (raw(b"walk", b"def outer():\n    def walk(a, r): pass\n"), "no top-level function"),
        (raw(b"walk", b"if True:\n    def walk(a, r): pass\n"), "no top-level function"),
        (raw(b"walk", b"async def walk(api, root): pass\n"), "plain (not async) function"),
    ],
)
def test_malformed_code_objects_are_code_errors(data: bytes, says: str) -> None:
    with pytest.raises(CodeError) as caught:
        decode_code(data)
    assert says in str(caught.value)


def test_warnings_in_the_source_do_not_fail_it() -> None:
    # an invalid escape warns at compile time; under "warnings as errors" it must not
    # turn a valid function into a CodeError
    source = 'def walk(api, root):\n    return "\\d" if 1 is 1 else None\n'
    assert decode_code(encode_code(source, "walk")).source == source


@pytest.mark.parametrize(
    ("source", "entry", "says"),
    [
        ("def walk(a, r): pass\n", "walk!", "not a valid Python identifier"),
        ("def walk(a, r): pass\n", "x" * 256, "longer than 255 bytes"),
        ("def walk(a, r) pass\n", "walk", "does not compile"),
        ("def other(a, r): pass\n", "walk", "no top-level function"),
        ("x = '\ud800'\ndef walk(a, r): pass\n", "walk", "not valid Unicode"),
        ("#" * MAX_SOURCE_BYTES + "\ndef walk(a, r): pass\n", "walk", "at most"),
    ],
)
def test_encode_refuses_what_decode_would(source: str, entry: str, says: str) -> None:
    with pytest.raises(CodeError) as caught:
        encode_code(source, entry)
    assert says in str(caught.value)


@given(st.binary(max_size=CODE_HEADER_SIZE + 64))
@settings(max_examples=300)
def test_arbitrary_bytes_decode_or_raise_code_error(data: bytes) -> None:
    with contextlib.suppress(CodeError):
        decode_code(data)


@given(data=st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_code_objects_decode_or_raise_code_error(data: st.DataObject) -> None:
    original = bytearray(encode_code(SOURCE, "walk"))
    mutated = data.draw(
        st.one_of(
            _flips(original),
            _splices(original),
            st.just(bytes(original[: data.draw(st.integers(0, len(original)))])),
        )
    )
    try:
        body = decode_code(mutated)
    except CodeError:
        return
    # whatever still decodes is a body that is valid in its own right
    assert decode_code(body.encode()) == body


def _flips(original: bytearray) -> st.SearchStrategy[bytes]:
    def flip(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(original)
        for at, value in changes:
            out[at % len(out)] = value
        return bytes(out)

    return st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8
    ).map(flip)


def _splices(original: bytearray) -> st.SearchStrategy[bytes]:
    def splice(args: tuple[int, int, bytes]) -> bytes:
        at, cut, insert = args
        at %= len(original) + 1
        return bytes(original[:at] + insert + original[at + cut :])

    return st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.binary(max_size=8)).map(splice)


# -- from functions ----------------------------------------------------------------------


def shippable(api: Any, root: Any, *args: Any) -> list[Any]:
    """A self-contained function: what code_from_function accepts."""
    import json

    return json.loads(json.dumps([root.hex(), *args]))


def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


@decorator
def decorated(api: Any, root: Any) -> None:
    pass


def test_code_from_a_module_function() -> None:
    body = code_from_function(shippable)
    assert body.entry == "shippable"
    assert body.source.startswith("def shippable(api: Any, root: Any, *args: Any)")
    assert decode_code(body.encode()) == body


def test_code_from_a_nested_function_is_dedented() -> None:
    def nested(api, root):  # type: ignore[no-untyped-def]
        return 42

    body = code_from_function(nested)
    assert body.source.startswith("def nested(api, root):")
    namespace: dict[str, Any] = {}
    exec(compile(body.source, "<test>", "exec"), namespace)
    assert namespace["nested"](None, None) == 42


def test_code_from_function_refusals() -> None:
    outer = 3

    def closure(api, root):  # type: ignore[no-untyped-def]
        return outer

    class Walker:
        def method(self, api: Any, root: Any) -> None:
            pass

    cases: list[tuple[Any, str]] = [
        (lambda api, root: 1, "lambda"),
        (closure, "closes over non-global names (outer)"),
        (decorated, "decorated"),
        (Walker().method, "only plain functions"),
        (len, "only plain functions"),
        (Walker, "only plain functions"),
    ]
    for fn, says in cases:
        with pytest.raises(CodeError) as caught:
            code_from_function(fn)
        assert says in str(caught.value), fn


def test_code_from_a_function_without_source() -> None:
    namespace: dict[str, Any] = {}
    exec("def made(api, root):\n    return 1\n", namespace)
    with pytest.raises(CodeError, match="source of made is not available"):
        code_from_function(namespace["made"])


def test_a_run_carries_its_callers_capabilities() -> None:
    """``RunCode`` carries the caller's kuid and capabilities (docs/SECURITY.md §11):
    they decode to the same ``Caller``; anything else is refused."""
    from dtwz.errors import InvalidArgument
    from dtwz.format.ids import ObjectId
    from dtwz.graph.execute import MAX_CAPABILITIES, caller_of
    from dtwz.security.capabilities import Rights, grant
    from dtwz.security.keys import Identity

    owner, who = Identity.generate("owner"), Identity.generate("who")
    caps = tuple(
        grant(owner, ObjectId(bytes([i]) * 16), who.kuid, Rights.READ, 2**40) for i in range(3)
    )
    caller = caller_of(who.kuid, [c.encode() for c in caps])
    assert caller.kuid == who.kuid and caller.capabilities == caps
    assert caller_of(caller.kuid, caller.encoded()) == caller
    with pytest.raises(InvalidArgument, match="does not decode"):
        caller_of(who.kuid, [b"not a capability"])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_CAPABILITIES}"):
        caller_of(who.kuid, [caps[0].encode()] * (MAX_CAPABILITIES + 1))
