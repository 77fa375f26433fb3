"""What every ``dtwz`` command shares: argument types, the configuration the root
group and the ``remote`` group hand to their commands, output helpers and the
group that turns every failure into one ``error: ...`` line and an exit status.

Exit status 2 means bad input (usage, malformed values, offsets outside the
object); 1 means a refusal at run time (no store, no such object, corrupt data,
full or immutable object, a pointer that cannot be followed, an unreachable
node); 130 an interrupt.

Output is a few readable lines or, with ``--json`` (on the root group or on the
command), exactly one JSON document: ``CliConfig.emit`` decides which.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import click

from dtwz.client.api import Client, ObjectRef
from dtwz.errors import DtwzError, InvalidArgument
from dtwz.format.ids import ObjectId
from dtwz.format.layout import FotFlags, ObjectFlags, Protection
from dtwz.format.layout import size_log2 as check_object_size
from dtwz.format.names import is_name, split_path
from dtwz.node import launcher as local_cluster
from dtwz.security.auth import decode_capability_header
from dtwz.store.store import Store

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_STORE = "./data/store"
DEFAULT_NODE_URL = "http://127.0.0.1:7000"
DEFAULT_CLUSTER_DIR = "./data/cluster"

# -- argument types ----------------------------------------------------------------


class ObjectIdParam(click.ParamType[ObjectId]):
    name = "OID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ObjectId):
            return value
        try:
            return ObjectId.parse(str(value))
        except DtwzError as exc:
            self.fail(str(exc), param, ctx)


class ObjectRefParam(click.ParamType[ObjectRef]):
    """An object ID (32 hex digits) or a name of the namespace (an absolute path)."""

    name = "OID|NAME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, ObjectId):
            return value
        text = str(value)
        try:
            if is_name(text):
                split_path(text)
                return text
            return ObjectId.parse(text)
        except DtwzError as exc:
            self.fail(f"{exc} (an object is 32 hex digits or a name like /kvs/index)", param, ctx)


class OffsetParam(click.ParamType[int]):
    """A non-negative integer, decimal or ``0x`` hex."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace("_", "")
        try:
            number = int(text[2:], 16) if text.startswith("0x") else int(text, 10)
        except ValueError:
            self.fail(f"{value!r} is not a decimal or 0x-hex number", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return number


class SizeParam(click.ParamType[int]):
    """An object size: 4096, 64K, 1M, 1G (KiB units), a power of two from 4K to 1G."""

    name = "SIZE"
    _pattern = re.compile(r"(?P<number>0x[0-9a-f]+|[0-9]+) *(?P<unit>[kmg]?)(?:i?b)?")
    _shifts = {"": 0, "k": 10, "m": 20, "g": 30}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        match = self._pattern.fullmatch(str(value).strip().lower())
        if match is None:
            self.fail(f"{value!r} is not a size like 4096, 64K, 1M or 1G", param, ctx)
        number = int(match["number"], 0) << self._shifts[match["unit"]]
        try:
            check_object_size(number)
        except InvalidArgument as exc:
            self.fail(str(exc), param, ctx)
        return number


class ProtParam(click.ParamType[Protection]):
    """Rights as letters from ``rwx`` (``-`` or ``none`` for no rights)."""

    name = "RWX"
    _letters = {"r": Protection.READ, "w": Protection.WRITE, "x": Protection.EXEC}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Protection):
            return value
        text = str(value).strip().lower()
        prot = Protection.NONE
        if text not in ("-", "none"):
            if not text or len(set(text)) != len(text) or not set(text) <= set(self._letters):
                self.fail(f"{value!r} is not a set of letters from 'rwx'", param, ctx)
            for letter in text:
                prot |= self._letters[letter]
        return prot


OID = ObjectIdParam()
REF = ObjectRefParam()
OFFSET = OffsetParam()
SIZE = SizeParam()
PROT = ProtParam()

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)

