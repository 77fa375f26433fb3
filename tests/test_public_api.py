"""The public API: ``dtwz.__all__`` is exactly what the package exports."""

from __future__ import annotations

import inspect
import re

import dtwz
from dtwz import errors


def exported_names() -> set[str]:
    return {
        name
        for name in dir(dtwz)
        if not name.startswith("_") and not inspect.ismodule(getattr(dtwz, name))
    }


def test_all_lists_exactly_the_exported_names() -> None:
    assert len(dtwz.__all__) == len(set(dtwz.__all__)), "duplicates in __all__"
    assert set(dtwz.__all__) == exported_names()


def test_every_name_in_all_exists() -> None:
    for name in dtwz.__all__:
        assert getattr(dtwz, name) is not None, name


def test_star_import_gives_the_same_names() -> None:
    namespace: dict[str, object] = {}
    exec("from dtwz import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(dtwz.__all__)


def test_core_names_are_the_documented_ones() -> None:
    for name in [
        "ObjectId",
        "FotEntry",
        "PersistentPointer",
        "ObjectHeader",
        "Store",
        "Transaction",
        "DtwzError",
        "Layout",
        "U64",
        "Pointer",
        "Bytes",
    ]:
        assert name in dtwz.__all__
    assert isinstance(dtwz.__version__, str)


def test_the_error_tree_is_the_one_drawn_in_the_docstring() -> None:
    doc = errors.__doc__ or ""
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│ ]\s*)*(?:[├└]── )?)([A-Z]\w+)\b", line)
        if not match or not hasattr(errors, match.group(2)):
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            drawn[name] = stack[-1][1]
        stack.append((depth, name))
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.DtwzError)
    }
    assert drawn, "no tree found in the errors docstring"
    for name, parent in drawn.items():
        assert classes[name].__bases__[0] is classes[parent], name
    # every error class is drawn, under its first base; the root heads the drawing
    assert set(classes) - set(drawn) == {"DtwzError"}
    assert issubclass(errors.InvalidArgument, ValueError)
    assert issubclass(errors.CorruptObject, errors.FormatError)
