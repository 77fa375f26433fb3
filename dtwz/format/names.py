"""The syntax of names, pure: what a path is and which names may be bound.

A name is an absolute path (``/kvs/index``) of components separated by ``/``;
the resolver (``dtwz.resolver``) walks it through directory objects. This
module knows only the text: it lives at the bottom so that anything that takes
"a name or an object ID" (the object service validating a name pointer, the
client, the command line) can check one without the resolver (docs/NAMES.md §1).

Limits (refused with ``InvalidName``): a name component is 1 to 255 bytes of
UTF-8 without ``/``, is not ``.`` or ``..``, and holds no control character
(C0, DEL, C1: NUL, newline, escape...), no line or paragraph separator and no
bidirectional formatting character (the embeddings, overrides and isolates
U+202A-U+202E and U+2066-U+2069, and the marks U+200E, U+200F, U+061C), which
would let a name print as another; a path is at most 4096 bytes and 64
components.

``DIRECTORY_MAGIC`` is here too, the first bytes of every directory object's
data, so that layers below the resolver (the object service refusing raw writes
into directories) can tell a directory without knowing its layout.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from dtwz.errors import InvalidName

__all__ = [
    "DIRECTORY_MAGIC",
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "check_name",
    "is_name",
    "join",
    "split_parent",
    "split_path",
]

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 64
DIRECTORY_MAGIC = b"DTWZDIR\x01"  # a directory object's data starts with it (docs/NAMES.md)

# bidirectional formatting characters: marks, embeddings, overrides, isolates
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# control characters (Cc: C0, DEL, C1) and the line and paragraph separators
_REFUSED_CATEGORIES = frozenset(("Cc", "Zl", "Zp"))


def is_name(ref: str) -> bool:
    """Whether a string given where an object ID may go is a name (it starts with '/')."""
    return ref.startswith("/")


def check_name(name: str) -> str:
    """A name that may be bound in a directory, as given; ``InvalidName`` otherwise."""
    if not isinstance(name, str):
        raise InvalidName(f"a name is a string, got {name!r}")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidName(f"name {name!r} is not valid UTF-8") from exc
    if not raw:
        raise InvalidName("a name cannot be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidName(f"name {name[:40]!r}... is {len(raw)} bytes; at most {MAX_NAME_BYTES}")
    if "/" in name or "\0" in name:
        raise InvalidName(f"name {name!r} holds '/' or NUL")
    for char in name:
        if char in _BIDI or unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise InvalidName(
                f"name {name!r} holds {_describe(char)}: names hold no control, line "
                "separator or bidirectional formatting characters"
            )
    if name in (".", ".."):
        raise InvalidName(f"{name!r} cannot be bound: it means a place on the path")
    return name


def _describe(char: str) -> str:
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'a control character')})"


def split_path(path: str, *, relative: bool = False) -> list[str]:
    """The components of a path: '.' dropped, '..' kept for the walk, slashes collapsed.

    Only absolute paths unless ``relative`` (the text of a symbolic link may be either).
    """
    if not isinstance(path, str):
        raise InvalidName(f"a path is a string, got {path!r}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidName(f"path {path[:60]!r} is not valid UTF-8") from exc
    if not path:
        raise InvalidName("a path cannot be empty")
    if size > MAX_PATH_BYTES:
        raise InvalidName(f"path of {size} bytes is too long; at most {MAX_PATH_BYTES}")
    if not relative and not path.startswith("/"):
        raise InvalidName(f"a name is an absolute path starting with '/', got {path[:60]!r}")
    parts = [p for p in path.split("/") if p and p != "."]
    if len(parts) > MAX_DEPTH:
        raise InvalidName(f"path has {len(parts)} components; at most {MAX_DEPTH}")
    for part in parts:
        if part != "..":
            check_name(part)
    return parts


def split_parent(path: str) -> tuple[str, str]:
    """``(parent path, last name)`` of a path that names something bindable."""
    parts = split_path(path)
    if not parts:
        raise InvalidName("the root directory has no name to bind or unbind")
    if parts[-1] == "..":
        raise InvalidName(f"{path!r} ends with '..': name the entry itself")
    return join(parts[:-1]), parts[-1]


def join(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)