# -- what the groups hand to their commands -----------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CliConfig:
    """What the root group's options say; every command receives it."""

    store: Path
    json: bool

    def open_store(self) -> Store:
        return Store.open(self.store)

    def emit(self, as_json: bool, doc: dict[str, Any], text: str) -> None:
        """One JSON document with ``--json`` (global or per command), else ``text``."""
        click.echo(json.dumps(doc) if self.json or as_json else text)


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteConfig:
    """What the ``remote`` and ``graph`` groups' options say: which node, how long to
    wait, which capabilities to send; ``client()`` connects with them.

    The identity that signs is ``$DTWZ_IDENTITY``, else the admin of the local
    cluster. Without ``--node``: the local cluster in ``$DTWZ_CLUSTER`` (or
    ./data/cluster) when ``dtwz cluster up`` ran there, else ``DEFAULT_NODE_URL``.
    """

    base: CliConfig
    url: str | None
    timeout: float
    capabilities: tuple[str, ...] = ()

    def client(self) -> Client:
        client = self._client()
        for text in self.capabilities:
            client.add_capability(decode_capability_header(text))
        return client

    def _client(self) -> Client:
        identity = local_cluster.default_identity()  # $DTWZ_IDENTITY, else the local admin
        if self.url is not None:
            return Client(self.url, timeout=self.timeout, identity=identity)
        folder = Path(os.environ.get("DTWZ_CLUSTER", DEFAULT_CLUSTER_DIR))
        if (folder / local_cluster.CLUSTER_FILE).exists():  # `dtwz cluster up` ran here
            return local_cluster.connect(timeout=self.timeout, identity=identity)
        return Client(DEFAULT_NODE_URL, timeout=self.timeout, identity=identity)

    def emit(self, as_json: bool, doc: dict[str, Any], text: str) -> None:
        self.base.emit(as_json, doc, text)

    @property
    def json(self) -> bool:
        return self.base.json


pass_config = click.make_pass_decorator(CliConfig)
pass_remote = click.make_pass_decorator(RemoteConfig)


def base_config(ctx: click.Context) -> CliConfig:
    """The root group's configuration, or the defaults when a group runs on its own."""
    return ctx.find_object(CliConfig) or CliConfig(Path("."), False)


# -- errors -------------------------------------------------------------------------


def fail(message: str, code: int) -> int:
    """Print one ``error: ...`` line on stderr; return ``code`` for the caller to exit with."""
    click.echo(f"error: {' '.join(message.split()) or 'unknown error'}", err=True)
    return code


def bad_parameter(param_hint: str, message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=f"'{param_hint}'")


class DtwzGroup(click.Group):
    """A click group whose failures end as one ``error: ...`` line, never a traceback."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
            code = result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
            code = fail("no command given", EXIT_USAGE)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            code = fail(exc.format_message().rstrip(".") + hint, exc.exit_code)
        except click.ClickException as exc:
            code = fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            code = fail("interrupted", EXIT_INTERRUPTED)
        except InvalidArgument as exc:
            code = fail(str(exc), EXIT_USAGE)
        except DtwzError as exc:
            code = fail(str(exc), EXIT_RUNTIME)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            code = fail(f"{exc.strerror or exc}{where}", EXIT_RUNTIME)
        sys.exit(code)


# -- input and output ---------------------------------------------------------------


def read_data(text: str | None, file: BinaryIO | None, *, stdin_default: bool) -> bytes | None:
    """The bytes a command writes: DATA as text, ``--file``, or (if allowed) stdin."""
    if text is not None and file is not None:
        raise click.UsageError("give the data once: as text or with --file, not both")
    if text is not None:
        return text.encode("utf-8")
    if file is not None:
        return file.read()
    if not stdin_default:
        return None
    stdin = sys.stdin.buffer
    if stdin.isatty():
        raise click.UsageError("no data: give it as an argument, with --file, or on stdin")
    return stdin.read()


def emit_bytes(
    emit: Callable[[bool, dict[str, Any], str], None],
    as_json: bool,
    doc: dict[str, Any],
    data: bytes,
    out: Path | None,
    encoding: str,
) -> None:
    """What `get` prints: raw bytes on stdout, a file, or JSON with the bytes encoded."""
    if out is not None:
        out.write_bytes(data)
        emit(as_json, doc | {"out": str(out)}, f"wrote {len(data)} bytes to {out}")
    elif as_json:
        text = base64.b64encode(data).decode() if encoding == "base64" else data.hex()
        emit(True, doc | {"encoding": encoding, "data": text}, "")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def flag_names(flags: int, kind: type[ObjectFlags] | type[FotFlags]) -> list[str]:
    return [str(member.name) for member in kind if member & flags]


def prot_text(prot: int) -> str:
    bits = (("r", Protection.READ), ("w", Protection.WRITE), ("x", Protection.EXEC))
    return "".join(letter for letter, bit in bits if prot & bit) or "-"


def human_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"
