"""Code objects: a Python function stored as the data of an ordinary dtwz object.

A code object is created IMMUTABLE, so it can be copied to any node and never
goes stale. Its data area holds (docs/GRAPH.md, "Code objects"), little-endian::

    magic "DTWZCODE" | format u16 | entry length u16 | source length u32
    | entry name (UTF-8) | source (UTF-8)

and nothing after the source. This module is pure (no I/O): ``encode_code`` and
``decode_code`` turn a ``CodeBody`` into bytes and back. A ``CodeBody`` checks
itself when built: its source compiles and defines its entry function at top
level, so no code object that cannot run is ever written, and anything
malformed read back is a ``CodeError`` that says what is wrong.
"""

from __future__ import annotations

import ast
import inspect
import keyword
import struct
import textwrap
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dtwz.errors import CodeError

__all__ = [
    "CODE_FORMAT",
    "CODE_HEADER_SIZE",
    "CODE_MAGIC",
    "MAX_SOURCE_BYTES",
    "CodeBody",
    "code_from_function",
    "decode_code",
    "encode_code",
]

CODE_MAGIC = b"DTWZCODE"
CODE_FORMAT = 1
_HEADER = struct.Struct("<8sHHI")
CODE_HEADER_SIZE = _HEADER.size  # 16
# Far above any function worth shipping, far below the 64 MiB worker frame limit:
# every node that decodes a code object compiles it, so its size is bounded here.
MAX_SOURCE_BYTES = 4 << 20
_MAX_ENTRY_BYTES = 255


@dataclass(frozen=True, slots=True)
class CodeBody:
    """The function a code object holds: Python ``source`` defining ``entry`` at top
    level, called as ``entry(api, root_object_id, *args)``. Checked when built."""

    source: str
    entry: str

    def __post_init__(self) -> None:
        if not isinstance(self.entry, str) or not isinstance(self.source, str):
            raise CodeError("a code body's source and entry must be strings")
        if not self.entry.isidentifier() or keyword.iskeyword(self.entry):
            raise CodeError(f"entry {self.entry!r} is not a valid Python identifier")
        if len(self.entry.encode("utf-8")) > _MAX_ENTRY_BYTES:
            raise CodeError(f"entry name is longer than {_MAX_ENTRY_BYTES} bytes")
        try:
            raw = self.source.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates
            raise CodeError(f"source is not valid Unicode text: {exc}") from exc
        if len(raw) > MAX_SOURCE_BYTES:
            raise CodeError(f"source is {len(raw)} bytes; at most {MAX_SOURCE_BYTES} allowed")
        tree = _compile_checked(self.source, f"<dtwz code {self.entry}>")
        kinds = {
            type(node) for node in tree.body if isinstance(node, _DEFS) and node.name == self.entry
        }
        if not kinds:
            raise CodeError(f"the source defines no top-level function {self.entry!r}")
        if kinds != {ast.FunctionDef}:
            raise CodeError(f"entry {self.entry!r} must be a plain (not async) function")

    def encode(self) -> bytes:
        """The code object's data bytes."""
        entry = self.entry.encode("utf-8")
        source = self.source.encode("utf-8")
        return _HEADER.pack(CODE_MAGIC, CODE_FORMAT, len(entry), len(source)) + entry + source


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


def encode_code(source: str, entry: str) -> bytes:
    """The data of a code object holding ``source`` with entry function ``entry``
    (``CodeError`` if the source does not compile or does not define it)."""
    return CodeBody(source, entry).encode()


def decode_code(data: bytes | bytearray | memoryview) -> CodeBody:
    """The function held by a code object's data (``CodeError`` for anything malformed)."""
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    if len(view) < CODE_HEADER_SIZE:
        raise CodeError(
            f"not a code object: {len(view)} bytes, shorter than its {CODE_HEADER_SIZE}-byte header"
        )
    magic, version, entry_len, source_len = _HEADER.unpack_from(view, 0)
    if magic != CODE_MAGIC:
        raise CodeError(f"not a code object: magic {bytes(magic)!r}, expected {CODE_MAGIC!r}")
    if version != CODE_FORMAT:
        raise CodeError(f"code object format {version} is not supported (this is {CODE_FORMAT})")
    if source_len > MAX_SOURCE_BYTES:
        raise CodeError(f"code object source is {source_len} bytes; at most {MAX_SOURCE_BYTES}")
    end = CODE_HEADER_SIZE + entry_len + source_len
    if end > len(view):
        raise CodeError(
            f"code object lengths (entry {entry_len}, source {source_len}) run past "
            f"its {len(view)} bytes"
        )
    if end < len(view):
        # the header fixes the size exactly: extra bytes mean a wrong read or damage
        raise CodeError(f"code object has {len(view) - end} bytes after its source")
    entry = _utf8(view[CODE_HEADER_SIZE : CODE_HEADER_SIZE + entry_len], "entry name")
    source = _utf8(view[CODE_HEADER_SIZE + entry_len : end], "source")
    return CodeBody(source, entry)


def code_from_function(fn: Callable[..., Any]) -> CodeBody:
    """The code body of a self-contained plain function, from its source file.

    Only the function's own source travels: names it uses must be builtins or be
    imported inside it. Lambdas, closures over local names, decorated functions,
    methods and callables without source are refused with ``CodeError``.
    """
    if not isinstance(fn, types.FunctionType):
        raise CodeError(f"only plain functions can be shipped, not {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise CodeError("a lambda cannot be shipped: define it with def")
    if fn.__code__.co_freevars:
        names = ", ".join(fn.__code__.co_freevars)
        raise CodeError(f"{fn.__qualname__} closes over non-global names ({names})")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise CodeError(f"the source of {fn.__qualname__} is not available: {exc}") from exc
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise CodeError(f"the source of {fn.__qualname__} does not parse alone: {exc}") from exc
    defs = [node for node in tree.body if isinstance(node, _DEFS)]
    if len(defs) == 1 and defs[0].decorator_list:
        # the decorator would be missing (or run differently) where the code runs
        raise CodeError(f"{fn.__qualname__} is decorated: ship the undecorated function")
    return CodeBody(source, fn.__name__)


def _utf8(raw: memoryview, what: str) -> str:
    try:
        return str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise CodeError(f"code object {what} is not valid UTF-8: {exc}") from exc


def _compile_checked(source: str, filename: str) -> ast.Module:
    """Parse and fully compile ``source`` (the compiler catches what the parser lets
    through, such as ``return`` outside a function); its syntax tree."""
    try:
        # warnings about the code (invalid escapes, `is` with a literal) are the
        # author's business; under "warnings as errors" they would fail the compile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename)
            compile(tree, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise CodeError(f"source does not compile: {exc}") from exc
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        # null bytes (ValueError); nesting too deep for the parser or compiler
        why = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} (too deep?)"
        raise CodeError(f"source does not compile: {why}") from exc
    return tree


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a call returned (JSON), its counters and the seconds the function ran."""

    result: Any
    stats: dict[str, int]
    elapsed: float
